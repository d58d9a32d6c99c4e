// The stack's VMs as `stop`, `start`, `heal` and `status --watch` see them:
// libvirt through virsh with the stack's libvirtUri output, each node over
// ssh with the stack's key, Spark through the master's JSON. The sequences
// (who goes first, what is waited for, what is said) are plain functions over
// PowerOps, so tests can drive them with a fake; realOps does the I/O.
import * as crypto from "node:crypto";
import * as path from "node:path";
import { run } from "../providers/run";
import { sshArgv } from "../providers/ssh";
import type { StackNode, StackOutputs } from "../cluster/sparkStatus";
import { asRoot, targetOf } from "./remote";
import { UsageError } from "./common";
import type { Stack } from "./stack";

/** A node and its libvirt domain. */
export interface Vm {
    node: StackNode;
    domain: string;
    /** The libvirt host that runs it (a node's own libvirtUri with several hosts); default the stack's. */
    uri?: string;
}

/** The stack's libvirt URI and its VMs, master first; a UsageError when the outputs do not name them. */
export function stackVms(outputs: StackOutputs): { uri: string; vms: Vm[] } {
    if (!outputs.libvirtUri && outputs.nodes.length > 0 && outputs.nodes.every((n) => !n.libvirtName)) {
        throw new UsageError(
            "the stack's nodes are existing machines (nixspark:target hosts), not VMs: stop, start and heal act on VMs through libvirt, and nixspark never powers a machine off (docs/targets.md); use `nixspark exec` or `nixspark logs` on them",
        );
    }
    if (!outputs.libvirtUri) throw new UsageError('the stack has no "libvirtUri" output: run `pulumi up` with this version of nixspark (stop, start and heal act on its VMs through libvirt)');
    const missing = outputs.nodes.filter((n) => !n.libvirtName).map((n) => n.name);
    if (missing.length > 0) throw new UsageError(`the stack's "nodes" output names no libvirt domain for ${missing.join(", ")}: run \`pulumi up\` with this version of nixspark`);
    const vms = outputs.nodes.map((node) => ({ node, domain: node.libvirtName as string, uri: node.libvirtUri ?? outputs.libvirtUri }));
    return { uri: outputs.libvirtUri, vms: [...vms.filter((v) => v.node.role === "master"), ...vms.filter((v) => v.node.role !== "master")] };
}

/** The Spark units a node of this role runs (nix/modules/master.nix, worker.nix, the history server on the master). */
export function sparkUnits(role: string): string[] {
    return role === "master" ? ["spark-master.service", "spark-history.service"] : ["spark-worker.service"];
}

/** What the sequences need from the world. */
export interface PowerOps {
    /** libvirt's state ("running", "shut off", ...), undefined when the domain does not exist. */
    state(vm: Vm): Promise<string | undefined>;
    /** virsh shutdown (ACPI), start, resume, destroy. */
    virsh(vm: Vm, verb: "shutdown" | "start" | "resume" | "destroy"): Promise<void>;
    /** Whether the node answers ssh. */
    sshUp(vm: Vm): Promise<boolean>;
    /** The declared workers the master lists ALIVE, or why it could not be asked. */
    aliveWorkers(): Promise<string[] | Error>;
    /** `systemctl is-failed` of the units: the failed ones; an Error when it could not be asked; "no-systemd" when the node has no systemctl. */
    failedUnits(vm: Vm, units: string[]): Promise<string[] | Error | "no-systemd">;
    /** reset-failed, then restart the unit (through sudo -n when the user is not root). */
    restartUnit(vm: Vm, unit: string): Promise<void>;
    sleep(ms: number): Promise<void>;
    now(): number;
    say(line: string): void;
}

/** Polls until check() holds for every VM or the deadline passes; says who it waits for every `every` ms. Returns those left. */
async function waitAll(ops: PowerOps, vms: Vm[], check: (vm: Vm) => Promise<boolean>, what: string, timeoutMs: number, every = 10_000): Promise<Vm[]> {
    const start = ops.now();
    let left = [...vms];
    let said = start;
    for (;;) {
        const done = await Promise.all(left.map(check));
        left = left.filter((_, i) => !done[i]);
        if (left.length === 0 || ops.now() - start >= timeoutMs) return left;
        if (ops.now() - said >= every) {
            ops.say(`waiting for ${left.map((v) => v.node.name).join(", ")} to ${what} (${Math.round((ops.now() - start) / 1000)} s of ${Math.round(timeoutMs / 1000)} s)`);
            said = ops.now();
        }
        await ops.sleep(1000);
    }
}

/**
 * Shuts the VMs down cleanly: the workers (together), then the master. Each
 * running VM gets an ACPI shutdown and up to timeoutMs to be "shut off"; one
 * that is not is destroyed only with force, else named with what to do.
 * Returns the nodes that did not stop.
 */
export async function stopVms(ops: PowerOps, vms: Vm[], o: { timeoutMs: number; force: boolean; uri: string }): Promise<string[]> {
    const failed: string[] = [];
    for (const group of [vms.filter((v) => v.node.role !== "master"), vms.filter((v) => v.node.role === "master")]) {
        const asked: Vm[] = [];
        const other: Vm[] = [];
        for (const vm of group) {
            const s = await ops.state(vm);
            if (s === undefined) {
                ops.say(`${vm.node.name}: libvirt has no domain ${vm.domain}; nothing to stop (\`pulumi refresh\`, then \`pulumi up\`, creates it again)`);
            } else if (s === "shut off") {
                ops.say(`${vm.node.name}: already shut off`);
            } else if (s === "running") {
                ops.say(`${vm.node.name}: shutting down (ACPI power button, up to ${Math.round(o.timeoutMs / 1000)} s)`);
                await ops.virsh(vm, "shutdown");
                asked.push(vm);
            } else {
                // Paused, crashed, ...: no guest to press the button for.
                other.push(vm);
            }
        }
        // A guest still booting has no one listening to the power button yet: press it again every 10 s.
        const pressed = new Map(asked.map((vm) => [vm, ops.now()]));
        const off = async (vm: Vm) => {
            const s = await ops.state(vm);
            if (s === "running" && pressed.has(vm) && ops.now() - pressed.get(vm)! >= 10_000) {
                await ops.virsh(vm, "shutdown");
                pressed.set(vm, ops.now());
            }
            return s === "shut off" || s === undefined;
        };
        const left = [...(await waitAll(ops, asked, off, "shut off", o.timeoutMs)), ...other];
        for (const vm of asked) if (!left.includes(vm)) ops.say(`${vm.node.name}: shut off`);
        for (const vm of left) {
            const s = await ops.state(vm);
            const how = asked.includes(vm) ? `still "${s}" after ${Math.round(o.timeoutMs / 1000)} s` : `"${s}": no running guest to ask`;
            if (o.force) {
                ops.say(`${vm.node.name}: ${how}; --force: destroying it (power cut; the disk stays)`);
                await ops.virsh(vm, "destroy");
                if ((await ops.state(vm)) === "shut off") continue;
            } else {
                ops.say(
                    `${vm.node.name}: ${how}${asked.includes(vm) ? ": its guest did not act on the power button" : ""}. ` +
                        `See \`nixspark logs ${vm.node.name}\` or its console log; then run \`nixspark stop --force\` (powers it off like a pulled plug after the timeout) or \`virsh -c ${vm.uri ?? o.uri} destroy ${vm.domain}\``,
                );
            }
            failed.push(vm.node.name);
        }
        // The master stays up while a worker could not be stopped (its executors still talk to it).
        if (failed.length > 0) {
            const master = vms.find((v) => v.node.role === "master");
            if (master && group.some((v) => v.node.role !== "master")) ops.say(`${master.node.name}: left running, since ${failed.join(", ")} did not stop`);
            return failed;
        }
    }
    return failed;
}

/** Brings one VM to running (start, or resume a paused one); false when libvirt has no such domain. */
async function bringUp(ops: PowerOps, vm: Vm): Promise<boolean> {
    const s = await ops.state(vm);
    if (s === undefined) return false;
    if (s === "running") return true;
    ops.say(`${vm.node.name}: ${s === "paused" ? "resuming" : "starting"} (was "${s}")`);
    await ops.virsh(vm, s === "paused" ? "resume" : "start");
    return true;
}

/**
 * Starts the VMs: the master, until it answers ssh; then the workers
 * (together), until each answers ssh; then, with spark, until the master
 * lists every worker ALIVE. Returns what did not come up, in words.
 */
export async function startVms(ops: PowerOps, vms: Vm[], o: { timeoutMs: number; ssh: boolean; spark: boolean }): Promise<string[]> {
    const problems: string[] = [];
    for (const group of [vms.filter((v) => v.node.role === "master"), vms.filter((v) => v.node.role !== "master")]) {
        const up: Vm[] = [];
        for (const vm of group) {
            if (await bringUp(ops, vm)) up.push(vm);
            else problems.push(`${vm.node.name}: libvirt has no domain ${vm.domain}; run \`pulumi refresh\`, then \`pulumi up\`, to create it again`);
        }
        if (!o.ssh) continue;
        const left = await waitAll(ops, up, (vm) => ops.sshUp(vm), "answer ssh", o.timeoutMs);
        for (const vm of up) if (!left.includes(vm)) ops.say(`${vm.node.name}: answers ssh`);
        for (const vm of left) problems.push(`${vm.node.name}: does not answer ssh after ${Math.round(o.timeoutMs / 1000)} s (libvirt: ${(await ops.state(vm)) ?? "no domain"}); see \`nixspark status\` and its console log`);
        if (problems.length > 0) return problems;
    }
    if (!o.spark || problems.length > 0) return problems;
    const workers = vms.filter((v) => v.node.role !== "master").map((v) => v.node.name);
    const t0 = ops.now();
    let said = t0;
    for (;;) {
        const alive = await ops.aliveWorkers();
        const missing = alive instanceof Error ? workers : workers.filter((w) => !alive.includes(w));
        if (missing.length === 0) {
            ops.say(`Spark: the master lists ${workers.length === 0 ? "no workers (none declared)" : `${workers.join(", ")} ALIVE`}`);
            return problems;
        }
        if (ops.now() - t0 >= o.timeoutMs) {
            problems.push(`Spark: ${alive instanceof Error ? `the master does not answer (${alive.message})` : `the master does not list ${missing.join(", ")} ALIVE`} after ${Math.round(o.timeoutMs / 1000)} s; see \`nixspark status\` and \`nixspark logs master --unit spark-master\``);
            return problems;
        }
        if (ops.now() - said >= 10_000) {
            ops.say(`waiting for the Spark master to list ${missing.join(", ")} ALIVE${alive instanceof Error ? ` (master: ${alive.message})` : ""}`);
            said = ops.now();
        }
        await ops.sleep(2000);
    }
}

/** What heal did and what it could not do. */
export interface HealReport {
    actions: string[];
    problems: string[];
    notes: string[];
}

/**
 * Starts what should be running and is not: a VM that is not running (shut
 * off, crashed, paused), then a failed Spark unit on a node that answers ssh.
 */
export async function heal(ops: PowerOps, vms: Vm[], o: { timeoutMs: number; units: boolean }): Promise<HealReport> {
    const r: HealReport = { actions: [], problems: [], notes: [] };
    const started: Vm[] = [];
    for (const vm of vms) {
        const s = await ops.state(vm);
        if (s === "running") continue;
        if (s === undefined) {
            r.problems.push(`${vm.node.name}: libvirt has no domain ${vm.domain}; heal does not create VMs: run \`pulumi refresh\`, then \`pulumi up\``);
            continue;
        }
        try {
            await bringUp(ops, vm);
            const now = await ops.state(vm);
            if (now === "running") {
                r.actions.push(`${vm.node.name}: VM was "${s}", ${s === "paused" ? "resumed" : "started"} it`);
                started.push(vm);
            } else r.problems.push(`${vm.node.name}: VM was "${s}" and is "${now}" after ${s === "paused" ? "resume" : "start"}`);
        } catch (e) {
            r.problems.push(`${vm.node.name}: VM was "${s}"; starting it failed: ${(e as Error).message.split("\n")[0]}`);
        }
    }
    if (!o.units) return r;
    // A started VM gets time to boot before its units are asked about.
    const late = await waitAll(ops, started, (vm) => ops.sshUp(vm), "answer ssh", o.timeoutMs);
    for (const vm of late) r.problems.push(`${vm.node.name}: started, but does not answer ssh after ${Math.round(o.timeoutMs / 1000)} s; its Spark units were not checked`);
    const asked = vms.filter((v) => !late.includes(v) && !r.problems.some((p) => p.startsWith(`${v.node.name}:`)));
    const answers = await Promise.all(asked.map((vm) => ops.failedUnits(vm, sparkUnits(vm.node.role))));
    for (const [i, vm] of asked.entries()) {
        const failed = answers[i];
        if (failed === "no-systemd") {
            r.notes.push(`${vm.node.name}: no systemctl on the node (not a NixOS guest): its Spark units were not checked`);
            continue;
        }
        if (failed instanceof Error) {
            r.problems.push(`${vm.node.name}: could not ask systemd which units failed: ${failed.message}`);
            continue;
        }
        for (const unit of failed) {
            try {
                await ops.restartUnit(vm, unit);
                r.actions.push(`${vm.node.name}: ${unit} had failed, restarted it`);
            } catch (e) {
                r.problems.push(`${vm.node.name}: ${unit} has failed and restarting it failed: ${(e as Error).message.split("\n")[0]}`);
            }
        }
    }
    return r;
}

/** The lock stop, start and heal take: one per stack (its libvirt URI and domains), in the project's .nixspark/ (a cache). */
export function opsLockPath(dir: string, uri: string, vms: Vm[]): string {
    const key = crypto.createHash("sha256").update(`${uri}\n${vms.map((v) => v.domain).join("\n")}`).digest("hex").slice(0, 12);
    return path.join(dir, ".nixspark", `ops-${key}.lock`);
}

/** The marker `stop` leaves (and `start` removes) so that heal does not start a stack stopped on purpose. */
export function stoppedMarkerPath(dir: string, uri: string, vms: Vm[]): string {
    return opsLockPath(dir, uri, vms).replace(/\.lock$/, ".stopped");
}

/** The real thing: virsh with the stack's URI, ssh with its key and pinned host keys, the master's JSON. */
export function realOps(stack: Stack, uri: string, o: { virsh: string; probeTimeoutMs: number; say: (l: string) => void }): PowerOps {
    const t = o.probeTimeoutMs;
    const virshRun = (vm: Vm, args: string[]) => run([o.virsh, "-c", vm.uri ?? uri, ...args], { timeoutMs: Math.max(t, 60_000), allowFailure: true });
    const ssh = stack.outputs.ssh;
    const onNode = (vm: Vm, cmd: string[]) => {
        if (!ssh) throw new UsageError(`the stack has no "ssh" output; run \`pulumi up\` with this version of nixspark`);
        return run(sshArgv(targetOf(ssh, vm.node), "strict", cmd, Math.max(1, Math.round(t / 2000))), { timeoutMs: t, allowFailure: true });
    };
    return {
        async state(vm) {
            const r = await virshRun(vm, ["domstate", vm.domain]);
            if (r.code === 0) return r.stdout.trim().split("\n")[0];
            if (/failed to get domain|Domain not found|no domain with matching name/i.test(r.stderr)) return undefined;
            throw new Error(`virsh -c ${vm.uri ?? uri} domstate ${vm.domain} failed: ${r.stderr.trim().split("\n").pop()}`);
        },
        async virsh(vm, verb) {
            const r = await virshRun(vm, [verb, vm.domain]);
            if (r.code !== 0) throw new Error(`virsh -c ${vm.uri ?? uri} ${verb} ${vm.domain} failed: ${r.stderr.trim().split("\n").pop()}`);
        },
        async sshUp(vm) {
            return (await onNode(vm, ["true"]).catch(() => ({ code: -1 }))).code === 0;
        },
        async aliveWorkers() {
            try {
                const { fetchMasterState, matchWorkers } = await import("../providers/spark/master");
                const state = await fetchMasterState(stack.outputs.webUiUrl, t);
                const workers = stack.outputs.nodes.filter((n) => n.role === "worker").map((n) => ({ name: n.name, ip: n.ip }));
                return matchWorkers(workers, state).matches.filter((m) => m.state === "ALIVE").map((m) => m.name);
            } catch (e) {
                return e as Error;
            }
        },
        async failedUnits(vm, units) {
            // is-failed prints one state per unit; exit 0 when any failed, 1 when none.
            const r = await onNode(vm, ["systemctl", "is-failed", ...units]);
            if (r.code === 127) return "no-systemd";
            const states = r.stdout.trim() === "" ? [] : r.stdout.trim().split("\n");
            if ((r.code !== 0 && r.code !== 1) || states.length !== units.length) return new Error(`systemctl is-failed exited ${r.code}: ${(r.stderr.trim() || r.stdout.trim()).split("\n").pop()}`);
            return units.filter((_, i) => states[i].trim() === "failed");
        },
        async restartUnit(vm, unit) {
            for (const cmd of [["systemctl", "reset-failed", unit], ["systemctl", "restart", unit]]) {
                const argv = asRoot(ssh?.user, cmd);
                const r = await onNode(vm, argv);
                if (r.code !== 0) throw new Error(`${argv.join(" ")} exited ${r.code}: ${r.stderr.trim().split("\n").pop()}`);
            }
        },
        sleep: (ms) => new Promise((res) => setTimeout(res, ms)),
        now: () => Date.now(),
        say: o.say,
    };
}

/** Another stop, start or heal of the stack holds the lock. */
export class OpsBusy extends Error {}

/** Runs fn holding the stack's operations lock (providers/lock.ts), waiting up to timeoutMs; OpsBusy when it stays held. */
export async function withOpsLock<T>(lock: string, what: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
    const fs = await import("node:fs");
    fs.mkdirSync(path.dirname(lock), { recursive: true, mode: 0o700 });
    const { holderWhat, withLock } = await import("../providers/lock");
    return withLock(lock, { what, timeoutMs, timeoutError: (holder) => new OpsBusy(`another nixspark run holds ${lock} (${holder ? holderWhat(holder) : "?"})`) }, fn);
}

/** What libvirt knows of a VM's resilience: its watchdog and panic devices, on_crash, and its state with libvirt's reason. */
export interface VmGuard {
    node: string;
    /** `virsh domstate --reason`: "running (booted)", "shut off (destroyed)", "crashed (panicked)", ... */
    state: string;
    /** "watchdog i6300esb/reset, panic isa", or "none" for a domain defined before them. */
    devices: string;
    onCrash: string;
}

export async function vmGuard(virsh: string, uri: string, vm: Vm, timeoutMs: number): Promise<VmGuard> {
    const { readDomain } = await import("../providers/libvirtXml");
    const [st, xml] = await Promise.all(["domstate --reason", "dumpxml"].map((a) => run([virsh, "-c", uri, ...a.split(" "), vm.domain], { timeoutMs, allowFailure: true }).catch((e: Error) => ({ code: -1, stdout: "", stderr: e.message }))));
    const why = (r: { stderr: string }) => `unknown (${r.stderr.trim().split("\n").pop()?.replace(/^error:\s*/, "")})`;
    const f = xml.code === 0 ? readDomain(xml.stdout) : undefined;
    return { node: vm.node.name, state: st.code === 0 ? st.stdout.trim().split("\n")[0] : why(st), devices: f ? (f.resilience ?? "none") : why(xml), onCrash: f ? (f.onCrash ?? "destroy (libvirt's default)") : "unknown" };
}

/** vmGuard of every VM of the stack (none when the outputs name no libvirt URI). */
export async function stackGuards(outputs: StackOutputs, virsh: string, timeoutMs: number): Promise<VmGuard[]> {
    const uri = outputs.libvirtUri;
    if (!uri) return [];
    return Promise.all(outputs.nodes.filter((n) => n.libvirtName).map((node) => vmGuard(virsh, node.libvirtUri ?? uri, { node, domain: node.libvirtName as string }, timeoutMs)));
}

export function renderGuards(guards: VmGuard[]): string {
    const lines = ["", "VM resilience (libvirt keeps no history of resets: a watchdog reset or a crash restart shows as a new boot in `nixspark logs NODE`, and in the console log):"];
    for (const g of guards) lines.push(`  ${g.node.padEnd(10)} ${g.state.padEnd(22)} ${g.devices}; on_crash ${g.onCrash}`);
    return lines.join("\n");
}
