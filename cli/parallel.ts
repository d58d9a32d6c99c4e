// Runs one command per node at once, each output line prefixed by
// "[node] ", and says in one summary line which nodes failed.
import { run } from "../providers/run";
import { classifySshFailure } from "../providers/ssh";
import type { StackNode } from "../cluster/sparkStatus";
import { EXIT, Io } from "./common";

export interface NodeResult {
    node: string;
    code: number;
    /** Why it failed, in words (undefined when it succeeded). */
    failure?: string;
}

/** What a non-zero exit of an ssh/scp command means; 255 is ssh's own "could not do it". */
export function describeFailure(code: number, stderr: string): string {
    if (code === 255) return `ssh failed (${classifySshFailure(stderr)}): ${stderr.trim().split("\n").pop() ?? ""}`.trim();
    return `exit ${code}`;
}

export async function onNodes(
    verb: string,
    nodes: StackNode[],
    argvFor: (node: StackNode) => string[],
    io: Io,
    timeoutMs: number,
): Promise<{ code: number; results: NodeResult[] }> {
    const results = await Promise.all(
        nodes.map(async (node): Promise<NodeResult> => {
            const prefix = `[${node.name}] `;
            try {
                const r = await run(argvFor(node), {
                    timeoutMs,
                    allowFailure: true,
                    onLine: (line, stream) => (stream === "stdout" ? io.out : io.err)(`${prefix}${line}\n`),
                });
                return r.code === 0 ? { node: node.name, code: 0 } : { node: node.name, code: r.code, failure: describeFailure(r.code, r.stderr) };
            } catch (e) {
                return { node: node.name, code: -1, failure: (e as Error).message.split("\n")[0] };
            }
        }),
    );
    const failed = results.filter((r) => r.failure !== undefined);
    const ok = results.filter((r) => r.failure === undefined).map((r) => r.node);
    if (failed.length === 0) {
        io.err(`${verb}: ok on ${ok.length} node(s): ${ok.join(", ")}\n`);
        return { code: EXIT.OK, results };
    }
    io.err(`${verb}: FAILED on ${failed.length} of ${results.length} node(s): ${failed.map((f) => `${f.node} (${f.failure})`).join(", ")}${ok.length ? `; ok on ${ok.join(", ")}` : ""}\n`);
    return { code: EXIT.FAILED, results };
}
