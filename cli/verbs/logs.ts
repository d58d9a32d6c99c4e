// `nixspark logs <node> [--unit U] [-n N] [-f]`: a node's journal.
import type { Command } from "commander";
import type { VerbContext } from "../main";
import { EXIT, GlobalOptions, positiveInt } from "../common";
import { attached } from "../interactive";
import { journalArgv, nodeByName, remoteArgv, targetOf } from "../remote";
import { loadStack, requireSsh } from "../stack";

export function register(program: Command, ctx: VerbContext): Command {
    return program
        .command("logs")
        .summary("a node's systemd journal")
        .description("Show a node's systemd journal (journalctl over ssh; through sudo -n when the stack's ssh user is not root).")
        .argument("<node>", "the node's name, e.g. master or worker-2")
        .option("-u, --unit <unit>", "only this systemd unit, e.g. spark-master or spark-worker")
        .option("-n, --lines <n>", "how many of the latest lines", "100")
        .option("-f, --follow", "keep printing new lines until Ctrl-C")
        .addHelpText("after", "\nExit status 1 when journalctl failed on the node (or ssh could not reach it).\nExample: nixspark logs worker-1 --unit spark-worker -n 50")
        .action(async (nodeName: string, o: { unit?: string; lines: string; follow?: boolean }, cmd: Command) =>
            ctx.act("logs", async () => {
                const lines = positiveInt("--lines", o.lines);
                const stack = await loadStack(cmd.optsWithGlobals<GlobalOptions>());
                const ssh = requireSsh(stack);
                const node = nodeByName(stack.outputs, nodeName, "node");
                const code = await attached(remoteArgv(targetOf(ssh, node), journalArgv(ssh.user, { unit: o.unit, lines, follow: o.follow })));
                if (code === 0 || (o.follow && code === 130)) return EXIT.OK;
                ctx.io.err(`nixspark logs: journalctl on ${node.name} exited ${code}${code === 255 ? " (ssh could not reach the node)" : ""}\n`);
                return EXIT.FAILED;
            }),
        );
}
