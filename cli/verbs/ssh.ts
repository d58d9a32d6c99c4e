// `nixspark ssh [node] [-- command…]`: a shell (or one command) on a node,
// with the stack's deploy key and known hosts.
import type { Command } from "commander";
import type { VerbContext } from "../main";
import { GlobalOptions } from "../common";
import { attached } from "../interactive";
import { nodeByName, remoteArgv, targetOf } from "../remote";
import { loadStack, requireSsh } from "../stack";

export function register(program: Command, ctx: VerbContext): Command {
    return program
        .command("ssh")
        .summary("a shell or one command on a node")
        .description("Log in to a node (default: master) with the stack's deploy key and pinned host keys, or run one command there.")
        .argument("[node]", "the node's name, e.g. master or worker-2", "master")
        .argument("[command...]", "a command to run instead of a login shell (after --)")
        .option("-t, --tty", "force a terminal for the command (ssh -t)")
        .addHelpText("after", "\nExit status: the remote command's, like ssh's own (255 when ssh could not connect).\nExample: nixspark ssh worker-1 -- systemctl status spark-worker")
        .action(async (nodeName: string, command: string[], o: { tty?: boolean }, cmd: Command) =>
            ctx.act("ssh", async () => {
                const stack = await loadStack(cmd.optsWithGlobals<GlobalOptions>());
                const ssh = requireSsh(stack);
                const node = nodeByName(stack.outputs, nodeName, "node");
                return attached(remoteArgv(targetOf(ssh, node), command, { tty: o.tty }));
            }),
        );
}
