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
    // Target "hosts" (cluster/targets/): no VM sizes and no libvirt subnet to check.
    const libvirt = config.target !== "hosts";
    if (libvirt && valid("workers", "spark", "health")) problems.push(...workerMemoryProblems(config));
    const topologyError = (e: unknown) => {
        if (!(e instanceof TopologyError)) throw e;
        problems.push(e.message);
    };
    let topology: Topology | undefined;
    if (valid("network", "master", "workers", "storage", "libvirt")) {
        try {
            topology = buildTopology(stack, config);
        } catch (e) {
            topologyError(e);
        }
    }
    // The subnet depends on the stack and nixspark:network alone: checked even
    // when another section (or the topology) has a problem of its own.
    const subnet = topology ?? (valid("network") ? clusterSubnet(stack, config) : undefined);
    // Bridge mode's subnet is the shared segment's, which this machine may well route itself (it is on it): no libvirt network is made.
    if (subnet && libvirt && config.network.mode !== "bridge") {
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

/**
 * Where the program keeps per-stack files: <project>/.nixspark/<stack>. A
 * cache, which a second checkout, a CI runner or `git clean -xdf` may lose
 * without harm (docs/design.md, Resource model: the state is the truth): the deploy key
 * (deploy_ed25519, from the DeployKey resource's state), the known-hosts file
 * (the deployments' pinned host keys), retired-base markers (the BaseVolume's
 * retiredBases), the Nix evaluation cache and GC roots; and the locks that
 * order this host's processes during a run, which only matter while it runs.
 */
export function stackStateDir(stack: string, base: string = process.cwd()): string {
    const path = require("node:path") as typeof import("node:path");
    return path.resolve(base, ".nixspark", stack);
}

// The deploy key: cluster/deployKey.ts.
export { generateDeployKey, readKeyFile, resolveSsh, settleDeployKey, stackDeployKey } from "./deployKey";
export type { ResolvedSsh, SettledSsh } from "./deployKey";
