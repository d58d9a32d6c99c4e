// The firewall contract, executed: the iptables rules the master role's
// evaluation generates (networking.firewall.extraCommands, from the stack
// settings the program writes) are applied in a network namespace this test
// creates, inside a minimal nixos-fw chain as nixpkgs' iptables firewall
// builds it (nixos/modules/services/networking/firewall-iptables.nix: INPUT
// jumps to nixos-fw; loopback and established traffic are accepted; the
// extra commands run; everything else is refused). Then real TCP probes from
// a second namespace, from an address inside the node block, one in the
// DHCP pool above it, and the host's gateway address.
import { randomBytes } from "node:crypto";
import { parseConfig } from "../../cluster/config";
import { buildTopology } from "../../cluster/topology";
import { nixStackParams } from "../../cluster/nixParams";
import { run } from "../../providers/run";
import { evalAttr, removeContractDirs, stackFlake } from "../helpers/nixContract";

jest.setTimeout(120_000);

const id = randomBytes(3).toString("hex");
const NODE_NS = `nxs-fwn-${id}`;
const PEER_NS = `nxs-fwp-${id}`;
const created: string[] = [];
let listener: { pid: number; kill: () => void } | undefined;
let rules: string;

const cfg = parseConfig({ workers: { count: 2 }, network: { cidr: "10.77.0.0/24" }, ssh: { publicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFirewallFirewallFirewallFirewallFirewall00 fw" } });
const topo = buildTopology("fw", cfg);
const MASTER = topo.master.ip; // 10.77.0.10
const INSIDE = topo.workers[0].ip; // a node
const POOL = topo.dhcpRange.start; // a DHCP lease, not a node
const GATEWAY = topo.gateway;
const PORTS = [7077, 7078, 8080, 8081, 18080, 7100, 7200, 9999];

const inNs = (ns: string, argv: string[]) => run(["ip", "netns", "exec", ns, ...argv], { timeoutMs: 20_000 });

beforeAll(async () => {
    rules = evalAttr<string>(stackFlake(nixStackParams(cfg, topo)), "nixosConfigurations.fw-master.config.networking.firewall.extraCommands");
    expect(rules).toContain("iptables -A nixos-fw");
    for (const ns of [NODE_NS, PEER_NS]) {
        await run(["ip", "netns", "add", ns], { timeoutMs: 10_000 });
        created.push(ns);
    }
    await run(["ip", "link", "add", "fwn0", "netns", NODE_NS, "type", "veth", "peer", "name", "fwp0", "netns", PEER_NS], { timeoutMs: 10_000 });
    await inNs(NODE_NS, ["ip", "addr", "add", `${MASTER}/24`, "dev", "fwn0"]);
    for (const a of [INSIDE, POOL, GATEWAY]) await inNs(PEER_NS, ["ip", "addr", "add", `${a}/24`, "dev", "fwp0"]);
    for (const ns of [NODE_NS, PEER_NS]) {
        await inNs(ns, ["ip", "link", "set", "lo", "up"]);
        await inNs(ns, ["ip", "link", "set", ns === NODE_NS ? "fwn0" : "fwp0", "up"]);
    }
    // The firewall around the generated rules, as nixpkgs' iptables backend sets it up.
    const frame: string[][] = [
        ["-N", "nixos-fw-accept"],
        ["-A", "nixos-fw-accept", "-j", "ACCEPT"],
        ["-N", "nixos-fw-refuse"],
        ["-A", "nixos-fw-refuse", "-j", "DROP"],
        ["-N", "nixos-fw"],
        ["-A", "nixos-fw", "-i", "lo", "-j", "nixos-fw-accept"],
        ["-A", "nixos-fw", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "nixos-fw-accept"],
        ["-A", "INPUT", "-j", "nixos-fw"],
    ];
    for (const r of frame) await inNs(NODE_NS, ["iptables", "-w", ...r]);
    // The generated commands, run by a shell as the firewall's start script runs them.
    await inNs(NODE_NS, ["env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "bash", "-euc", rules]);
    await inNs(NODE_NS, ["iptables", "-w", "-A", "nixos-fw", "-j", "nixos-fw-refuse"]);
    // Something listening on each port on the node.
    const { spawn } = require("node:child_process") as typeof import("node:child_process");
    const server = `import socket, select\nss=[]\nfor p in ${JSON.stringify(PORTS)}:\n    s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("${MASTER}", p)); s.listen(16); ss.append(s)\nprint("ready", flush=True)\nwhile True:\n    r,_,_=select.select(ss,[],[])\n    for s in r:\n        c,_=s.accept(); c.close()\n`;
    const child = spawn("ip", ["netns", "exec", NODE_NS, "python3", "-c", server], { stdio: ["ignore", "pipe", "inherit"] });
    listener = { pid: child.pid!, kill: () => child.kill("SIGKILL") };
    await new Promise<void>((resolve, reject) => {
        child.stdout!.on("data", (d: Buffer) => (d.toString().includes("ready") ? resolve() : undefined));
        child.on("exit", (code) => reject(new Error(`the listener exited with ${code}`)));
    });
});

afterAll(async () => {
    listener?.kill();
    for (const ns of created) await run(["ip", "netns", "delete", ns], { timeoutMs: 10_000, allowFailure: true });
    removeContractDirs();
});

/** Whether a TCP connection from `source` (an address of the peer namespace) to the master's port succeeds within 1.5 s. */
async function reaches(source: string, port: number): Promise<boolean> {
    const probe = `import socket,sys\ns=socket.socket(); s.settimeout(1.5); s.bind(("${source}",0))\ntry:\n    s.connect(("${MASTER}",${port})); print("open")\nexcept Exception as e:\n    print("closed", e)\n`;
    const r = await inNs(PEER_NS, ["python3", "-c", probe]);
    return r.stdout.startsWith("open");
}

test("a node reaches the master's Spark ports, the history server and the driver/block-manager ranges; nothing else", async () => {
    for (const port of [7077, 7078, 8080, 8081, 18080, 7100, 7200]) expect({ port, open: await reaches(INSIDE, port) }).toEqual({ port, open: true });
    expect(await reaches(INSIDE, 9999)).toBe(false);
});

test("an address in the DHCP pool, outside the node block, reaches no Spark port", async () => {
    for (const port of [7077, 7078, 8080, 18080, 7100]) expect({ port, open: await reaches(POOL, port) }).toEqual({ port, open: false });
});

test("with authentication the host's gateway address reaches the submission port and the UIs (the history server's too) only", async () => {
    expect(cfg.security.authenticate).toBe(true);
    for (const port of [7077, 8080, 8081, 18080]) expect({ port, open: await reaches(GATEWAY, port) }).toEqual({ port, open: true });
    for (const port of [7078, 7100]) expect({ port, open: await reaches(GATEWAY, port) }).toEqual({ port, open: false });
});

test("the rules are the firewall's own commands only (no shell built from settings beyond iptables lines)", () => {
    for (const line of rules.split("\n").filter((l) => l.trim())) expect(line).toMatch(/^iptables -A nixos-fw -p tcp (-m iprange --src-range \S+|-s \S+) --dport \d+(:\d+)? -j nixos-fw-accept$/);
});
