// Reads and validates the whole stack configuration before any resource is
// registered, so a bad config stops `pulumi preview` with one clear line per
// problem and leaves the stack empty.
import * as pulumi from "@pulumi/pulumi";
import { ClusterConfig, ConfigError, parseConfig, rawFromPulumiConfig } from "./config";
import { buildTopology, Topology, TopologyError } from "./topology";
import { conflictingRoutes, HostRoute, hostRoutes } from "./subnet";

/**
 * Refuses a cluster subnet that a host route other than the stack's own
 * bridge already covers: the network would fail to start after the pool and
 * volumes were created, or the VMs would shadow part of the host's network.
 */
export function checkSubnetFree(config: ClusterConfig, topology: Topology, routes: HostRoute[]): void {
    const clash = conflictingRoutes(topology.cidr, topology.bridge, routes);
    if (clash.length === 0) return;
    const which = config.network.cidr ? "nixspark:network.cidr" : `nixspark:network.cidr (not set: the default for stack "${topology.stack}")`;
    const routesText = clash.map((r) => `${r.cidr} on ${r.iface}`).join(", ");
    throw new TopologyError(
        `${which} is ${topology.cidr}, which this host already routes (${routesText}); another libvirt network or host network uses it. ` +
            `Set a free subnet: pulumi config set --path network.cidr 10.<n>.<m>.0/24`,
    );
}

export function loadStackConfig(
    stack: string,
    all: Record<string, string>,
    routes: HostRoute[] = hostRoutes(),
): { config: ClusterConfig; topology: Topology } {
    try {
        const config = parseConfig(rawFromPulumiConfig(all));
        const topology = buildTopology(stack, config);
        checkSubnetFree(config, topology, routes);
        return { config, topology };
    } catch (e) {
        if (e instanceof ConfigError || e instanceof TopologyError) {
            const message = e instanceof TopologyError ? `invalid stack configuration:\n  ${e.message}` : e.message;
            // RunError: Pulumi prints the message alone, without a stack trace.
            throw new pulumi.RunError(message);
        }
        throw e;
    }
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

/**
 * The SSH material of a stack: the private key (absolute), its public key
 * (nixspark:ssh.publicKey, else the key file's .pub next to it; needed only
 * to build the image) and the stack's known-hosts file.
 */
export function resolveSsh(cfg: ClusterConfig, stateDir: string): { identityFile: string; publicKey?: string; knownHostsFile: string } {
    const fs = require("node:fs") as typeof import("node:fs");
    const path = require("node:path") as typeof import("node:path");
    const identityFile = path.resolve(expandHome(cfg.ssh.privateKeyPath));
    let publicKey = cfg.ssh.publicKey;
    if (!publicKey && fs.existsSync(`${identityFile}.pub`)) publicKey = fs.readFileSync(`${identityFile}.pub`, "utf8").trim();
    return { identityFile, publicKey, knownHostsFile: path.join(stateDir, "known_hosts") };
}
