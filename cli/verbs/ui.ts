// `nixspark ui`: where the Spark web UIs are, and an ssh tunnel command for
// a machine that cannot reach the nodes' addresses directly.
import type { Command } from "commander";
import type { VerbContext } from "../main";
import { EXIT, GlobalOptions } from "../common";
import { remoteArgv, shellQuote, targetOf } from "../remote";
import { loadStack, requireSsh } from "../stack";
import type { StackNode, StackSsh } from "../../cluster/sparkStatus";

/** The worker web UI port of the roles (nix/modules/options.nix worker.webUiPort); no stack setting changes it. */
export const WORKER_WEB_UI_PORT = 8081;

export interface UiReport {
    master: { node: string; url: string; local: string };
    /** The history server on the master (finished applications); absent for stacks from before it. */
    history?: { url: string; local: string };
    workers: { node: string; url: string; local: string; source: "master" | "roles-default" }[];
    /** argv of the tunnel, and the same as one line to paste into a shell. */
    tunnel?: { argv: string[]; command: string };
    notes: string[];
}

function hostPort(url: string): { host: string; port: number } {
    const u = new URL(url);
    return { host: u.hostname, port: Number(u.port || (u.protocol === "https:" ? 443 : 80)) };
}

/**
 * The report: the master's URL from the outputs; each worker's from the
 * master's JSON (its registration's web UI address) when the master answers,
 * else the worker's address and the roles' port. Local ports for the tunnel:
 * the master's own, then 8081, 8082, … in node order.
 */
export function uiReport(nodes: StackNode[], webUiUrl: string, registered: Map<string, string>, ssh: StackSsh | undefined, notes: string[], historyUrl?: string): UiReport {
    const master = nodes.find((n) => n.role === "master");
    const mp = hostPort(webUiUrl);
    const forwards: string[] = [`${mp.port}:${mp.host}:${mp.port}`];
    const hp = historyUrl ? hostPort(historyUrl) : undefined;
    if (hp) forwards.push(`${hp.port}:${hp.host}:${hp.port}`);
    const workers = nodes
        .filter((n) => n.role === "worker")
        .map((n, i) => {
            const fromMaster = registered.get(n.ip);
            const url = fromMaster ?? `http://${n.ip}:${WORKER_WEB_UI_PORT}`;
            const wp = hostPort(url);
            const localPort = WORKER_WEB_UI_PORT + i + (WORKER_WEB_UI_PORT + i >= mp.port && mp.port >= WORKER_WEB_UI_PORT ? 1 : 0);
            forwards.push(`${localPort}:${wp.host}:${wp.port}`);
            return { node: n.name, url, local: `http://localhost:${localPort}`, source: fromMaster ? ("master" as const) : ("roles-default" as const) };
        });
    const report: UiReport = { master: { node: master?.name ?? "master", url: webUiUrl, local: `http://localhost:${mp.port}` }, workers, notes };
    if (historyUrl && hp) report.history = { url: historyUrl, local: `http://localhost:${hp.port}` };
    if (ssh && master) {
        const argv = remoteArgv(targetOf(ssh, master), [], { extra: ["-N", "-o", "ExitOnForwardFailure=yes", ...forwards.flatMap((f) => ["-L", f])] });
        report.tunnel = { argv, command: argv.map(shellQuote).join(" ") };
    }
    return report;
}

export function renderUi(r: UiReport): string {
    const lines = [`master     ${r.master.url}`];
    if (r.history) lines.push(`history    ${r.history.url}`);
    for (const w of r.workers) lines.push(`${w.node.padEnd(10)} ${w.url}${w.source === "roles-default" ? "   (port from the roles' default; the master did not list it)" : ""}`);
    if (r.tunnel) {
        lines.push("", "When this machine cannot reach those addresses, tunnel through the master:", `  ${r.tunnel.command}`, "then open:");
        lines.push(`  master     ${r.master.local}`);
        if (r.history) lines.push(`  history    ${r.history.local}`);
        for (const w of r.workers) lines.push(`  ${w.node.padEnd(10)} ${w.local}`);
    }
    for (const n of r.notes) lines.push(`note: ${n}`);
    return lines.join("\n") + "\n";
}

export function register(program: Command, ctx: VerbContext): Command {
    return program
        .command("ui")
        .summary("web UI URLs and an ssh tunnel command")
        .description("Print the Spark master, history server and worker web UI URLs, and an ssh -N -L tunnel command through the master for when this machine cannot reach them.")
        .option("--json", "print them as JSON")
        .option("--timeout <seconds>", "for asking the master which workers it has", "5")
        .action(async (o: { json?: boolean; timeout: string }, cmd: Command) =>
            ctx.act("ui", async () => {
                const stack = await loadStack(cmd.optsWithGlobals<GlobalOptions>());
                const ssh = stack.outputs.ssh ? requireSsh(stack) : undefined;
                const notes: string[] = [];
                const registered = new Map<string, string>();
                try {
                    const { fetchMasterState } = await import("../../providers/sparkHealth");
                    const state = await fetchMasterState(stack.outputs.webUiUrl, Number(o.timeout) * 1000 || 5000);
                    for (const w of state.workers) if (w.state === "ALIVE" && w.webUiAddress) registered.set(w.host, w.webUiAddress);
                } catch (e) {
                    notes.push(`the master's web UI did not answer from here (${(e as Error).message}); the tunnel still works from the master`);
                }
                const r = uiReport(stack.outputs.nodes, stack.outputs.webUiUrl, registered, ssh, notes, stack.outputs.historyUrl);
                ctx.io.out(o.json ? JSON.stringify(r, null, 2) + "\n" : renderUi(r));
                return EXIT.OK;
            }),
        );
}
