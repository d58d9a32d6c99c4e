// "Nodes" on loopback addresses for tests that need the nodes to reach a
// Spark that runs on loopback (tests/helpers/sparkLocal.ts: master on
// 127.0.0.1, workers on 127.0.0.2, 127.0.0.3, ...): each node is a real sshd
// listening on its own loopback address (all of 127.0.0.0/8 is loopback on
// Linux; nothing leaves the machine), all on one port as the stack's ssh
// output has it, in its own mount namespace, where the test mounts what the node's filesystem has at
// the paths the CLI uses on a NixOS node: /run/current-system/sw/bin/... on
// a /run of the node's own (a tmpfs), and directories bound to the paths the
// node's units use (e.g. the Spark worker's work directory /var/lib/spark).
// This machine's /run and /var are never touched: unshare makes the mounts
// private to the node's namespace.
//
// Root logs in with the test's key. Cleanup kills each sshd by its PID (the
// mount namespaces go with it) and removes the temporary directory, from the
// test's afterAll and, as a last resort, on process exit.
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { ChildProcess, spawn } from "node:child_process";
import { run } from "../../providers/run";
import { stopChild } from "./processes";
import { ensureTools } from "./sshTarget";

const SSHD = "/usr/sbin/sshd";

export interface LoopbackNode {
    name: string;
    ip: string;
    sshd?: ChildProcess;
    exited?: Promise<void>;
}

export interface NodeFiles {
    /** Files to create in the node's own /run (path under /run -> content and mode). */
    run?: Record<string, { content: string; mode: number }>;
    /** Host directories to bind at a path of the node (its own tmpfs is mounted on the path's parent). */
    binds?: Record<string, string>;
}

export class LoopbackNodes {
    readonly dir: string;
    readonly identityFile: string;
    readonly knownHostsFile: string;
    readonly nodes: LoopbackNode[] = [];
    private cleaned = false;
    private readonly exitHook = () => this.cleanupSync();

    private constructor(readonly port: number) {
        this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "nxloop-nodes-"));
        fs.chmodSync(this.dir, 0o700);
        this.identityFile = path.join(this.dir, "id_ed25519");
        this.knownHostsFile = path.join(this.dir, "known_hosts");
        process.once("exit", this.exitHook);
    }

    /** Starts one sshd per node (name and loopback address); cleans up what it made when anything fails. */
    static async create(specs: { name: string; ip: string }[], opts: { env?: Record<string, string> } = {}): Promise<LoopbackNodes> {
        await ensureTools();
        for (const s of specs) if (!/^127\.\d+\.\d+\.\d+$/.test(s.ip)) throw new Error(`${s.name}: ${s.ip} is not a loopback address`);
        const env = new LoopbackNodes(await freeOnAll(specs.map((s) => s.ip)));
        try {
            await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nixspark-loopback-test", "-f", env.identityFile]);
            fs.writeFileSync(path.join(env.dir, "authorized_keys"), fs.readFileSync(`${env.identityFile}.pub`), { mode: 0o600 });
            for (const s of specs) {
                const node: LoopbackNode = { name: s.name, ip: s.ip };
                env.nodes.push(node);
                await env.startNode(node, opts.env ?? {});
            }
        } catch (e) {
            await env.cleanup();
            throw e;
        }
        return env;
    }

    /** `env`: variables every session on the node gets (as a NixOS login environment has SPARK_CONF_DIR). */
    private async startNode(node: LoopbackNode, env: Record<string, string>): Promise<void> {
        const hostKey = path.join(this.dir, `host-${node.name}`);
        await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", `host-${node.name}`, "-f", hostKey]);
        const pub = fs.readFileSync(`${hostKey}.pub`, "utf8").trim().split(/\s+/).slice(0, 2).join(" ");
        fs.appendFileSync(this.knownHostsFile, `[${node.ip}]:${this.port} ${pub}\n`);
        const cfg = path.join(this.dir, `sshd-${node.name}.conf`);
        fs.writeFileSync(
            cfg,
            [
                `Port ${this.port}`,
                `ListenAddress ${node.ip}`,
                `HostKey ${hostKey}`,
                `PidFile ${path.join(this.dir, `sshd-${node.name}.pid`)}`,
                `AuthorizedKeysFile ${path.join(this.dir, "authorized_keys")}`,
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PrintMotd no",
                "Subsystem sftp internal-sftp",
                `SetEnv PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${Object.entries(env).map(([k, v]) => ` ${k}=${v}`).join("")}`,
                "",
            ].join("\n"),
        );
        await run([SSHD, "-t", "-f", cfg]);
        const log = fs.openSync(path.join(this.dir, `sshd-${node.name}.log`), "a");
        // unshare without --fork execs in place: the child's PID is sshd's. Its mounts are private (unshare's default propagation).
        const child = spawn("unshare", ["--mount", SSHD, "-D", "-e", "-f", cfg], { stdio: ["ignore", log, log] });
        fs.closeSync(log);
        node.sshd = child;
        node.exited = new Promise((resolve) => child.once("exit", () => resolve()));
        const deadline = Date.now() + 30_000;
        while (!(await portOpen(node.ip, this.port))) {
            if (child.exitCode !== null || Date.now() > deadline) {
                throw new Error(`sshd did not come up for ${node.name}:\n${fs.readFileSync(path.join(this.dir, `sshd-${node.name}.log`), "utf8")}`);
            }
            await new Promise((r) => setTimeout(r, 100));
        }
    }

    /**
     * Gives a node its own /run (a tmpfs with sshd's privilege-separation
     * directory) holding `files.run`, and binds `files.binds` (a tmpfs on
     * each bind path's parent first, so no directory is made on this machine).
     */
    async provide(name: string, files: NodeFiles): Promise<void> {
        const pid = String(this.node(name).sshd?.pid);
        const inNode = (argv: string[]) => run(["nsenter", "-t", pid, "--mount", "--", ...argv]);
        if (files.run) {
            await inNode(["mount", "-t", "tmpfs", "-o", "size=4m,mode=755", `nxloop-run-${name}`, "/run"]);
            await inNode(["install", "-d", "-m", "755", "/run/sshd"]);
            for (const [dest, f] of Object.entries(files.run)) {
                if (!dest.startsWith("/run/")) throw new Error(`${dest} is not under /run`);
                const src = path.join(this.dir, `file-${name}-${path.basename(dest)}`);
                fs.writeFileSync(src, f.content);
                await inNode(["install", "-D", "-m", f.mode.toString(8), src, dest]);
            }
        }
        for (const [dest, src] of Object.entries(files.binds ?? {})) {
            const parent = path.dirname(dest);
            await inNode(["mount", "-t", "tmpfs", "-o", "size=1m,mode=755", `nxloop-${name}`, parent]);
            await inNode(["install", "-d", "-m", "755", dest]);
            await inNode(["mount", "--bind", src, dest]);
        }
    }

    node(name: string): LoopbackNode {
        const n = this.nodes.find((x) => x.name === name);
        if (!n) throw new Error(`no test node ${name}`);
        return n;
    }

    async cleanup(): Promise<void> {
        if (this.cleaned) return;
        for (const node of this.nodes) {
            await stopChild(node.sshd, node.exited);
        }
        fs.rmSync(this.dir, { recursive: true, force: true });
        this.cleaned = true;
        process.removeListener("exit", this.exitHook);
    }

    private cleanupSync(): void {
        if (this.cleaned) return;
        this.cleaned = true;
        for (const node of this.nodes) {
            if (node.sshd?.pid !== undefined) {
                try {
                    process.kill(node.sshd.pid, "SIGKILL");
                } catch {
                    /* gone */
                }
            }
        }
        fs.rmSync(this.dir, { recursive: true, force: true });
    }
}

/** A port free on every one of the addresses (tried a few times). */
async function freeOnAll(ips: string[]): Promise<number> {
    for (let attempt = 0; attempt < 20; attempt++) {
        const port = 20000 + Math.floor(Math.random() * 20000);
        let ok = true;
        for (const ip of ips) if (!(await canListen(ip, port))) ok = false;
        if (ok) return port;
    }
    throw new Error(`no port free on all of ${ips.join(", ")}`);
}

function canListen(host: string, port: number): Promise<boolean> {
    return new Promise((resolve) => {
        const s = net.createServer();
        s.once("error", () => resolve(false));
        s.listen(port, host, () => s.close(() => resolve(true)));
    });
}

function portOpen(host: string, port: number): Promise<boolean> {
    return new Promise((resolve) => {
        const s = net.connect({ host, port, timeout: 1000 });
        const done = (ok: boolean) => {
            s.destroy();
            resolve(ok);
        };
        s.once("connect", () => done(true));
        s.once("error", () => done(false));
        s.once("timeout", () => done(false));
    });
}
