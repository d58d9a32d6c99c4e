// Target "hosts" (docs/targets.md): the stack deploys onto existing NixOS
// machines listed in nixspark:hosts. No image, network, pool, volume or
// domain: one NixosDeployment per machine, in the rollout order of every
// stack (master, canary, batches: cluster/rollout.ts), then the health gate.
// Each machine switches to its own configuration module plus the role
// (nix/flake.nix: hostSystem), and back to its module alone when it leaves
// the list (releasedSystem), after a worker's decommission. Nothing is ever
// powered off.
import * as pulumi from "@pulumi/pulumi";
import type { ClusterConfig } from "../config";
import { nixStackParams, pinFlakeSnapshot } from "../nixParams";
import { gcRootDir, NixParamsError } from "../nixFlake";
import { rolloutOrder } from "../rollout";
import { NixosDeployment } from "../../providers/nixosDeployment";
import type { SparkCheck } from "../../providers/nixosDeployment";
import { SparkHealth } from "../../providers/sparkHealth";
import { ClusterSecret, secretProperties } from "../../providers/clusterSecret";
import type { HostEntry } from "./hostsConfig";
import { prepareHostsNix, PreparedHosts } from "./hostsNix";
import type { Target, TargetCluster, TargetContext, TargetNodeOutput } from "./types";

/** The loud line for each machine trusted on first use, in preview and up alike. */
export function firstUseWarnings(hosts: HostEntry[], defaultPort: number): string[] {
    return hosts.flatMap((h, i) =>
        h.hostKey === "first-use"
            ? [
                  `machine ${h.name}: its SSH host key is TRUSTED ON FIRST USE (nixspark:hosts[${i}].hostKey "first-use"): whatever answers at ${h.address} port ${h.sshPort ?? defaultPort} on the first deployment is pinned. ` +
                      `Give its fingerprint instead: run ssh-keygen -l -E sha256 -f /etc/ssh/ssh_host_ed25519_key.pub on the machine's console, then pulumi config set --path 'hosts[${i}].hostKey' SHA256:...`,
              ]
            : [],
    );
}

export class HostsCluster extends pulumi.ComponentResource implements TargetCluster {
    readonly deployments: NixosDeployment[] = [];
    readonly health?: SparkHealth;
    readonly secret?: ClusterSecret;
    readonly masterAddress: string;
    readonly masterUrl: string;
    readonly webUiUrl: string;
    readonly historyUrl: string;
    readonly nodeOutputs: TargetNodeOutput[];

    constructor(name: string, ctx: TargetContext<ClusterConfig>, prepared: PreparedHosts, opts?: pulumi.ComponentResourceOptions) {
        super("nixspark:index:HostsCluster", name, {}, opts);
        const cfg = ctx.config;
        const stack = ctx.stack;
        const child = { parent: this };
        const hosts = cfg.hosts as HostEntry[];
        const master = hosts.find((h) => h.role === "master")!;
        const workers = hosts.filter((h) => h.role === "worker");
        this.masterAddress = master.address;
        this.masterUrl = `spark://${master.address}:7077`;
        this.webUiUrl = `http://${master.address}:8080`;
        this.historyUrl = `http://${master.address}:18080`;

        let secretProps: pulumi.Output<string> | undefined;
        if (cfg.security.authenticate) {
            this.secret = new ClusterSecret(`${stack}-spark-secret`, { generation: cfg.security.secretGeneration }, child);
            secretProps = pulumi.secret(pulumi.all([this.secret.value, ctx.sparkSecrets]).apply(([v, extra]) => secretProperties(v, extra as Record<string, string>)));
        }
        const verify = cfg.deploy.rollout.verifyTimeoutSeconds;
        const sparkCheck = (h: HostEntry): SparkCheck =>
            h.role === "master"
                ? { role: "master", webUiUrl: this.webUiUrl, address: h.address, unit: "spark-master", timeoutSeconds: verify }
                : {
                      role: "worker",
                      webUiUrl: this.webUiUrl,
                      address: h.address,
                      // "auto": whatever Spark finds on the machine is right.
                      ...(h.cores !== "auto" ? { cores: h.cores } : {}),
                      ...(h.memoryMiB !== "auto" ? { memoryMiB: h.memoryMiB } : {}),
                      unit: "spark-worker",
                      timeoutSeconds: verify,
                      decommissionTimeoutSeconds: cfg.deploy.decommissionTimeoutSeconds,
                  };
        const deploy = (h: HostEntry, dependsOn: pulumi.Resource[]) => {
            const sys = prepared.machines[h.name];
            const d = new NixosDeployment(
                `${stack}-${h.name}-nixos`,
                {
                    node: h.name,
                    flake: prepared.flake,
                    configuration: sys.configuration,
                    host: h.address,
                    sshUser: h.sshUser ?? cfg.ssh.user,
                    sshPort: h.sshPort ?? cfg.ssh.port,
                    identityFile: ctx.ssh.identityFile,
                    knownHostsFile: ctx.ssh.knownHostsFile,
                    privateKey: ctx.privateKey,
                    expectedSystem: sys.expectedSystem,
                    buildHost: cfg.deploy.buildHost,
                    useSudo: cfg.deploy.useSudo,
                    rebuildCommand: cfg.deploy.rebuildCommand,
                    sshWaitSeconds: cfg.deploy.sshWaitSeconds,
                    switchTimeoutSeconds: cfg.deploy.switchTimeoutSeconds,
                    spark: cfg.health.enabled ? sparkCheck(h) : undefined,
                    hostKeyFingerprint: h.hostKey === "first-use" ? undefined : h.hostKey,
                    release: sys.released,
                    packages: sys.packages,
                    closureDiff: h === master || h === workers[0] ? true : undefined,
                    secretProperties: secretProps,
                    secretUnits: secretProps ? ["nixspark-spark-conf.service", h.role === "master" ? "spark-master.service" : "spark-worker.service"] : undefined,
                },
                { ...child, dependsOn },
            );
            this.deployments.push(d);
            return d;
        };
        let previous: NixosDeployment[] = [];
        for (const batch of rolloutOrder(master, workers, cfg.deploy.rollout)) previous = batch.map((h) => deploy(h, previous));

        if (cfg.health.enabled) {
            this.health = new SparkHealth(
                `${stack}-spark-health`,
                {
                    masterUrl: this.masterUrl,
                    webUiUrl: this.webUiUrl,
                    expectedWorkers: workers.map((w) => ({ name: w.name, ip: w.address })),
                    timeoutSeconds: cfg.health.timeoutSeconds,
                    decommissionTimeoutSeconds: cfg.deploy.decommissionTimeoutSeconds,
                    trigger: { systems: hosts.map((h) => `${h.name}=${prepared.machines[h.name].expectedSystem}`), nodes: hosts.map((h) => `${h.name}=${h.address}`) },
                },
                { ...child, dependsOn: this.deployments },
            );
        }
        this.nodeOutputs = hosts.map((h) => ({
            name: h.name,
            role: h.role,
            ip: h.address,
            hostname: h.name,
            ...(h.sshUser !== undefined ? { sshUser: h.sshUser } : {}),
            ...(h.sshPort !== undefined ? { sshPort: h.sshPort } : {}),
        }));
        this.registerOutputs({ masterUrl: this.masterUrl, webUiUrl: this.webUiUrl, historyUrl: this.historyUrl, nodes: this.nodeOutputs });
    }
}

export const hostsTarget: Target<ClusterConfig, PreparedHosts> = {
    kind: "hosts",
    async prepare(ctx) {
        const cfg = ctx.config;
        for (const w of firstUseWarnings(cfg.hosts as HostEntry[], cfg.ssh.port)) ctx.log.warn(w);
        if (!cfg.deploy.enabled) throw new NixParamsError(`nixspark:deploy.enabled: false, but with nixspark:target "hosts" the stack is its deployments; remove it: pulumi config rm --path deploy.enabled`);
        // Only the fields the hosts target does not replace are read from this (the stack, the key, Spark, security).
        const base = nixStackParams(cfg, { stack: ctx.stack, cidr: "0.0.0.0/32", prefix: 32, master: { ip: "0.0.0.0", hostname: "master" } });
        const prepared = await prepareHostsNix(ctx.stack, cfg, base);
        if (prepared.source) await pinFlakeSnapshot(prepared.source, gcRootDir(ctx.stack), ctx.log.debug);
        return prepared;
    },
    create(ctx, prepared) {
        return new HostsCluster("nixspark", ctx, prepared);
    },
};

/**
 * The program's part for a hosts stack, after the config and the deploy key
 * are settled: evaluate, register, and export what status, smoke and the
 * nixspark verbs read (no libvirtUri, no network; nodes without libvirtName).
 */
export async function hostsProgram(ctx: TargetContext<ClusterConfig>, sshOutput: Record<string, unknown>): Promise<Record<string, unknown>> {
    let prepared: PreparedHosts;
    try {
        prepared = await hostsTarget.prepare(ctx);
    } catch (e) {
        if (e instanceof NixParamsError) throw new pulumi.RunError(`invalid stack configuration:\n  ${e.message}`);
        throw new pulumi.RunError(`evaluating the Nix flake failed, nothing was changed:\n${(e as Error).message}`);
    }
    const cluster = hostsTarget.create(ctx, prepared);
    const cfg = ctx.config;
    return {
        target: "hosts",
        nodes: cluster.nodeOutputs.map((n) => ({ ...n, system: prepared.machines[n.name].expectedSystem })),
        masterAddress: cluster.masterAddress,
        masterUrl: cluster.masterUrl,
        webUiUrl: cluster.webUiUrl,
        historyUrl: cluster.historyUrl,
        ssh: sshOutput,
        security: { authenticate: cfg.security.authenticate, ioEncryption: cfg.security.ioEncryption, secretGeneration: cfg.security.secretGeneration },
        health: cluster.health ? { aliveWorkers: cluster.health.aliveWorkers, totalCores: cluster.health.totalCores, totalMemoryMiB: cluster.health.totalMemoryMiB } : undefined,
    };
}
