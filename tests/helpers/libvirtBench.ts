// The libvirt test bench for integration and e2e tests: a real libvirtd (and
// virtlogd) in a private network namespace, plus the tiny test guest built by
// scripts/build-test-guest. See docs/benchmarks.md, "The test host", for the
// measured facts this follows.
//
// Isolation. `ip netns exec` runs the daemons in a network namespace the
// bench created (bridge, dnsmasq, NAT rules and guests all live there) and
// also in a mount namespace of their own, in which the bench bind-mounts its
// temp dir over /etc/libvirt, /run/libvirt, /var/lib/libvirt and
// /var/log/libvirt. So the bench never touches system files (qemu.conf has no
// flag of its own and would otherwise have to be written to /etc), two
// benches (or a user's own libvirtd) never share sockets, driver locks,
// persistent definitions or leases, and a bench leaves no definitions behind.
// Clients in the root namespace reach the daemon through its private socket:
//
//     virsh -c 'qemu+unix:///system?socket=<dir>/run/libvirt-sock' ...
//
// which is `bench.uri`. Only traffic *to guests* (wget, ssh) needs the
// network namespace: `bench.exec([...])`.
//
// Jest pattern (stop() is idempotent and safe after a partial start; a
// startBench() that fails cleans up after itself and rethrows):
//
//     let bench: Bench | undefined;
//     beforeAll(async () => { bench = await startBench(); }, 600_000);
//     afterAll(async () => { await bench?.stop(); }, 120_000);
//
// If the test process dies anyway, an 'exit' handler tears down what is
// left, and the next startBench() reaps benches whose owner process is gone.

import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import * as vm from "node:vm";
import { run, RunOptions, RunResult, lastLines } from "../../providers/run";

export interface TestGuest {
    /** Kernel for direct kernel boot (`<kernel>`). */
    kernel: string;
    /** busybox initramfs (`<initrd>`); cmdline needs `console=ttyS0`. */
    initrd: string;
    /** Empty 64 MiB qcow2 that stands in for the NixOS base image. */
    baseImage: string;
    /** Private key accepted by the guest's dropbear for root. */
    sshKey: string;
    /** The matching public key (one line). */
    sshPublicKey: string;
}

export interface BenchTimings {
    setupHostMs: number;
    buildGuestMs: number;
    /** From `ip netns add` until `virsh version` answers. */
    daemonsMs: number;
}

export interface Bench {
    /** libvirt URI of the bench's daemon; use it for every virsh call. */
    uri: string;
    /** Name of the network namespace (`ip netns exec <netns> ...`). */
    netns: string;
    /** The bench's temp dir, removed by stop(): put XML, disks, logs here. */
    dir: string;
    guest: TestGuest;
    timings: BenchTimings;
    /** Runs argv inside the network namespace (to reach guests). */
    exec(argv: string[], opts?: RunOptions): Promise<RunResult>;
    /** Runs `virsh -c <uri> ...args`. */
    virsh(args: string[], opts?: RunOptions): Promise<RunResult>;
    /** Runs a command on a guest as root over ssh (from inside the namespace). */
    ssh(host: string, command: string[], opts?: RunOptions): Promise<RunResult>;
    /** Tears everything down (see the order in docs/benchmarks.md, "The test host"). Idempotent. */
    stop(): Promise<void>;
}

export interface StartOptions {
    /** Progress lines (what is being started, how long it took). */
    log?: (line: string) => void;
}

const REPO = path.resolve(__dirname, "..", "..");
const DIR_PREFIX = "nxs-bench-";
// Not os.tmpdir(): the daemon's socket path must stay short (108 bytes for a
// unix socket) and every parent directory traversable by dnsmasq.
const BASE_DIR = "/tmp";

/** Everything needed to tear a bench down, also from a synchronous 'exit' handler. */
interface BenchState {
    id: string;
    netns: string;
    dir: string;
    netnsCreated: boolean;
}

const live = new Map<string, BenchState>();

export async function startBench(options: StartOptions = {}): Promise<Bench> {
    const log = options.log ?? (() => undefined);
    registerExitHandler();

    let t = Date.now();
    await run([path.join(REPO, "scripts", "setup-host")], { timeoutMs: 15 * 60_000 });
    const setupHostMs = Date.now() - t;
    t = Date.now();
    const built = await run([path.join(REPO, "scripts", "build-test-guest")], { timeoutMs: 5 * 60_000 });
    const buildGuestMs = Date.now() - t;
    const guest = parseGuestPaths(built.stdout);
    log(`bench: setup-host ${setupHostMs} ms, build-test-guest ${buildGuestMs} ms`);

    reapStaleBenches(log);

    const state = newState();
    const uri = `qemu+unix:///system?socket=${state.dir}/run/libvirt-sock`;
    // World-readable on purpose: dnsmasq drops privileges (to nobody) before
    // it reads the DHCP reservations under lib/dnsmasq, and silently hands
    // out range addresses when it cannot.
    fs.mkdirSync(state.dir, { mode: 0o755 });
    live.set(state.id, state);

    let stopped: Promise<void> | undefined;
    const bench: Bench = {
        uri,
        netns: state.netns,
        dir: state.dir,
        guest,
        timings: { setupHostMs, buildGuestMs, daemonsMs: 0 },
        exec: (argv, opts = {}) => run(["ip", "netns", "exec", state.netns, ...argv], { timeoutMs: 60_000, ...opts }),
        virsh: (args, opts = {}) => run(["virsh", "-c", uri, ...args], { timeoutMs: 60_000, ...opts }),
        ssh: (host, command, opts = {}) => bench.exec(sshArgv(guest.sshKey, host, command), opts),
        stop: () => (stopped ??= teardown(state, uri)),
    };

    try {
        t = Date.now();
        writeOwner(state);
        writeDaemonFiles(state.dir);
        await run(["ip", "netns", "add", state.netns], { timeoutMs: 10_000 });
        state.netnsCreated = true;
        await bench.exec(["ip", "link", "set", "lo", "up"], { timeoutMs: 10_000 });
        await bench.exec(["bash", path.join(state.dir, "start-daemons"), state.dir], { timeoutMs: 60_000 });
        await waitForDaemon(state, bench);
        bench.timings.daemonsMs = Date.now() - t;
        log(`bench: libvirtd up in ${bench.timings.daemonsMs} ms (netns ${state.netns}, ${uri})`);
        return bench;
    } catch (err) {
        await bench.stop().catch((e: Error) => log(`bench: cleanup after failed start: ${e.message}`));
        throw err;
    }
}

/** A network namespace of its own (no daemons), owned, reaped and torn down as a bench's is. */
export interface Netns {
    /** Name of the network namespace (`nxs-<hex>`, as a bench's). */
    netns: string;
    /** Its temp dir (holds the owner record), removed by stop(). */
    dir: string;
    /** Runs argv inside the network namespace. */
    exec(argv: string[], opts?: RunOptions): Promise<RunResult>;
    /** Ends what still runs in it (by PID), deletes it and its dir. Idempotent. */
    stop(): Promise<void>;
}

/**
 * A bare network namespace with loopback up, for what a test needs beside
 * its benches (tests/helpers/segmentBench.ts: the shared L2 segment). It is
 * recorded like a bench (owner.json in /tmp/nxs-bench-<id>), so the 'exit'
 * handler and the next start's reaping remove it if its process dies.
 */
export async function startNetns(options: StartOptions = {}): Promise<Netns> {
    const log = options.log ?? (() => undefined);
    registerExitHandler();
    reapStaleBenches(log);
    const state = newState();
    fs.mkdirSync(state.dir, { mode: 0o755 });
    live.set(state.id, state);
    let stopped: Promise<void> | undefined;
    const ns: Netns = {
        netns: state.netns,
        dir: state.dir,
        exec: (argv, opts = {}) => run(["ip", "netns", "exec", state.netns, ...argv], { timeoutMs: 60_000, ...opts }),
        // No libvirtd.pid in its dir: teardown skips the daemons' steps.
        stop: () => (stopped ??= teardown(state, "")),
    };
    try {
        writeOwner(state);
        await run(["ip", "netns", "add", state.netns], { timeoutMs: 10_000 });
        state.netnsCreated = true;
        await ns.exec(["ip", "link", "set", "lo", "up"], { timeoutMs: 10_000 });
        return ns;
    } catch (err) {
        await ns.stop().catch((e: Error) => log(`netns: cleanup after failed start: ${e.message}`));
        throw err;
    }
}

function newState(): BenchState {
    const id = randomBytes(4).toString("hex");
    return { id, netns: `nxs-${id}`, dir: path.join(BASE_DIR, `${DIR_PREFIX}${id}`), netnsCreated: false };
}

/** Polls `fn` until it returns a value other than undefined; bounded. */
export async function waitFor<T>(
    what: string,
    fn: () => Promise<T | undefined>,
    { timeoutMs = 60_000, intervalMs = 500, diagnose }: { timeoutMs?: number; intervalMs?: number; diagnose?: () => string } = {},
): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    let lastError = "";
    for (;;) {
        try {
            const value = await fn();
            if (value !== undefined) return value;
        } catch (err) {
            lastError = (err as Error).message;
        }
        if (Date.now() >= deadline) {
            const extra = [lastError && `last error: ${lastError}`, diagnose?.()].filter(Boolean).join("\n");
            throw new Error(`${what}: not within ${Math.round(timeoutMs / 1000)} s${extra ? `\n${extra}` : ""}`);
        }
        await new Promise((r) => setTimeout(r, intervalMs));
    }
}

/** The last lines of a file, or "" (for error messages: serial logs, daemon logs). */
export function tailFile(file: string, n = 30): string {
    try {
        return lastLines(fs.readFileSync(file, "utf8"), n);
    } catch {
        return "";
    }
}

export function sshArgv(key: string, host: string, command: string[]): string[] {
    return [
        "ssh", "-F", "/dev/null", "-i", key,
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
        `root@${host}`, ...command,
    ];
}

// ---------------------------------------------------------------- XML helpers

const esc = (s: string | number) =>
    String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/'/g, "&apos;").replace(/"/g, "&quot;");

export interface NatNetworkSpec {
    name: string;
    /** Gateway address of the /24, e.g. "10.213.7.1". */
    gateway: string;
    /** DHCP range; defaults to .100-.200 of the gateway's /24. */
    range?: { start: string; end: string };
    hosts?: { mac: string; name: string; ip: string }[];
}

/** A libvirt NAT network with DHCP reservations (the shape the stack uses). */
export function natNetworkXml(spec: NatNetworkSpec): string {
    const net = spec.gateway.split(".").slice(0, 3).join(".");
    const range = spec.range ?? { start: `${net}.100`, end: `${net}.200` };
    const hosts = (spec.hosts ?? [])
        .map((h) => `      <host mac='${esc(h.mac)}' name='${esc(h.name)}' ip='${esc(h.ip)}'/>\n`)
        .join("");
    return `<network>
  <name>${esc(spec.name)}</name>
  <forward mode='nat'/>
  <ip address='${esc(spec.gateway)}' netmask='255.255.255.0'>
    <dhcp>
      <range start='${esc(range.start)}' end='${esc(range.end)}'/>
${hosts}    </dhcp>
  </ip>
</network>
`;
}

export interface TestGuestDomainSpec {
    name: string;
    guest: TestGuest;
    network: string;
    mac: string;
    /** qcow2 attached as virtio disk vda (an overlay on guest.baseImage). */
    disk: string;
    /** Where the serial console is logged (read it on failure). */
    serialLog: string;
    memoryMiB?: number;
    /** `qemu` on this kind of host: /dev/kvm is not usable (docs/benchmarks.md, "The test host"). */
    type?: "qemu" | "kvm";
}

/** A domain that boots the tiny test guest by direct kernel boot. */
export function testGuestDomainXml(spec: TestGuestDomainSpec): string {
    return `<domain type='${spec.type ?? "qemu"}'>
  <name>${esc(spec.name)}</name>
  <memory unit='MiB'>${spec.memoryMiB ?? 256}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${esc(spec.guest.kernel)}</kernel>
    <initrd>${esc(spec.guest.initrd)}</initrd>
    <cmdline>console=ttyS0</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${esc(spec.disk)}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <source network='${esc(spec.network)}'/>
      <mac address='${esc(spec.mac)}'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'>
      <log file='${esc(spec.serialLog)}' append='off'/>
    </serial>
    <console type='pty'/>
  </devices>
</domain>
`;
}

// ------------------------------------------------------------------ internals

function parseGuestPaths(stdout: string): TestGuest {
    const kv = new Map<string, string>();
    for (const line of stdout.split("\n")) {
        const m = /^(\w+)=(.+)$/.exec(line.trim());
        if (m) kv.set(m[1], m[2]);
    }
    const get = (k: string) => {
        const v = kv.get(k);
        if (!v || !fs.existsSync(v)) throw new Error(`build-test-guest did not report an existing ${k}:\n${stdout}`);
        return v;
    };
    const sshKey = get("sshKey");
    return {
        kernel: get("kernel"),
        initrd: get("initrd"),
        baseImage: get("baseImage"),
        sshKey,
        sshPublicKey: fs.readFileSync(`${sshKey}.pub`, "utf8").trim(),
    };
}

// The daemons' config. The paths are the standard ones because the start
// script bind-mounts the bench dir over them (in the daemons' mount namespace
// only): etc -> /etc/libvirt, run -> /run/libvirt, lib -> /var/lib/libvirt,
// log -> /var/log/libvirt. The capabilities cache (/var/cache/libvirt) stays
// shared so only the first start pays the ~8 s QEMU probe.
const LIBVIRTD_CONF = `# nixspark test bench
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
`;

// No udev and no usable /dev/kvm here: qemu runs as root, libvirt leaves file
// ownership alone, and no cgroups, per-VM /dev namespaces or MAC drivers.
const QEMU_CONF = `# nixspark test bench
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
`;

const VIRTLOGD_CONF = `# nixspark test bench
log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
`;

// Run as `ip netns exec NS bash start-daemons DIR`: `ip netns exec` gives it a
// private mount namespace (and a /sys of the netns, which libvirt needs for
// bridges); the daemons it starts keep that namespace alive. A script file
// with its one argument quoted, not a shell string built at run time.
const START_DAEMONS = `#!/bin/bash
set -euo pipefail
dir=$1
for pair in etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt log:/var/log/libvirt; do
    mkdir -p "\${pair#*:}"
    mount --bind "$dir/\${pair%%:*}" "\${pair#*:}"
done
virtlogd --daemon --config "$dir/etc/virtlogd.conf" --pid-file "$dir/virtlogd.pid"
libvirtd --daemon --config "$dir/etc/libvirtd.conf" --pid-file "$dir/libvirtd.pid"
`;

function writeDaemonFiles(dir: string): void {
    for (const sub of ["etc", "run", "lib", "log"]) fs.mkdirSync(path.join(dir, sub), { mode: 0o755 });
    // A host's libvirt package ships /var/log/libvirt/qemu, where domains log
    // their serial console by default (SparkCluster's consoleLogDir); libvirtd
    // does not create it, and `virsh start` fails without it.
    fs.mkdirSync(path.join(dir, "log", "qemu"), { mode: 0o755 });
    fs.writeFileSync(path.join(dir, "etc", "libvirtd.conf"), LIBVIRTD_CONF);
    fs.writeFileSync(path.join(dir, "etc", "qemu.conf"), QEMU_CONF);
    fs.writeFileSync(path.join(dir, "etc", "virtlogd.conf"), VIRTLOGD_CONF);
    fs.writeFileSync(path.join(dir, "start-daemons"), START_DAEMONS, { mode: 0o700 });
}

async function waitForDaemon(state: BenchState, bench: Bench): Promise<void> {
    const logTail = () => tailFile(path.join(state.dir, "log", "libvirtd.log"));
    await waitFor(
        "libvirtd answering `virsh version`",
        async () => {
            const pid = readPid(state.dir, "libvirtd");
            if (pid !== undefined && !alive(pid, "libvirtd")) {
                throw new Error(`libvirtd (pid ${pid}) exited during start-up\n${logTail()}`);
            }
            const r = await bench.virsh(["version"], { timeoutMs: 30_000, allowFailure: true });
            return r.code === 0 ? true : undefined;
        },
        { timeoutMs: 120_000, intervalMs: 250, diagnose: logTail },
    );
}

async function teardown(state: BenchState, uri: string): Promise<void> {
    const problems: string[] = [];
    const virsh = (args: string[], allowFailure = false) =>
        run(["virsh", "-c", uri, ...args], { timeoutMs: 60_000, allowFailure });
    const names = async (args: string[]) =>
        (await virsh(args)).stdout.split("\n").map((l) => l.trim()).filter(Boolean);
    const step = async (what: string, fn: () => Promise<unknown>) => {
        try {
            await fn();
        } catch (err) {
            problems.push(`${what}: ${(err as Error).message}`);
        }
    };

    const libvirtd = readPid(state.dir, "libvirtd");
    if (libvirtd !== undefined && alive(libvirtd, "libvirtd")) {
        // Domains first, then networks (dnsmasq outlives libvirtd otherwise
        // and pins the namespace), then pools.
        await step("domains", async () => {
            for (const dom of await names(["list", "--all", "--name"])) {
                await virsh(["destroy", dom], true);
                await virsh(["undefine", "--nvram", "--managed-save", "--snapshots-metadata", dom]);
            }
        });
        await step("networks", async () => {
            for (const net of await names(["net-list", "--all", "--name"])) {
                await virsh(["net-destroy", net], true);
                await virsh(["net-undefine", net]);
            }
        });
        await step("pools", async () => {
            for (const pool of await names(["pool-list", "--all", "--name"])) {
                const xml = (await virsh(["pool-dumpxml", pool], true)).stdout;
                const target = /<target>\s*<path>([^<]+)<\/path>/.exec(xml)?.[1];
                await virsh(["pool-destroy", pool], true);
                await virsh(["pool-undefine", pool]);
                if (target && isInside(state.dir, target)) fs.rmSync(target, { recursive: true, force: true });
            }
        });
    }
    for (const daemon of ["libvirtd", "virtlogd"] as const) {
        await step(`stopping ${daemon}`, async () => {
            const pid = readPid(state.dir, daemon);
            if (pid !== undefined) await terminate([pid], daemon, 15_000);
        });
    }
    if (state.netnsCreated || fs.existsSync(`/run/netns/${state.netns}`)) {
        await step("processes left in the namespace", async () => {
            const pids = await netnsPids(state.netns);
            if (pids.length) await terminate(pids, undefined, 5_000);
        });
        await step("deleting the namespace", async () => {
            await run(["ip", "netns", "delete", state.netns], { timeoutMs: 10_000 });
        });
    }
    await step("removing the bench dir", async () => fs.rmSync(state.dir, { recursive: true, force: true }));
    live.delete(state.id);
    if (problems.length) throw new Error(`bench ${state.netns} teardown:\n${problems.join("\n")}`);
}

function isInside(dir: string, p: string): boolean {
    const rel = path.relative(dir, path.resolve(p));
    return rel !== "" && !rel.startsWith("..") && !path.isAbsolute(rel);
}

async function netnsPids(netns: string): Promise<number[]> {
    const r = await run(["ip", "netns", "pids", netns], { timeoutMs: 10_000, allowFailure: true });
    return r.stdout.split(/\s+/).filter(Boolean).map(Number).filter((n) => n > 1 && n !== process.pid);
}

/** SIGTERM, wait up to graceMs, then SIGKILL; by PID only. */
async function terminate(pids: number[], comm: string | undefined, graceMs: number): Promise<void> {
    const mine = pids.filter((p) => alive(p, comm));
    for (const p of mine) signal(p, "SIGTERM");
    const deadline = Date.now() + graceMs;
    while (mine.some((p) => alive(p, comm)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    for (const p of mine) if (alive(p, comm)) signal(p, "SIGKILL");
    const killDeadline = Date.now() + 5_000;
    while (mine.some((p) => alive(p, comm)) && Date.now() < killDeadline) await new Promise((r) => setTimeout(r, 100));
    const left = mine.filter((p) => alive(p, comm));
    if (left.length) throw new Error(`still running after SIGKILL: ${left.join(" ")}`);
}

function signal(pid: number, sig: NodeJS.Signals): void {
    try {
        process.kill(pid, sig);
    } catch {
        /* already gone */
    }
}

function readPid(dir: string, daemon: string): number | undefined {
    try {
        const n = Number(fs.readFileSync(path.join(dir, `${daemon}.pid`), "utf8").trim());
        return Number.isInteger(n) && n > 1 ? n : undefined;
    } catch {
        return undefined;
    }
}

/** Running (zombies count as gone) and, if given, named `comm` (guards against PID reuse). */
function alive(pid: number, comm?: string): boolean {
    try {
        const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
        const m = /^\d+ \((.*)\) (\S)/s.exec(stat);
        if (!m || m[2] === "Z" || m[2] === "X") return false;
        return comm === undefined || m[1] === comm;
    } catch {
        return false;
    }
}

function startTime(pid: number): string | undefined {
    try {
        const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
        return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
    } catch {
        return undefined;
    }
}

// ------------------------------------------ cleanup when the test process dies

function writeOwner(state: BenchState): void {
    const owner = { pid: process.pid, start: startTime(process.pid), netns: state.netns };
    fs.writeFileSync(path.join(state.dir, "owner.json"), JSON.stringify(owner));
}

/** Synchronous, best effort: for the 'exit' handler and for stale benches. */
function teardownSync(state: { netns: string; dir: string }): void {
    for (const daemon of ["libvirtd", "virtlogd"]) {
        const pid = readPid(state.dir, daemon);
        if (pid !== undefined && alive(pid, daemon)) signal(pid, "SIGKILL");
    }
    if (fs.existsSync(`/run/netns/${state.netns}`)) {
        const r = spawnSync("ip", ["netns", "pids", state.netns], { encoding: "utf8", timeout: 10_000 });
        for (const p of (r.stdout ?? "").split(/\s+/).filter(Boolean).map(Number)) {
            if (p > 1 && p !== process.pid) signal(p, "SIGKILL");
        }
        // Give the kernel a moment to reap before the namespace goes.
        spawnSync("sleep", ["0.3"], { timeout: 5_000 });
        spawnSync("ip", ["netns", "delete", state.netns], { timeout: 10_000 });
    }
    try {
        fs.rmSync(state.dir, { recursive: true, force: true });
    } catch {
        /* best effort */
    }
}

/** Tears down benches left by test processes that no longer exist. */
function reapStaleBenches(log: (line: string) => void): void {
    let entries: string[] = [];
    try {
        entries = fs.readdirSync(BASE_DIR).filter((e) => e.startsWith(DIR_PREFIX));
    } catch {
        return;
    }
    for (const entry of entries) {
        const dir = path.join(BASE_DIR, entry);
        let owner: { pid: number; start?: string; netns: string };
        try {
            owner = JSON.parse(fs.readFileSync(path.join(dir, "owner.json"), "utf8"));
        } catch {
            continue; // being created, or not ours
        }
        if (!/^nxs-[0-9a-f]+$/.test(owner.netns)) continue;
        if (alive(owner.pid) && startTime(owner.pid) === owner.start) continue;
        log(`bench: reaping stale bench ${owner.netns} of dead process ${owner.pid}`);
        teardownSync({ netns: owner.netns, dir });
    }
}

let exitHandlerRegistered = false;

function registerExitHandler(): void {
    if (exitHandlerRegistered) return;
    exitHandlerRegistered = true;
    // Jest hands test code a copy of `process` whose 'exit' never fires; the
    // real one is the main context's global.
    const realProcess = vm.runInThisContext("process") as NodeJS.Process;
    realProcess.on("exit", () => {
        for (const state of live.values()) teardownSync(state);
        live.clear();
    });
}
