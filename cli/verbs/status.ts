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
        .description("Show each node's VM state, its running NixOS system and its Spark worker state, the Spark master's summary, and the last 10 applications from the history server (state, duration, id; an unreachable history server is a note, not a failure).")
        .option("--json", "print the report as JSON instead of a table")
        .option("--no-libvirt", "do not ask libvirt for the VMs' states")
        .option("--no-ssh", "do not ask the nodes over ssh which system they run")
        .option("--virsh <path>", "the virsh executable", "virsh")
        .option("--web-ui <url>", "ask this Spark master web UI instead of the stack's webUiUrl output")
        .option("--timeout <seconds>", "per probe", "10")
        .addHelpText("after", "\nExit status 0 means healthy, 1 degraded (the report says why).")
        .action(async (o: { json?: boolean; libvirt: boolean; ssh: boolean; virsh: string; webUi?: string; timeout: string }, cmd: Command) =>
            ctx.act("status", async () => {
                const timeoutMs = positiveInt("--timeout", o.timeout) * 1000;
                const stack = await loadStack(cmd.optsWithGlobals<GlobalOptions>());
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
                // The last applications, from the history server (cli/applications.ts); its absence is a note only.
                const { fetchApplications, renderApplications } = await import("../applications");
                const apps = await fetchApplications(stack.outputs.historyUrl, { limit: 10, timeoutMs });
                const json = { ...report, applications: apps.applications, ...(apps.note ? { applicationsNote: apps.note } : {}) };
                ctx.io.out(o.json ? JSON.stringify(json, null, 2) + "\n" : `${renderStatus(report)}\n${renderApplications(apps)}\n`);
                return report.degraded ? EXIT.FAILED : EXIT.OK;
            }),
        );
}
