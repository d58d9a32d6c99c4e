// Reads and validates the whole stack configuration before any resource is
// registered, so a bad config stops `pulumi preview` with one clear line per
// problem and leaves the stack empty.
import * as pulumi from "@pulumi/pulumi";
import { checkConfig, ClusterConfig, ConfigError, rawFromPulumiConfig, workerMemoryProblems } from "./config";
import { buildTopology, capacity, defaultBridge, Topology, TopologyError } from "./topology";
import { conflictingRoutes, defaultCidr, HostRoute, hostRoutes } from "./subnet";

/**
 * Refuses a cluster subnet that a host route other than the stack's own
 * bridge already covers: the network would fail to start after the pool and
 * volumes were created, or the VMs would shadow part of the host's network.
 */
export function checkSubnetFree(config: Pick<ClusterConfig, "network">, topology: Pick<Topology, "stack" | "cidr" | "bridge">, routes: HostRoute[]): void {
    const clash = conflictingRoutes(topology.cidr, topology.bridge, routes);
    if (clash.length === 0) return;
    const which = config.network.cidr ? "nixspark:network.cidr" : `nixspark:network.cidr (not set: the default for stack "${topology.stack}")`;
    const routesText = clash.map((r) => `${r.cidr} on ${r.iface}`).join(", ");
    throw new TopologyError(
        `${which} is ${topology.cidr}, which this host already routes (${routesText}); another libvirt network or host network uses it. ` +
            `Set a free subnet: pulumi config set --path network.cidr 10.<n>.<m>.0/24`,
    );
}

/**
 * The whole config, checked in one round: the schema and its cross-section
 * rules, whether Spark can place an executor on a worker, the topology and
 * the subnet against the host's routes. Every problem is collected (a check
 * is left out only when a section it reads is itself invalid) and the program
 * stops once, listing them all.
 */
export function loadStackConfig(
    stack: string,
    all: Record<string, string>,
    routes: HostRoute[] = hostRoutes(),
): { config: ClusterConfig; topology: Topology } {
    // No fix command prints the value of a key Pulumi holds as a secret.
    // (runtime.isConfigSecret is in the SDK's JavaScript but not its typings.)
    const isConfigSecret = (pulumi.runtime as unknown as { isConfigSecret?: (k: string) => boolean }).isConfigSecret;
    const { config, problems, invalid } = checkConfig(rawFromPulumiConfig(all), { isSecret: (k) => isConfigSecret?.(`nixspark:${k}`) ?? false });
    const valid = (...sections: string[]) => sections.every((s) => !invalid.has(s));
    if (valid("workers", "spark", "health")) problems.push(...workerMemoryProblems(config));
    const topologyError = (e: unknown) => {
        if (!(e instanceof TopologyError)) throw e;
        problems.push(e.message);
    };
    let topology: Topology | undefined;
    if (valid("network", "master", "workers", "storage")) {
        try {
            topology = buildTopology(stack, config);
        } catch (e) {
            topologyError(e);
        }
    }
    // The subnet depends on the stack and nixspark:network alone: checked even
    // when another section (or the topology) has a problem of its own.
    const subnet = topology ?? (valid("network") ? clusterSubnet(stack, config) : undefined);
    if (subnet) {
        try {
            checkSubnetFree(config, subnet, routes);
        } catch (e) {
            topologyError(e);
        }
    }
    const lines = [...new Set(problems)];
    // RunError: Pulumi prints the message alone, without a stack trace.
    if (lines.length > 0 || !topology) throw new pulumi.RunError(new ConfigError(lines).message);
    return { config, topology };
}

/** The stack's subnet and bridge without the rest of the topology; undefined when nixspark:network.cidr is no subnet (its own error says so). */
function clusterSubnet(stack: string, config: ClusterConfig): Pick<Topology, "stack" | "cidr" | "bridge"> | undefined {
    const cidr = config.network.cidr ?? defaultCidr(stack);
    try {
        capacity(cidr);
    } catch {
        return undefined;
    }
    return { stack, cidr, bridge: config.network.bridge ?? defaultBridge(stack) };
}

/** Where the program keeps per-stack files (known hosts, GC roots): <project>/.nixspark/<stack>. */
export function stackStateDir(stack: string, base: string = process.cwd()): string {
    const path = require("node:path") as typeof import("node:path");
    return path.resolve(base, ".nixspark", stack);
}

function expandHome(p: string): string {
    const os = require("node:os") as typeof import("node:os");
    return p === "~" ? os.homedir() : p.startsWith("~/") ? `${os.homedir()}/${p.slice(2)}` : p;
}

/** The stack's own deploy key, used when nixspark:ssh.privateKeyPath names none. */
export function stackDeployKey(stateDir: string): string {
    const path = require("node:path") as typeof import("node:path");
    return path.join(stateDir, "deploy_ed25519");
}

/**
 * Makes the stack's deploy key if it is missing: ed25519, no passphrase
 * (deployments run unattended, BatchMode), private half 0600 in a 0700
 * directory. ssh-keygen writes both halves; nothing else of the user's is
 * touched.
 */
export function ensureDeployKey(file: string, comment: string): void {
    const fs = require("node:fs") as typeof import("node:fs");
    const path = require("node:path") as typeof import("node:path");
    const { execFileSync } = require("node:child_process") as typeof import("node:child_process");
    if (fs.existsSync(file) && fs.existsSync(`${file}.pub`)) return;
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    fs.rmSync(file, { force: true });
    fs.rmSync(`${file}.pub`, { force: true });
    try {
        execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", file], { timeout: 30_000, stdio: ["ignore", "ignore", "pipe"] });
    } catch (e) {
        const err = e as { stderr?: Buffer; message: string };
        throw new Error(`could not make the stack's deploy key ${file} with ssh-keygen (install OpenSSH, or set nixspark:ssh.privateKeyPath): ${err.stderr?.toString().trim() || err.message}`);
    }
    fs.chmodSync(file, 0o600);
}

/**
 * The SSH material of a stack: the private key (absolute), its public key
 * (nixspark:ssh.publicKey, else the key file's .pub next to it; needed only
 * to build the image) and the stack's known-hosts file.
 *
 * Without nixspark:ssh.privateKeyPath the stack uses its own deploy key
 * (.nixspark/<stack>/deploy_ed25519, made here on first use), so a fresh
 * stack needs no key of the user's and the nodes trust nothing else. A stack
 * deployed before there were per-stack keys (it has a known-hosts file but
 * no deploy key) keeps the old default ~/.ssh/id_ed25519 while that exists:
 * its running nodes only let that key in. `keySource` says which it is.
 */
export function resolveSsh(
    cfg: ClusterConfig,
    stateDir: string,
    stack = "nixspark",
    home: string = (require("node:os") as typeof import("node:os")).homedir(),
): { identityFile: string; publicKey?: string; knownHostsFile: string; keySource: "configured" | "stack" | "legacy-default" } {
    const fs = require("node:fs") as typeof import("node:fs");
    const path = require("node:path") as typeof import("node:path");
    const knownHostsFile = path.join(stateDir, "known_hosts");
    let identityFile: string;
    let keySource: "configured" | "stack" | "legacy-default";
    const legacy = path.join(home, ".ssh", "id_ed25519");
    const stackKey = stackDeployKey(stateDir);
    if (cfg.ssh.privateKeyPath) {
        identityFile = path.resolve(expandHome(cfg.ssh.privateKeyPath));
        keySource = "configured";
    } else if (!fs.existsSync(stackKey) && fs.existsSync(knownHostsFile) && fs.statSync(knownHostsFile).size > 0 && fs.existsSync(legacy)) {
        identityFile = legacy;
        keySource = "legacy-default";
    } else {
        ensureDeployKey(stackKey, `nixspark-${stack}`);
        identityFile = stackKey;
        keySource = "stack";
    }
    let publicKey = cfg.ssh.publicKey;
    if (!publicKey && fs.existsSync(`${identityFile}.pub`)) publicKey = fs.readFileSync(`${identityFile}.pub`, "utf8").trim();
    return { identityFile, publicKey, knownHostsFile, keySource };
}
