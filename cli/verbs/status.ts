// `nixspark status`: what state the cluster is in, right now (scripts/status.ts
// asks libvirt, every node over ssh and the Spark master; this verb reads the
// stack through the CLI's loader and prints the same table, or JSON).
import type { Command } from "commander";
import type { VerbContext } from "../main";
import { EXIT, GlobalOptions, positiveInt } from "../common";
import { loadStack } from "../stack";

export function register(program: Command, ctx: VerbContext): Command {
    return program
        .command("status")
        .summary("node, VM, system and Spark worker states")
        .description("Show each node's VM state, its running NixOS system and its Spark worker state, the Spark master's summary, each VM's watchdog, panic device, on_crash and libvirt's state reason, and the last 10 applications from the history server (state, duration, id; an unreachable history server is a note, not a failure).")
        .option("--json", "print the report as JSON instead of a table")
        .option("--no-libvirt", "do not ask libvirt for the VMs' states")
        .option("--no-ssh", "do not ask the nodes over ssh which system they run")
        .option("--virsh <path>", "the virsh executable", "virsh")
        .option("--web-ui <url>", "ask this Spark master web UI instead of the stack's webUiUrl output")
        .option("--timeout <seconds>", "per probe", "10")
        .option("--watch", "keep polling and print each change of a node's VM state, ssh reachability or Spark worker state, with a timestamp; Ctrl-C ends it (exit 0)")
        .option("--interval <seconds>", "with --watch: seconds between polls", "5")
        .addHelpText("after", "\nExit status 0 means healthy, 1 degraded (the report says why); --watch exits 0 when interrupted.")
        .action(async (o: { json?: boolean; libvirt: boolean; ssh: boolean; virsh: string; webUi?: string; timeout: string; watch?: boolean; interval: string }, cmd: Command) =>
            ctx.act("status", async () => {
                const timeoutMs = positiveInt("--timeout", o.timeout) * 1000;
                const stack = await loadStack(cmd.optsWithGlobals<GlobalOptions>());
                if (o.watch) return (await import("../watch")).watchStatus(stack, { ...o, intervalMs: positiveInt("--interval", o.interval) * 1000, timeoutMs }, ctx.io);
                const { collectStatus } = await import("../../scripts/status");
                const { renderStatus } = await import("../../cluster/sparkStatus");
                const report = await collectStatus(stack.outputs, {
                    stack: stack.name,
                    webUiUrl: o.webUi,
                    libvirt: o.libvirt,
                    ssh: o.ssh,
                    virsh: o.virsh,
                    timeoutMs,
                });
                // Per VM: watchdog, panic device and on_crash, and libvirt's state with its reason (cli/power.ts).
                const { stackGuards, renderGuards } = await import("../power");
                const guards = o.libvirt ? await stackGuards(stack.outputs, o.virsh, timeoutMs) : [];
                // The last applications, from the history server (cli/applications.ts); its absence is a note only.
                const { fetchApplications, renderApplications } = await import("../applications");
                const apps = await fetchApplications(stack.outputs.historyUrl, { limit: 10, timeoutMs });
                const json = { ...report, vms: guards, applications: apps.applications, ...(apps.note ? { applicationsNote: apps.note } : {}) };
                ctx.io.out(o.json ? JSON.stringify(json, null, 2) + "\n" : `${renderStatus(report)}${guards.length > 0 ? renderGuards(guards) : ""}\n${renderApplications(apps)}\n`);
                return report.degraded ? EXIT.FAILED : EXIT.OK;
            }),
        );
}
