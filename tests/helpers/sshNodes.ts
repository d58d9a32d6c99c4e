// Several "nodes" for the nixspark CLI's tests: each a real sshd in a network
// namespace the test creates, in its own UTS namespace (its own hostname, so
// `uname -n` tells the nodes apart) and its own mount namespace with a
// private tmpfs at `view` (so a file copied to one node is not on another).
// Root logs in with the test's key; the shell is the machine's real one.
//
// Network rule (docs/design.md, Tests and real components): each namespace is joined to the root namespace by
// a veth pair in a random 10.x.y.z/30; sshd listens only on the namespace's
// address. Cleanup kills each sshd by its PID and deletes the namespaces
// (with their veth pairs) and the temporary directory, from afterAll and, as
// a last resort, on process exit.
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { ChildProcess, execFileSync, spawn } from "node:child_process";
import { run } from "../../providers/run";
import { stopChild } from "./processes";
import { ensureTools } from "./sshTarget";

const SSHD = "/usr/sbin/sshd";

export interface SshNode {
    name: string;
    ns: string;
    vethHost: string;
    ip: string;
    sshd?: ChildProcess;
    exited?: Promise<void>;
}

export class SshNodes {
    readonly dir: string;
    readonly port = 20000 + Math.floor(Math.random() * 20000);
    readonly identityFile: string;
    readonly knownHostsFile: string;
    /** Put first on every node's PATH (stand-ins such as journalctl). */
    readonly binDir: string;
    /** A directory each node sees as its own empty tmpfs. */
    readonly view: string;
    readonly nodes: SshNode[] = [];
    private cleaned = false;
    private readonly exitHook = () => this.cleanupSync();

    private constructor() {
        this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "nxcli-nodes-"));
        fs.chmodSync(this.dir, 0o700);
        this.identityFile = path.join(this.dir, "id_ed25519");
        this.knownHostsFile = path.join(this.dir, "known_hosts");
        this.binDir = path.join(this.dir, "bin");
        this.view = path.join(this.dir, "view");
        fs.mkdirSync(this.binDir);
        fs.mkdirSync(this.view);
        process.once("exit", this.exitHook);
    }

    /** Starts one sshd per name; cleans up what it made when anything fails. */
    static async create(names: string[]): Promise<SshNodes> {
        await ensureTools();
        const env = new SshNodes();
        try {
            await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nixspark-cli-test", "-f", env.identityFile]);
            const routes = (await run(["ip", "-4", "route"])).stdout;
            const id = Math.random().toString(16).slice(2, 7);
            for (const [i, name] of names.entries()) {
                let a = 0;
                let b = 0;
                do {
                    a = 200 + Math.floor(Math.random() * 50);
                    b = Math.floor(Math.random() * 256);
                } while (routes.includes(`10.${a}.${b}.`) || env.nodes.some((n) => n.ip.startsWith(`10.${a}.${b}.`)));
                const node: SshNode = { name, ns: `nxc-${id}-${i}`, vethHost: `nxc${id}h${i}`, ip: `10.${a}.${b}.2` };
                env.nodes.push(node);
                await env.startNode(node, `10.${a}.${b}.1`, i);
            }
        } catch (e) {
            await env.cleanup();
            throw e;
        }
        return env;
    }

    private async startNode(node: SshNode, hostSideIp: string, i: number): Promise<void> {
        const vethNs = `nxc${node.ns.slice(4, 9)}n${i}`;
        await run(["ip", "netns", "add", node.ns]);
        await run(["ip", "link", "add", node.vethHost, "type", "veth", "peer", "name", vethNs]);
        await run(["ip", "link", "set", vethNs, "netns", node.ns]);
        await run(["ip", "addr", "add", `${hostSideIp}/30`, "dev", node.vethHost]);
        await run(["ip", "link", "set", node.vethHost, "up"]);
        await run(["ip", "netns", "exec", node.ns, "ip", "addr", "add", `${node.ip}/30`, "dev", vethNs]);
        await run(["ip", "netns", "exec", node.ns, "ip", "link", "set", vethNs, "up"]);
        await run(["ip", "netns", "exec", node.ns, "ip", "link", "set", "lo", "up"]);

        const hostKey = path.join(this.dir, `host-${node.name}`);
        await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", `host-${node.name}`, "-f", hostKey]);
        const pub = fs.readFileSync(`${hostKey}.pub`, "utf8").trim().split(/\s+/).slice(0, 2).join(" ");
        fs.appendFileSync(this.knownHostsFile, `[${node.ip}]:${this.port} ${pub}\n`);
        fs.writeFileSync(path.join(this.dir, "authorized_keys"), fs.readFileSync(`${this.identityFile}.pub`), { mode: 0o600 });
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
                `SetEnv PATH=${this.binDir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
                "",
            ].join("\n"),
        );
        await run(["ip", "netns", "exec", node.ns, SSHD, "-t", "-f", cfg]);
        const log = fs.openSync(path.join(this.dir, `sshd-${node.name}.log`), "a");
        // `ip netns exec` and `unshare` (without --fork) exec in place: the child's PID is sshd's.
        const child = spawn("ip", ["netns", "exec", node.ns, "unshare", "--uts", "--mount", SSHD, "-D", "-e", "-f", cfg], { stdio: ["ignore", log, log] });
        fs.closeSync(log);
        node.sshd = child;
        node.exited = new Promise((resolve) => child.once("exit", () => resolve()));
        const deadline = Date.now() + 15_000;
        while (!(await portOpen(node.ip, this.port))) {
            if (child.exitCode !== null || Date.now() > deadline) {
                throw new Error(`sshd did not come up for ${node.name}:\n${fs.readFileSync(path.join(this.dir, `sshd-${node.name}.log`), "utf8")}`);
            }
            await new Promise((r) => setTimeout(r, 100));
        }
        const pid = String(child.pid);
        await run(["nsenter", "-t", pid, "--uts", "hostname", node.name]);
        await run(["nsenter", "-t", pid, "--mount", "mount", "-t", "tmpfs", "-o", "size=4m", `nxc-${node.name}`, this.view]);
    }

    /**
     * Gives a node a /run of its own (a tmpfs in its mount namespace, with
     * sshd's privilege-separation directory) holding these files, e.g. a
     * stand-in at /run/current-system/sw/bin/spark-submit; this machine's
     * /run is not touched.
     */
    async ownRun(name: string, files: Record<string, { content: string; mode: number }>): Promise<void> {
        const pid = String(this.node(name).sshd?.pid);
        const inNode = (argv: string[]) => run(["nsenter", "-t", pid, "--mount", "--", ...argv]);
        await inNode(["mount", "-t", "tmpfs", "-o", "size=4m,mode=755", `nxc-run-${name}`, "/run"]);
        await inNode(["install", "-d", "-m", "755", "/run/sshd"]);
        for (const [dest, f] of Object.entries(files)) {
            const src = path.join(this.dir, `file-${name}-${path.basename(dest)}`);
            fs.writeFileSync(src, f.content);
            await inNode(["install", "-D", "-m", f.mode.toString(8), src, dest]);
        }
    }

    node(name: string): SshNode {
        const n = this.nodes.find((x) => x.name === name);
        if (!n) throw new Error(`no test node ${name}`);
        return n;
    }

    async cleanup(): Promise<void> {
        if (this.cleaned) return;
        for (const node of this.nodes) {
            await stopChild(node.sshd, node.exited);
            await run(["ip", "netns", "del", node.ns], { allowFailure: true });
            await run(["ip", "link", "del", node.vethHost], { allowFailure: true });
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
            for (const argv of [["ip", "netns", "del", node.ns], ["ip", "link", "del", node.vethHost]]) {
                try {
                    execFileSync(argv[0], argv.slice(1), { stdio: "ignore", timeout: 10_000 });
                } catch {
                    /* already gone */
                }
            }
        }
        fs.rmSync(this.dir, { recursive: true, force: true });
    }
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
