// `nixspark stop`: shut the stack's VMs down cleanly, workers first, then the
// master (ACPI shutdown through virsh with the stack's libvirt URI), without
// touching the Pulumi state or the disks: `pulumi preview` stays unchanged.
import * as fs from "node:fs";
import type { Command } from "commander";
import type { VerbContext } from "../main";
import { EXIT, GlobalOptions, positiveInt } from "../common";
import { loadStack } from "../stack";
import { opsLockPath, realOps, stackVms, stopVms, stoppedMarkerPath, withOpsLock } from "../power";

export function register(program: Command, ctx: VerbContext): Command {
    return program
        .command("stop")
        .summary("shut the stack's VMs down cleanly")
        .description(
            "Shut the stack's VMs down cleanly: an ACPI shutdown through virsh (the stack's libvirtUri), the workers first, then the master, and wait until each is shut off. The Pulumi state and the disks are not touched; `nixspark start` brings the VMs back, and `nixspark heal` leaves a stopped stack alone until then.",
        )
        .option("--timeout <seconds>", "how long each group of VMs gets to shut off", "120")
        .option("--force", "power off (virsh destroy) a VM still running after the timeout, as a pulled plug would; its disk stays")
        .option("--virsh <path>", "the virsh executable", "virsh")
        .addHelpText("after", "\nExit status 1 when a VM did not shut off (the output names it and what to do).\nExample: nixspark stop --timeout 300")
        .action(async (o: { timeout: string; force?: boolean; virsh: string }, cmd: Command) =>
            ctx.act("stop", async () => {
                const timeoutMs = positiveInt("--timeout", o.timeout) * 1000;
                const stack = await loadStack(cmd.optsWithGlobals<GlobalOptions>());
                const { uri, vms } = stackVms(stack.outputs);
                const say = (l: string) => ctx.io.err(`stop: ${l}\n`);
                const ops = realOps(stack, uri, { virsh: o.virsh, probeTimeoutMs: 10_000, say });
                return withOpsLock(opsLockPath(stack.dir, uri, vms), "nixspark stop", 10 * 60_000, async () => {
                    // Before the first shutdown: a heal run by a timer now leaves the VMs off.
                    fs.writeFileSync(stoppedMarkerPath(stack.dir, uri, vms), `${new Date().toISOString()} nixspark stop\n`);
                    const failed = await stopVms(ops, vms, { timeoutMs, force: Boolean(o.force), uri });
                    if (failed.length > 0) {
                        say(`FAILED: ${failed.join(", ")} did not shut off`);
                        return EXIT.FAILED;
                    }
                    say(`all ${vms.length} VM(s) are shut off; \`nixspark start\` brings them back`);
                    return EXIT.OK;
                });
            }),
        );
}
