// `nixspark copy <src…> <nodes>:<dst>`: local files to nodes, in parallel,
// with scp and the stack's key and known hosts.
import * as fs from "node:fs";
import type { Command } from "commander";
import type { VerbContext } from "../main";
import { GlobalOptions, positiveInt, UsageError } from "../common";
import { onNodes } from "../parallel";
import { checkRemotePath, scpArgv, selectNodes, targetOf } from "../remote";
import { loadStack, requireSsh } from "../stack";

/** "workers:/data/x" -> { selector: "workers", path: "/data/x" }. */
export function parseDestination(dest: string): { selector: string; path: string } {
    const i = dest.indexOf(":");
    if (i <= 0 || i === dest.length - 1) {
        throw new UsageError(`destination ${JSON.stringify(dest)} must be NODES:PATH, where NODES is a node name, a comma-separated list, all or workers (e.g. all:/tmp/data.csv)`);
    }
    return { selector: dest.slice(0, i), path: dest.slice(i + 1) };
}

export function register(program: Command, ctx: VerbContext): Command {
    return program
        .command("copy")
        .summary("copy local files to nodes")
        .description(
            "Copy local files to a path on one or more nodes in parallel (scp with the stack's key and pinned host keys). The last argument is the destination NODES:PATH, where NODES is a node name, a comma-separated list, all or workers.",
        )
        .usage("[options] <src...> <dest>")
        .argument("<src...>", "local files (directories with -r)")
        .option("-r, --recursive", "copy directories recursively")
        .option("--timeout <seconds>", "per node", "600")
        .addHelpText("after", "\nExit status 1 when the copy failed on any node.\nExample: nixspark copy data.csv all:/tmp/data.csv")
        .action(async (paths: string[], o: { recursive?: boolean; timeout: string }, cmd: Command) =>
            ctx.act("copy", async () => {
                const timeoutMs = positiveInt("--timeout", o.timeout) * 1000;
                if (paths.length < 2) throw new UsageError("copy needs at least one local file and a destination NODES:PATH, e.g. nixspark copy data.csv all:/tmp/data.csv");
                const sources = paths.slice(0, -1);
                const d = parseDestination(paths[paths.length - 1]);
                checkRemotePath(d.path, "dest");
                for (const s of sources) {
                    let st: fs.Stats;
                    try {
                        st = fs.statSync(s);
                    } catch {
                        throw new UsageError(`src: no such local file ${JSON.stringify(s)}`);
                    }
                    if (st.isDirectory() && !o.recursive) throw new UsageError(`src: ${s} is a directory; add -r (--recursive) to copy it`);
                }
                const stack = await loadStack(cmd.optsWithGlobals<GlobalOptions>());
                const ssh = requireSsh(stack);
                const nodes = selectNodes(stack.outputs, d.selector, "dest");
                const { code } = await onNodes("copy", nodes, (n) => scpArgv(targetOf(ssh, n), sources, d.path, { recursive: o.recursive }), ctx.io, timeoutMs);
                return code;
            }),
        );
}
