// The sequences of `nixspark stop`, `start`, `heal` and `status --watch`
// (cli/power.ts, cli/watch.ts) against a fake libvirt, ssh and Spark master:
// who goes first, what is waited for, what is said, and what is never done
// silently (a VM destroyed without --force). The real thing runs on the
// libvirt bench in tests/e2e/stack.test.ts (steps 4b-4d).
import { heal, PowerOps, stackVms, startVms, stopVms, Vm } from "../../cli/power";
import { changes, poll } from "../../cli/watch";
import type { StackNode } from "../../cluster/sparkStatus";

const node = (name: string): StackNode => ({ name, role: name === "master" ? "master" : "worker", ip: `10.0.0.${name === "master" ? 10 : 10 + Number(name.slice(-1))}`, libvirtName: `dev-${name}` });
const vms: Vm[] = ["master", "worker-1", "worker-2"].map((n) => ({ node: node(n), domain: `dev-${n}` }));

/** A fake world: VM states, how guests react, a clock that sleeps instantly. */
function fake(o: { states: Record<string, string | undefined>; ignoresButton?: string[]; bootMs?: number; failed?: Record<string, string[]>; noSystemd?: string[]; sparkAliveAfterMs?: number }) {
    const log: string[] = [];
    const said: string[] = [];
    let clock = 0;
    const startedAt: Record<string, number> = {};
    const st = { ...o.states };
    const failed = { ...(o.failed ?? {}) };
    const ops: PowerOps = {
        async state(vm) {
            return st[vm.node.name];
        },
        async virsh(vm, verb) {
            log.push(`${verb} ${vm.node.name}`);
            if (verb === "shutdown" && !(o.ignoresButton ?? []).includes(vm.node.name)) st[vm.node.name] = "shut off";
            if (verb === "destroy") st[vm.node.name] = "shut off";
            if (verb === "start" || verb === "resume") {
                st[vm.node.name] = "running";
                startedAt[vm.node.name] = clock;
            }
        },
        async sshUp(vm) {
            return st[vm.node.name] === "running" && clock - (startedAt[vm.node.name] ?? -1e9) >= (o.bootMs ?? 0);
        },
        async aliveWorkers() {
            return clock >= (o.sparkAliveAfterMs ?? 0) ? vms.filter((v) => v.node.role === "worker" && st[v.node.name] === "running").map((v) => v.node.name) : new Error("connect ECONNREFUSED");
        },
        async failedUnits(vm) {
            if ((o.noSystemd ?? []).includes(vm.node.name)) return "no-systemd";
            return failed[vm.node.name] ?? [];
        },
        async restartUnit(vm, unit) {
            log.push(`restart ${vm.node.name} ${unit}`);
            failed[vm.node.name] = (failed[vm.node.name] ?? []).filter((u) => u !== unit);
        },
        async sleep(ms) {
            clock += ms;
        },
        now: () => clock,
        say: (l) => void said.push(l),
    };
    return { ops, log, said, st };
}

const allRunning = { master: "running", "worker-1": "running", "worker-2": "running" };

describe("stop", () => {
    test("the workers get the ACPI shutdown first, the master only once they are off; nothing is destroyed", async () => {
        const f = fake({ states: { ...allRunning } });
        expect(await stopVms(f.ops, vms, { timeoutMs: 60_000, force: false, uri: "qemu:///system" })).toEqual([]);
        expect(f.log).toEqual(["shutdown worker-1", "shutdown worker-2", "shutdown master"]);
        expect(f.st).toEqual({ master: "shut off", "worker-1": "shut off", "worker-2": "shut off" });
    });
    test("a guest that ignores the power button is named with what to do, not destroyed; the master stays up", async () => {
        const f = fake({ states: { ...allRunning }, ignoresButton: ["worker-2"] });
        expect(await stopVms(f.ops, vms, { timeoutMs: 30_000, force: false, uri: "qemu:///system" })).toEqual(["worker-2"]);
        // The button is pressed again every 10 s (a guest still booting missed the first press); nothing else is sent.
        expect(f.log).toEqual(["shutdown worker-1", "shutdown worker-2", ...Array(3).fill("shutdown worker-2")]); // at 10, 20 and 30 s
        expect(f.said.join("\n")).toMatch(/waiting for worker-2 to shut off \(\d+ s of 30 s\)/);
        expect(f.said.join("\n")).toMatch(/worker-2: still "running" after 30 s: .*nixspark stop --force.*virsh -c qemu:\/\/\/system destroy dev-worker-2/);
        expect(f.said.join("\n")).toMatch(/master: left running, since worker-2 did not stop/);
    });
    test("--force destroys it after the timeout, and says so", async () => {
        const f = fake({ states: { ...allRunning }, ignoresButton: ["worker-2"] });
        expect(await stopVms(f.ops, vms, { timeoutMs: 30_000, force: true, uri: "qemu:///system" })).toEqual([]);
        expect(f.log.filter((c) => c !== "shutdown worker-2")).toEqual(["shutdown worker-1", "destroy worker-2", "shutdown master"]);
        expect(f.said.join("\n")).toMatch(/worker-2: still "running" after 30 s; --force: destroying it/);
    });
    test("a guest that misses the first press (still booting) is pressed again and stops", async () => {
        const f = fake({ states: { ...allRunning }, ignoresButton: ["worker-1"] });
        const virsh = f.ops.virsh;
        let presses = 0;
        f.ops.virsh = async (vm, verb) => {
            if (vm.node.name === "worker-1" && verb === "shutdown" && ++presses === 2) f.st["worker-1"] = "shut off";
            return virsh(vm, verb);
        };
        expect(await stopVms(f.ops, vms, { timeoutMs: 60_000, force: false, uri: "u" })).toEqual([]);
        expect(f.log).toEqual(["shutdown worker-1", "shutdown worker-2", "shutdown worker-1", "shutdown master"]);
    });
    test("a paused VM has no guest to ask: named at once, destroyed only with --force", async () => {
        const f = fake({ states: { ...allRunning, "worker-1": "paused" } });
        expect(await stopVms(f.ops, vms, { timeoutMs: 30_000, force: false, uri: "u" })).toEqual(["worker-1"]);
        expect(f.said.join("\n")).toMatch(/worker-1: "paused": no running guest to ask\. /);
        expect(f.log).toEqual(["shutdown worker-2"]);
    });
    test("stop, start and heal need the stack's libvirt outputs: a usage error naming libvirtUri or libvirtName", () => {
        const nodes = vms.map((v) => v.node);
        expect(() => stackVms({ nodes, masterUrl: "", webUiUrl: "" })).toThrow(/the stack has no "libvirtUri" output/);
        // A hosts stack (existing machines): said so, never powered off.
        const machines = nodes.map(({ name, role, ip }) => ({ name, role, ip }));
        expect(() => stackVms({ nodes: machines, masterUrl: "", webUiUrl: "" })).toThrow(/existing machines \(nixspark:target hosts\), not VMs: .*never powers a machine off/);
        expect(() => stackVms({ nodes: [...nodes, { name: "worker-3", role: "worker", ip: "10.0.0.13" }], libvirtUri: "u", masterUrl: "", webUiUrl: "" })).toThrow(/names no libvirt domain for worker-3/);
        expect(stackVms({ nodes: [nodes[1], nodes[0], nodes[2]], libvirtUri: "u", masterUrl: "", webUiUrl: "" }).vms.map((v) => v.domain)).toEqual(["dev-master", "dev-worker-1", "dev-worker-2"]);
    });
    test("with several libvirt hosts each VM is asked on its own host: stackVms and the real virsh calls use the node's libvirtUri", async () => {
        const fs = require("node:fs") as typeof import("node:fs");
        const os = require("node:os") as typeof import("node:os");
        const path = require("node:path") as typeof import("node:path");
        const nodes = [
            { name: "master", role: "master", ip: "10.0.0.10", libvirtName: "lab-master", libvirtUri: "qemu+ssh://root@hv-a/system" },
            { name: "worker-33", role: "worker", ip: "10.0.0.43", libvirtName: "lab-worker-33", libvirtUri: "qemu+ssh://root@hv-b/system" },
        ];
        const outputs = { nodes, libvirtUri: "qemu+ssh://root@hv-a/system", masterUrl: "spark://10.0.0.10:7077", webUiUrl: "http://10.0.0.10:8080" };
        const { uri, vms: placed } = stackVms(outputs);
        expect(placed.map((v) => [v.domain, v.uri])).toEqual([
            ["lab-master", "qemu+ssh://root@hv-a/system"],
            ["lab-worker-33", "qemu+ssh://root@hv-b/system"],
        ]);
        // A stand-in virsh that records its arguments and says "running".
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "nxs-virsh-"));
        try {
            const virsh = path.join(dir, "virsh");
            fs.writeFileSync(virsh, `#!/bin/sh\necho "$@" >> ${dir}/calls\necho running\n`, { mode: 0o755 });
            const { realOps } = await import("../../cli/power");
            const ops = realOps({ dir, outputs, raw: {} }, uri, { virsh, probeTimeoutMs: 5000, say: () => undefined });
            for (const vm of placed) expect(await ops.state(vm)).toBe("running");
            await ops.virsh(placed[1], "start");
            expect(fs.readFileSync(path.join(dir, "calls"), "utf8").trim().split("\n")).toEqual([
                "-c qemu+ssh://root@hv-a/system domstate lab-master",
                "-c qemu+ssh://root@hv-b/system domstate lab-worker-33",
                "-c qemu+ssh://root@hv-b/system start lab-worker-33",
            ]);
        } finally {
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });
    test("already off: said, nothing sent", async () => {
        const f = fake({ states: { master: "shut off", "worker-1": "shut off", "worker-2": "shut off" } });
        expect(await stopVms(f.ops, vms, { timeoutMs: 30_000, force: false, uri: "u" })).toEqual([]);
        expect(f.log).toEqual([]);
        expect(f.said).toContain("master: already shut off");
    });
});

describe("start", () => {
    test("the master first, until it answers ssh; then the workers; then until Spark lists them ALIVE", async () => {
        const f = fake({ states: { master: "shut off", "worker-1": "shut off", "worker-2": "paused" }, bootMs: 8000, sparkAliveAfterMs: 40_000 });
        expect(await startVms(f.ops, vms, { timeoutMs: 120_000, ssh: true, spark: true })).toEqual([]);
        expect(f.log).toEqual(["start master", "start worker-1", "resume worker-2"]);
        const i = (re: RegExp) => f.said.findIndex((l) => re.test(l));
        expect(i(/^master: answers ssh$/)).toBeLessThan(i(/^worker-1: starting/));
        expect(f.said.join("\n")).toMatch(/waiting for the Spark master to list worker-1, worker-2 ALIVE \(master: connect ECONNREFUSED\)/);
        expect(f.said[f.said.length - 1]).toBe("Spark: the master lists worker-1, worker-2 ALIVE");
    });
    test("a master that never answers ssh: the workers are not started, and the problem is named", async () => {
        const f = fake({ states: { master: "shut off", "worker-1": "shut off", "worker-2": "shut off" }, bootMs: 1e9 });
        const p = await startVms(f.ops, vms, { timeoutMs: 20_000, ssh: true, spark: true });
        expect(p).toEqual([expect.stringMatching(/^master: does not answer ssh after 20 s \(libvirt: running\)/)]);
        expect(f.log).toEqual(["start master"]);
    });
    test("Spark that never lists the workers fails start, naming them", async () => {
        const f = fake({ states: { ...allRunning }, sparkAliveAfterMs: 1e9 });
        expect(await startVms(f.ops, vms, { timeoutMs: 30_000, ssh: true, spark: true })).toEqual([expect.stringMatching(/^Spark: the master does not answer \(connect ECONNREFUSED\) after 30 s/)]);
    });
});

describe("heal", () => {
    test("nothing to do: no action, no problem, nothing sent", async () => {
        const f = fake({ states: { ...allRunning } });
        expect(await heal(f.ops, vms, { timeoutMs: 60_000, units: true })).toEqual({ actions: [], problems: [], notes: [] });
        expect(f.log).toEqual([]);
    });
    test("a VM killed from outside is started; a failed unit is restarted; both said", async () => {
        const f = fake({ states: { ...allRunning, "worker-1": "shut off" }, bootMs: 5000, failed: { master: ["spark-history.service"] } });
        const r = await heal(f.ops, vms, { timeoutMs: 60_000, units: true });
        expect(r.actions).toEqual(['worker-1: VM was "shut off", started it', "master: spark-history.service had failed, restarted it"]);
        expect(r.problems).toEqual([]);
        expect(f.log).toEqual(["start worker-1", "restart master spark-history.service"]);
        // Idempotent: the second run finds nothing.
        expect(await heal(f.ops, vms, { timeoutMs: 60_000, units: true })).toEqual({ actions: [], problems: [], notes: [] });
    });
    test("a node without systemd is a note; a domain libvirt does not have is a problem heal does not fix", async () => {
        const f = fake({ states: { ...allRunning, "worker-2": undefined }, noSystemd: ["worker-1"] });
        const r = await heal(f.ops, vms, { timeoutMs: 60_000, units: true });
        expect(r.notes).toEqual(["worker-1: no systemctl on the node (not a NixOS guest): its Spark units were not checked"]);
        expect(r.problems).toEqual([expect.stringMatching(/^worker-2: libvirt has no domain dev-worker-2; heal does not create VMs/)]);
    });
});

describe("status --watch", () => {
    test("the first poll prints every value, later ones only what changed, each with a timestamp", async () => {
        const f = fake({ states: { ...allRunning } });
        const outputs = { nodes: vms.map((v) => v.node), masterUrl: "", webUiUrl: "" };
        const master = async () => new Map([["worker-1", "ALIVE"], ["worker-2", f.st["worker-2"] === "running" ? "ALIVE" : "DEAD"]]);
        const a = await poll(f.ops, outputs, vms, { ssh: true, master });
        const at = new Date("2026-12-05T14:00:00.123Z");
        expect(changes(new Map(), a, at)).toEqual([
            "2026-12-05T14:00:00Z master vm: running",
            "2026-12-05T14:00:00Z master ssh: answers",
            "2026-12-05T14:00:00Z master spark: master answers",
            "2026-12-05T14:00:00Z worker-1 vm: running",
            "2026-12-05T14:00:00Z worker-1 ssh: answers",
            "2026-12-05T14:00:00Z worker-1 spark: ALIVE",
            "2026-12-05T14:00:00Z worker-2 vm: running",
            "2026-12-05T14:00:00Z worker-2 ssh: answers",
            "2026-12-05T14:00:00Z worker-2 spark: ALIVE",
        ]);
        expect(changes(a, await poll(f.ops, outputs, vms, { ssh: true, master }), at)).toEqual([]);
        f.st["worker-2"] = "shut off";
        expect(changes(a, await poll(f.ops, outputs, vms, { ssh: true, master }), at)).toEqual([
            "2026-12-05T14:00:00Z worker-2 vm: running -> shut off",
            "2026-12-05T14:00:00Z worker-2 ssh: answers -> no answer",
            "2026-12-05T14:00:00Z worker-2 spark: ALIVE -> DEAD",
        ]);
    });
});
