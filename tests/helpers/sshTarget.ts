// A real sshd acting as a NixOS deployment target, for provider tests.
//
// Network rule (docs/design.md, Tests and real components): the test creates its own network namespace
// `nxd-<rand>` joined to the root namespace by a veth pair in a random
// 10.x.y.z/30; sshd listens only on the namespace's address, and the provider
// under test connects to that address from the root namespace. Nothing else
// is contacted.
//
// The "node" behind sshd is tests/fixtures/nixos-rebuild-standin/fake-target,
// run as the authorized_keys `command=`: it keeps /run/current-system and the
// system profile under a per-test directory, so the provider runs its real
// commands (`readlink -f /run/current-system`) with no test-only branch, and
// this machine's /run and /nix are never touched.
//
// Cleanup kills sshd by its PID and deletes the namespace (which removes the
// veth pair); it runs from afterAll and, as a last resort, on process exit.
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { ChildProcess, execFileSync, spawn } from "node:child_process";
import { stopChild } from "./processes";
import { run } from "../../providers/run";
import { NixosDeploymentInputs, NixosDeploymentOutputs, nixosDeploymentProvider } from "../../providers/nixosDeployment";

export const STANDIN_DIR = path.resolve(__dirname, "../fixtures/nixos-rebuild-standin");
const FAKE_TARGET = path.join(STANDIN_DIR, "fake-target");
const SSHD = "/usr/sbin/sshd";

/** Installs what the tests need from Debian if it is missing (idempotent). */
export async function ensureTools(): Promise<void> {
    const want: [string, string][] = [
        [SSHD, "openssh-server"],
        ["/usr/bin/ssh", "openssh-client"],
        ["/usr/bin/ssh-keygen", "openssh-client"],
        ["/usr/bin/python3", "python3"],
    ];
    if (!fs.existsSync("/usr/sbin/ip") && !fs.existsSync("/sbin/ip") && !fs.existsSync("/usr/bin/ip")) want.push(["/usr/sbin/ip", "iproute2"]);
    const missing = [...new Set(want.filter(([file]) => !fs.existsSync(file)).map(([, pkg]) => pkg))];
    if (missing.length > 0) {
        const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
        const install = ["apt-get", "install", "-y", "--no-install-recommends", ...missing];
        const first = await run(install, { env, timeoutMs: 600_000, allowFailure: true });
        if (first.code !== 0) {
            await run(["apt-get", "update"], { env, timeoutMs: 600_000 });
            await run(install, { env, timeoutMs: 600_000 });
        }
    }
    // sshd refuses to start without its privilege-separation directory.
    fs.mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });
}

export interface StandinCall {
    argv0: string;
    argv: string[];
    flavour: "legacy" | "ng";
    env: { NIX_SSHOPTS: string | null };
    /** When the stand-in was called, in seconds since the epoch. */
    time: number;
}

export interface RemoteCall {
    words: string[];
    sudo: boolean;
    env: Record<string, string>;
}

export class SshTargetEnv {
    readonly ns: string;
    readonly hostSideIp: string;
    /** The address the provider connects to (inside the namespace). */
    readonly host: string;
    readonly port: number;
    readonly user = "root";
    readonly dir: string;
    readonly identityFile: string;
    readonly knownHostsFile: string;
    /** The fake node's filesystem root. */
    readonly root: string;
    readonly standinLog: string;
    readonly systemsDir: string;
    private readonly vethHost: string;
    private sshd: ChildProcess | undefined;
    private sshdExit: Promise<void> | undefined;
    private cleaned = false;
    private readonly exitHook = () => this.cleanupSync();

    private constructor(id: string, net24: [number, number], quad: number) {
        this.ns = `nxd-${id}`;
        this.vethHost = `nxh${id}`;
        this.hostSideIp = `10.${net24[0]}.${net24[1]}.${quad + 1}`;
        this.host = `10.${net24[0]}.${net24[1]}.${quad + 2}`;
        this.port = 20000 + Math.floor(Math.random() * 20000);
        this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "nxd-"));
        fs.chmodSync(this.dir, 0o700);
        this.identityFile = path.join(this.dir, "id_ed25519");
        this.knownHostsFile = path.join(this.dir, "stack", "known_hosts");
        this.root = path.join(this.dir, "node");
        this.standinLog = path.join(this.dir, "standin.jsonl");
        this.systemsDir = path.join(this.dir, "systems");
        fs.mkdirSync(this.systemsDir);
        process.once("exit", this.exitHook);
    }

    /** Creates the namespace and keys; starts sshd unless told not to. */
    static async create(opts: { startSshd?: boolean } = {}): Promise<SshTargetEnv> {
        await ensureTools();
        const id = Math.random().toString(16).slice(2, 8);
        const routes = (await run(["ip", "-4", "route"])).stdout;
        let a = 0;
        let b = 0;
        do {
            a = 200 + Math.floor(Math.random() * 50);
            b = Math.floor(Math.random() * 256);
        } while (routes.includes(`10.${a}.${b}.`));
        const env = new SshTargetEnv(id, [a, b], 4 * Math.floor(Math.random() * 60));
        try {
            await env.setUpNetwork(id);
            await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nixspark-test-deployer", "-f", env.identityFile]);
            await env.newHostKey();
            env.writeSshdConfig();
            env.resetNode("/nix/store/00000000000000000000000000000000-nixos-system-base-image");
            if (opts.startSshd !== false) await env.startSshd();
        } catch (e) {
            await env.cleanup();
            throw e;
        }
        return env;
    }

    private async setUpNetwork(id: string): Promise<void> {
        const vethNs = `nxn${id}`;
        await run(["ip", "netns", "add", this.ns]);
        await run(["ip", "link", "add", this.vethHost, "type", "veth", "peer", "name", vethNs]);
        await run(["ip", "link", "set", vethNs, "netns", this.ns]);
        await run(["ip", "addr", "add", `${this.hostSideIp}/30`, "dev", this.vethHost]);
        await run(["ip", "link", "set", this.vethHost, "up"]);
        await run(["ip", "netns", "exec", this.ns, "ip", "addr", "add", `${this.host}/30`, "dev", vethNs]);
        await run(["ip", "netns", "exec", this.ns, "ip", "link", "set", vethNs, "up"]);
        await run(["ip", "netns", "exec", this.ns, "ip", "link", "set", "lo", "up"]);
    }

    private async newHostKey(): Promise<void> {
        const key = path.join(this.dir, "host_ed25519");
        fs.rmSync(key, { force: true });
        fs.rmSync(`${key}.pub`, { force: true });
        await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nixspark-test-node", "-f", key]);
    }

    private writeSshdConfig(): void {
        const pub = fs.readFileSync(`${this.identityFile}.pub`, "utf8").trim();
        const command = `/usr/bin/python3 ${FAKE_TARGET} ${this.root}`;
        fs.writeFileSync(
            path.join(this.dir, "authorized_keys"),
            `command="${command}",no-pty,no-port-forwarding,no-agent-forwarding,no-X11-forwarding ${pub}\n`,
            { mode: 0o600 },
        );
        fs.writeFileSync(
            path.join(this.dir, "sshd_config"),
            [
                `Port ${this.port}`,
                `ListenAddress ${this.host}`,
                `HostKey ${path.join(this.dir, "host_ed25519")}`,
                `PidFile ${path.join(this.dir, "sshd.pid")}`,
                `AuthorizedKeysFile ${path.join(this.dir, "authorized_keys")}`,
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PrintMotd no",
                "LogLevel VERBOSE",
                "",
            ].join("\n"),
        );
    }

    /** Starts sshd in the namespace (foreground, -D) and waits until it accepts connections. */
    async startSshd(): Promise<void> {
        if (this.sshd) return;
        const cfg = path.join(this.dir, "sshd_config");
        await run(["ip", "netns", "exec", this.ns, SSHD, "-t", "-f", cfg]);
        const log = fs.openSync(path.join(this.dir, "sshd.log"), "a");
        // `ip netns exec` execs sshd in place, so the child's PID is sshd's.
        const child = spawn("ip", ["netns", "exec", this.ns, SSHD, "-D", "-e", "-f", cfg], { stdio: ["ignore", log, log] });
        fs.closeSync(log);
        this.sshd = child;
        this.sshdExit = new Promise((resolve) => child.once("exit", () => resolve()));
        const deadline = Date.now() + 15_000;
        while (!(await this.portOpen())) {
            if (child.exitCode !== null || Date.now() > deadline) {
                const why = fs.readFileSync(path.join(this.dir, "sshd.log"), "utf8");
                await this.stopSshd();
                throw new Error(`sshd did not come up in ${this.ns}:\n${why}`);
            }
            await new Promise((r) => setTimeout(r, 100));
        }
    }

    private portOpen(): Promise<boolean> {
        return new Promise((resolve) => {
            const s = net.connect({ host: this.host, port: this.port, timeout: 1000 });
            const done = (ok: boolean) => {
                s.destroy();
                resolve(ok);
            };
            s.once("connect", () => done(true));
            s.once("error", () => done(false));
            s.once("timeout", () => done(false));
        });
    }

    /** Stops sshd by its PID. */
    async stopSshd(): Promise<void> {
        const child = this.sshd;
        if (!child || child.pid === undefined) return;
        this.sshd = undefined;
        await stopChild(child, this.sshdExit);
    }

    /** The node gets a new host key, as a re-created VM at the same address would. */
    async rotateHostKey(): Promise<void> {
        const wasRunning = this.sshd !== undefined;
        await this.stopSshd();
        await this.newHostKey();
        if (wasRunning) await this.startSshd();
    }

    /** A freshly booted node: one generation, running `system`. Clears the remote command log. */
    resetNode(system: string): void {
        fs.rmSync(this.root, { recursive: true, force: true });
        const profiles = path.join(this.root, "nix/var/nix/profiles");
        fs.mkdirSync(profiles, { recursive: true });
        fs.mkdirSync(path.join(this.root, "run"), { recursive: true });
        fs.symlinkSync(system, path.join(profiles, "system-1-link"));
        fs.symlinkSync("system-1-link", path.join(profiles, "system"));
        fs.symlinkSync(system, path.join(this.root, "run/current-system"));
        fs.writeFileSync(path.join(this.root, "commands.log"), "");
    }

    /** What the node runs (its /run/current-system). */
    currentSystem(): string {
        return fs.readlinkSync(path.join(this.root, "run/current-system"));
    }

    /** The system profile's generation link, e.g. "system-2-link". */
    profileLink(): string {
        return fs.readlinkSync(path.join(this.root, "nix/var/nix/profiles/system"));
    }

    /** Switches the node behind the provider's back (as `nixos-rebuild switch` run by hand would). */
    switchByHand(system: string): void {
        const profiles = path.join(this.root, "nix/var/nix/profiles");
        const n = fs.readdirSync(profiles).filter((f) => /^system-\d+-link$/.test(f)).length + 1;
        fs.symlinkSync(system, path.join(profiles, `system-${n}-link`));
        fs.rmSync(path.join(profiles, "system"));
        fs.symlinkSync(`system-${n}-link`, path.join(profiles, "system"));
        fs.rmSync(path.join(this.root, "run/current-system"));
        fs.symlinkSync(system, path.join(this.root, "run/current-system"));
    }

    /** `systemctl kill --kill-whom=main ... <unit>` on this node signals `pid` (e.g. a loopback Spark worker). */
    setUnitPid(unit: string, pid: number): void {
        fs.mkdirSync(path.join(this.root, "units"), { recursive: true });
        fs.writeFileSync(path.join(this.root, "units", `${unit}.pid`), `${pid}\n`);
    }

    /** What `journalctl -u <unit> -n N --no-pager` prints on this node. */
    setJournal(unit: string, lines: string[]): void {
        fs.mkdirSync(path.join(this.root, "units"), { recursive: true });
        fs.writeFileSync(path.join(this.root, "units", `${unit}.journal`), lines.map((l) => `${l}\n`).join(""));
    }

    /** Activating `system` on this node runs `argv` (on this machine, with a 30 s timeout), e.g. ["kill", "-STOP", pid]. */
    onSwitch(system: string, argv: string[]): void {
        const file = path.join(this.root, "on-switch.json");
        const hooks = fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, "utf8")) as Record<string, string[]>) : {};
        hooks[system] = argv;
        fs.writeFileSync(file, JSON.stringify(hooks));
    }

    /** Commands the node received over SSH, in order. */
    /** The next `times` remote commands with exactly these words fail (exit 255, as a dropped connection). */
    failOnce(words: string[], times = 1): void {
        fs.writeFileSync(path.join(this.root, "fail-once.json"), JSON.stringify({ words, times }));
    }

    remoteCalls(): RemoteCall[] {
        return readJsonLines(path.join(this.root, "commands.log")) as RemoteCall[];
    }

    /** nixos-rebuild invocations the stand-in recorded, in order (flavour probes included). */
    /** NixosDeployment inputs that reach this target as node worker-1 (tests override what they vary). */
    deploymentInputs(over: Partial<NixosDeploymentInputs> = {}): NixosDeploymentInputs {
        return {
            node: "worker-1",
            flake: "path:./nix",
            configuration: "dev-worker",
            host: this.host,
            sshUser: this.user,
            sshPort: this.port,
            identityFile: this.identityFile,
            knownHostsFile: this.knownHostsFile,
            expectedSystem: "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-dev-worker-24.11",
            useSudo: true,
            rebuildCommand: "nixos-rebuild",
            flavour: "auto",
            sshWaitSeconds: 20,
            switchTimeoutSeconds: 60,
            ...over,
        };
    }

    /** The stand-in's recorded `switch` invocations. */
    switches(): StandinCall[] {
        return this.standinCalls().filter((c) => c.argv[0] === "switch");
    }

    standinCalls(): StandinCall[] {
        return readJsonLines(this.standinLog) as StandinCall[];
    }

    clearStandinLog(): void {
        fs.rmSync(this.standinLog, { force: true });
    }

    /** Makes the stand-in install `system` for nixosConfigurations.<configuration>. */
    setSystem(configuration: string, system: string): void {
        fs.writeFileSync(path.join(this.systemsDir, configuration), `${system}\n`);
    }

    /**
     * Environment for the provider under test: the stand-in first on PATH and
     * its recording variables. Returns a function that restores process.env.
     */
    useStandin(extra: Record<string, string | undefined> = {}): () => void {
        const saved = { ...process.env };
        process.env.PATH = `${STANDIN_DIR}:${process.env.PATH ?? "/usr/bin:/bin"}`;
        process.env.NIXSPARK_STANDIN_LOG = this.standinLog;
        process.env.NIXSPARK_STANDIN_SYSTEMS = this.systemsDir;
        for (const [k, v] of Object.entries(extra)) {
            if (v === undefined) delete process.env[k];
            else process.env[k] = v;
        }
        return () => {
            for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
            Object.assign(process.env, saved);
        };
    }

    /** Kills sshd, deletes the namespace (and with it the veth pair) and the temporary files. */
    async cleanup(): Promise<void> {
        if (this.cleaned) return;
        try {
            await this.stopSshd();
        } finally {
            await run(["ip", "netns", "del", this.ns], { allowFailure: true });
            await run(["ip", "link", "del", this.vethHost], { allowFailure: true }); // normally gone with the namespace
            fs.rmSync(this.dir, { recursive: true, force: true });
            this.cleaned = true;
            process.removeListener("exit", this.exitHook);
        }
    }

    /** Last resort when the test process exits without afterAll. */
    private cleanupSync(): void {
        if (this.cleaned) return;
        this.cleaned = true;
        const pid = this.sshd?.pid;
        if (pid !== undefined) {
            try {
                process.kill(pid, "SIGKILL");
            } catch {
                /* gone */
            }
        }
        for (const argv of [["ip", "netns", "del", this.ns], ["ip", "link", "del", this.vethHost]]) {
            try {
                execFileSync(argv[0], argv.slice(1), { stdio: "ignore", timeout: 10_000 });
            } catch {
                /* already gone */
            }
        }
        fs.rmSync(this.dir, { recursive: true, force: true });
    }
}

function readJsonLines(file: string): unknown[] {
    if (!fs.existsSync(file)) return [];
    return fs
        .readFileSync(file, "utf8")
        .split("\n")
        .filter((l) => l.trim() !== "")
        .map((l) => JSON.parse(l));
}

/** The provider's create, typed for tests. */
export async function createDeployment(inp: NixosDeploymentInputs): Promise<NixosDeploymentOutputs> {
    return (await nixosDeploymentProvider.create!(inp as unknown as Record<string, unknown>)).outs as NixosDeploymentOutputs;
}
