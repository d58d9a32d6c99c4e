// `nixspark heal`: start what should be running and is not: a VM of the
// stack that is not running (shut off, crashed, paused), then a failed Spark
// unit on a node. Non-interactive and idempotent for a systemd timer (the host
// module installs one: nix/modules/host.nix); one run at a time (a lock); a
// stack stopped with `nixspark stop` is left stopped until `nixspark start`.
import * as fs from "node:fs";
import type { Command } from "commander";
import type { VerbContext } from "../main";
import { EXIT, GlobalOptions, positiveInt } from "../common";
import { loadStack } from "../stack";
import { heal, opsLockPath, OpsBusy, realOps, stackVms, stoppedMarkerPath, withOpsLock } from "../power";

export function register(program: Command, ctx: VerbContext): Command {
    return program
        .command("heal")
        .summary("start what should run and does not (VMs, Spark units)")
        .description(
            "Start what should be running and is not: a VM of the stack that is shut off, crashed or paused (virsh with the stack's libvirtUri), then, on every node that answers ssh, a failed Spark unit (spark-master, spark-history, spark-worker: systemctl is-failed, then reset-failed and restart through sudo -n). Says what it did, or that there was nothing to do. Safe to run from a timer: it never asks, one run at a time, and a stack stopped with `nixspark stop` stays stopped until `nixspark start`.",
        )
        .option("--timeout <seconds>", "how long a started VM gets to answer ssh", "300")
        .option("--no-units", "only the VMs: do not ask the nodes about their Spark units")
        .option("--virsh <path>", "the virsh executable", "virsh")
        .addHelpText("after", "\nExit status 0 when everything runs now (also: nothing to do, or another run holds the lock), 1 when something could not be started (named).\nExample: nixspark heal --cwd /srv/spark --stack prod")
        .action(async (o: { timeout: string; units: boolean; virsh: string }, cmd: Command) =>
            ctx.act("heal", async () => {
                const timeoutMs = positiveInt("--timeout", o.timeout) * 1000;
                const stack = await loadStack(cmd.optsWithGlobals<GlobalOptions>());
                const { uri, vms } = stackVms(stack.outputs);
                const say = (l: string) => ctx.io.out(`heal: ${l}\n`);
                const marker = stoppedMarkerPath(stack.dir, uri, vms);
                const ops = realOps(stack, uri, { virsh: o.virsh, probeTimeoutMs: 10_000, say: (l) => ctx.io.err(`heal: ${l}\n`) });
                try {
                    return await withOpsLock(opsLockPath(stack.dir, uri, vms), "nixspark heal", 0, async () => {
                        if (fs.existsSync(marker)) {
                            say(`the stack was stopped with \`nixspark stop\` (${fs.readFileSync(marker, "utf8").trim()}): nothing to do until \`nixspark start\``);
                            return EXIT.OK;
                        }
                        const r = await heal(ops, vms, { timeoutMs, units: o.units && stack.outputs.ssh !== undefined });
                        for (const a of r.actions) say(a);
                        for (const n of r.notes) say(`note: ${n}`);
                        for (const p of r.problems) say(`FAILED: ${p}`);
                        if (r.actions.length === 0 && r.problems.length === 0) say(`nothing to do: all ${vms.length} VM(s) run${o.units ? " and no Spark unit has failed" : ""}`);
                        return r.problems.length > 0 ? EXIT.FAILED : EXIT.OK;
                    });
                } catch (e) {
                    if (!(e instanceof OpsBusy)) throw e;
                    say(`${e.message}: nothing done this time`);
                    return EXIT.OK;
                }
            }),
        );
}
