// `nixspark status --watch`: poll the stack at an interval and print each
// change as it happens, one timestamped line per change: a node's VM state
// (libvirt), whether it answers ssh, its Spark worker state (the master's
// JSON), and whether the master answers. The first poll prints every value;
// Ctrl-C (SIGINT) or SIGTERM ends the watch with exit 0.
import type { StackOutputs } from "../cluster/sparkStatus";
import type { Io } from "./common";
import { EXIT } from "./common";
import { realOps } from "./power";
import type { PowerOps, Vm } from "./power";
import type { Stack } from "./stack";

/** One poll: "node/what" -> value. */
export type Snapshot = Map<string, string>;

/** The lines for what changed from `prev` to `next` (every value when prev is empty), in `next`'s order. */
export function changes(prev: Snapshot, next: Snapshot, at: Date): string[] {
    const out: string[] = [];
    const stamp = at.toISOString().replace(/\.\d+Z$/, "Z");
    for (const [key, value] of next) {
        const was = prev.get(key);
        if (was === value) continue;
        const [node, what] = key.split("/");
        out.push(`${stamp} ${node} ${what}: ${was === undefined ? value : `${was} -> ${value}`}`);
    }
    for (const [key, was] of prev) if (!next.has(key)) out.push(`${stamp} ${key.replace("/", " ")}: ${was} -> (not asked)`);
    return out;
}

/** Asks every source once. vms is empty when the stack has no libvirt outputs (or --no-libvirt). */
export async function poll(ops: Pick<PowerOps, "state" | "sshUp">, outputs: StackOutputs, vms: Vm[], o: { ssh: boolean; master: () => Promise<Map<string, string> | Error> }): Promise<Snapshot> {
    const snap: Snapshot = new Map();
    const spark = await o.master();
    await Promise.all(
        outputs.nodes.map(async (node) => {
            const vm = vms.find((v) => v.node.name === node.name);
            const [state, up] = await Promise.all([
                vm ? ops.state(vm).then((s) => s ?? "no domain", (e: Error) => `unknown (${e.message.split("\n")[0]})`) : undefined,
                o.ssh ? ops.sshUp({ node, domain: vm?.domain ?? "" }) : undefined,
            ]);
            if (state !== undefined) snap.set(`${node.name}/vm`, state);
            if (up !== undefined) snap.set(`${node.name}/ssh`, up ? "answers" : "no answer");
        }),
    );
    // In stack order, whatever order the probes came back in.
    const ordered: Snapshot = new Map();
    for (const n of outputs.nodes) {
        for (const what of ["vm", "ssh"]) if (snap.has(`${n.name}/${what}`)) ordered.set(`${n.name}/${what}`, snap.get(`${n.name}/${what}`)!);
        if (n.role === "master") ordered.set(`${n.name}/spark`, spark instanceof Error ? "master not answering" : "master answers");
        else if (!(spark instanceof Error)) ordered.set(`${n.name}/spark`, spark.get(n.name) ?? "MISSING");
    }
    return ordered;
}

/** Polls until stopped (SIGINT/SIGTERM, or `signal` aborted), printing changes; resolves when it ends. */
export async function watch(next: () => Promise<Snapshot>, o: { intervalMs: number; out: (line: string) => void; signal?: AbortSignal }): Promise<void> {
    const ctl = new AbortController();
    const end = () => ctl.abort();
    process.once("SIGINT", end);
    process.once("SIGTERM", end);
    o.signal?.addEventListener("abort", end);
    try {
        let prev: Snapshot = new Map();
        while (!ctl.signal.aborted) {
            const snap = await next();
            if (ctl.signal.aborted) break;
            for (const line of changes(prev, snap, new Date())) o.out(`${line}\n`);
            prev = snap;
            await new Promise<void>((res) => {
                const t = setTimeout(res, o.intervalMs);
                ctl.signal.addEventListener("abort", () => (clearTimeout(t), res()), { once: true });
            });
        }
    } finally {
        process.removeListener("SIGINT", end);
        process.removeListener("SIGTERM", end);
    }
}

/** `status --watch`: the stack's libvirt, ssh and Spark master as sources, until interrupted (exit 0). */
export async function watchStatus(stack: Stack, o: { libvirt: boolean; ssh: boolean; virsh: string; webUi?: string; intervalMs: number; timeoutMs: number }, io: Io): Promise<number> {
    const { fetchMasterState, matchWorkers } = await import("../providers/spark/master");
    const uri = stack.outputs.libvirtUri ?? "";
    const vms = o.libvirt && uri ? stack.outputs.nodes.filter((n) => n.libvirtName).map((node) => ({ node, domain: node.libvirtName as string, uri: node.libvirtUri ?? uri })) : [];
    const ops = realOps(stack, uri, { virsh: o.virsh, probeTimeoutMs: o.timeoutMs, say: (l) => io.err(`status: ${l}\n`) });
    const workers = stack.outputs.nodes.filter((n) => n.role === "worker").map((n) => ({ name: n.name, ip: n.ip }));
    const master = async () => {
        try {
            const state = await fetchMasterState(o.webUi ?? stack.outputs.webUiUrl, o.timeoutMs);
            return new Map(matchWorkers(workers, state).matches.map((m) => [m.name, m.state]));
        } catch (e) {
            return e as Error;
        }
    };
    await watch(() => poll(ops, stack.outputs, vms, { ssh: o.ssh && stack.outputs.ssh !== undefined, master }), { intervalMs: o.intervalMs, out: io.out });
    return EXIT.OK;
}
