// `nixspark exec [--nodes …|--workers] -- command…`: one command on many
// nodes at once, output prefixed by node.
import type { Command } from "commander";
import type { VerbContext } from "../main";
import { GlobalOptions, positiveInt, UsageError } from "../common";
import { onNodes } from "../parallel";
import { remoteArgv, selectNodes, targetOf } from "../remote";
import { loadStack, requireSsh } from "../stack";

export function register(program: Command, ctx: VerbContext): Command {
    return program
        .command("exec")
        .summary("a command on many nodes at once")
        .description(
            "Run a command on several nodes in parallel (default: all). Each output line is prefixed by [node]; a summary line on stderr names the nodes where it failed. The words after -- reach the node as they are (quoted for its shell); for a pipeline, run sh -c '…'.",
        )
        .argument("<command...>", "the command and its arguments (after --)")
        .option("--nodes <names>", "comma-separated node names, or all / workers (default: all)")
        .option("--workers", "the worker nodes only (same as --nodes workers)")
        .option("--timeout <seconds>", "per node", "600")
        .addHelpText("after", "\nExit status 1 when the command failed (or could not run) on any node.\nExample: nixspark exec --workers -- df -h /")
        .action(async (command: string[], o: { nodes?: string; workers?: boolean; timeout: string }, cmd: Command) =>
            ctx.act("exec", async () => {
                if (o.nodes !== undefined && o.workers) throw new UsageError("--nodes and --workers exclude each other; use one");
                const timeoutMs = positiveInt("--timeout", o.timeout) * 1000;
                const stack = await loadStack(cmd.optsWithGlobals<GlobalOptions>());
                const ssh = requireSsh(stack);
                const nodes = selectNodes(stack.outputs, o.workers ? "workers" : (o.nodes ?? "all"), o.workers ? "--workers" : "--nodes");
                const { code } = await onNodes("exec", nodes, (n) => remoteArgv(targetOf(ssh, n), command), ctx.io, timeoutMs);
                return code;
            }),
        );
}
