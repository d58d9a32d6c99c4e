// `nixspark start`: bring the stack's VMs back after `stop` (or a host
// reboot): the master first, until it answers ssh, then the workers, then
// until the Spark master lists every worker ALIVE. State and disks untouched.
import * as fs from "node:fs";
import type { Command } from "commander";
import type { VerbContext } from "../main";
import { EXIT, GlobalOptions, positiveInt } from "../common";
import { loadStack, requireSsh } from "../stack";
import { opsLockPath, realOps, stackVms, startVms, stoppedMarkerPath, withOpsLock } from "../power";

export function register(program: Command, ctx: VerbContext): Command {
    return program
        .command("start")
        .summary("start the stack's VMs again")
        .description(
            "Start the stack's VMs (virsh with the stack's libvirtUri): the master first, until it answers ssh, then the workers, until each answers ssh, then wait until the Spark master lists every worker ALIVE. The Pulumi state and the disks are not touched.",
        )
        .option("--timeout <seconds>", "for each wait (the master's ssh, the workers' ssh, Spark)", "600")
        .option("--no-spark", "do not wait for the Spark master to list the workers (guests that run no Spark)")
        .option("--virsh <path>", "the virsh executable", "virsh")
        .addHelpText("after", "\nExit status 1 when a VM did not come up or Spark did not list every worker ALIVE in time.\nExample: nixspark start")
        .action(async (o: { timeout: string; spark: boolean; virsh: string }, cmd: Command) =>
            ctx.act("start", async () => {
                const timeoutMs = positiveInt("--timeout", o.timeout) * 1000;
                const stack = await loadStack(cmd.optsWithGlobals<GlobalOptions>());
                requireSsh(stack);
                const { uri, vms } = stackVms(stack.outputs);
                const say = (l: string) => ctx.io.err(`start: ${l}\n`);
                const ops = realOps(stack, uri, { virsh: o.virsh, probeTimeoutMs: 10_000, say });
                return withOpsLock(opsLockPath(stack.dir, uri, vms), "nixspark start", 10 * 60_000, async () => {
                    fs.rmSync(stoppedMarkerPath(stack.dir, uri, vms), { force: true });
                    const problems = await startVms(ops, vms, { timeoutMs, ssh: true, spark: o.spark });
                    for (const p of problems) say(`FAILED: ${p}`);
                    if (problems.length > 0) return EXIT.FAILED;
                    say(`all ${vms.length} VM(s) are running and answer ssh${o.spark ? "; Spark lists every worker ALIVE" : ""}`);
                    return EXIT.OK;
                });
            }),
        );
}
