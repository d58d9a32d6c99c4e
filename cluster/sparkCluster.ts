// SparkCluster: the component that turns a validated config into the
// resource graph of docs/design.md (Resource model): one pool and one network per stack, and per
// node a Volume (overlay on the base image) and a Domain.
import * as pulumi from "@pulumi/pulumi";
import type { ClusterConfig } from "./config";
import { buildTopology, LibvirtHost, NodeSpec, Topology } from "./topology";
import { Network } from "../providers/network";
import { StoragePool } from "../providers/pool";
import { Volume } from "../providers/volume";
import { BaseVolume } from "../providers/baseVolume";
import { Domain } from "../providers/domain";
import { guestResilience } from "../providers/libvirtXml";
import { NixImage } from "../providers/nixImage";
import { Placement } from "../providers/placement";
import { NixosDeployment } from "../providers/nixosDeployment";
import { SparkHealth } from "../providers/sparkHealth";
import { ClusterSecret, secretProperties } from "../providers/clusterSecret";
import type { PreparedNixImage, PreparedNixSystems } from "./nixParams";
import { rolloutOrder, workerOffer } from "./rollout";
import type { SparkCheck } from "../providers/nixosDeployment";
import { s3SecretSettings } from "./configSchema";

export interface SparkClusterArgs {
    stack: string;
    config: ClusterConfig;
    /**
     * The base image every node's volume backs onto: a prebuilt qcow2 file, or
     * the Nix build evaluated by prepareNixImage (built by a NixImage resource).
     */
    baseImage: { path: string } | { nix: PreparedNixImage };
    /** The role systems evaluated by prepareNixSystems; deployments are made when given. */
    systems?: PreparedNixSystems;
    /** SSH private key (absolute) and the stack's known-hosts file, for deployments. */
    ssh?: { identityFile: string; knownHostsFile: string };
    /** Where serial console logs go; default /var/log/libvirt/qemu. */
    consoleLogDir?: string;
    /** Seconds a guest gets to power off on delete. */
    shutdownTimeoutSeconds?: number;
    /** nixspark:sparkSecrets, as a Pulumi secret: delivered with the cluster secret. */
    sparkSecrets?: pulumi.Input<Record<string, string>>;
    /** The stack's state directory; default <cwd>/.nixspark/<stack>. */
    stateDir?: string;
}

/**
 * The base volume's libvirt name: <stack>-base-<12 hex of the image's
 * identity>.qcow2. A Nix image is its derivation; a file is its real path,
 * size and modification time (read in the program: a stat, no hashing of
 * gigabytes on every preview).
 */
export function baseVolumeName(stack: string, image: { path: string } | { drvPath: string }): string {
    const crypto = require("node:crypto") as typeof import("node:crypto");
    const fs = require("node:fs") as typeof import("node:fs");
    let identity: string;
    if ("drvPath" in image) {
        identity = `drv:${image.drvPath}`;
    } else {
        try {
            const real = fs.realpathSync(image.path);
            const st = fs.statSync(real);
            identity = `file:${real}:${st.size}:${Math.floor(st.mtimeMs)}`;
        } catch {
            identity = `file:${image.path}`;
        }
    }
    return `${stack}-base-${crypto.createHash("sha256").update(identity).digest("hex").slice(0, 12)}.qcow2`;
}

/**
 * The shared data directory as each Domain defines it (nixspark:data; a
 * restart applies it, in rollout order): none unless data.path is set.
 * mountPoint and readOnly are the nodes' business (the deployment's system).
 */
export function dataShare(cfg: ClusterConfig): { dataDir?: string; dataTag?: string; virtiofsd?: string } {
    const d = cfg.data;
    if (!d?.path) return {};
    return { dataDir: d.path, dataTag: d.tag, ...(d.virtiofsd ? { virtiofsd: d.virtiofsd } : {}) };
}

export interface NodeOutput {
    name: string;
    role: string;
    ip: string;
    mac: string;
    hostname: string;
    libvirtName: string;
    /** With nixspark:libvirt.hosts: the host that runs it, by name and URI. */
    libvirtHost?: string;
    libvirtUri?: string;
}

export interface ClusterNode {
    spec: NodeSpec;
    /** The libvirt host it runs on. */
    host: LibvirtHost;
    volume: Volume;
    domain: Domain;
    deployment?: NixosDeployment;
}

export class SparkCluster extends pulumi.ComponentResource {
    readonly topology: Topology;
    /** The libvirt NAT network (nixspark:network.mode nat); none in bridge mode. */
    readonly network?: Network;
    /** The first host's pool, and one per libvirt host (in nixspark:libvirt.hosts order). */
    readonly pool: StoragePool;
    readonly pools: StoragePool[];
    /** Which host runs which node, and the guard that nothing moves (providers/placement.ts); with nixspark:libvirt.hosts. */
    readonly placement?: Placement;
    readonly nodes: ClusterNode[];
    readonly image?: NixImage;
    readonly baseVolume: BaseVolume;
    readonly baseVolumes: BaseVolume[];
    readonly deployments: NixosDeployment[] = [];
    readonly health?: SparkHealth;
    /** The cluster secret, when Spark authentication is on. */
    secret?: ClusterSecret;
    readonly masterAddress: string;
    readonly masterUrl: string;
    readonly webUiUrl: string;
    /** The history server on the master (nix/modules/master.nix, nixspark.history.port). */
    readonly historyUrl: string;
    readonly nodeOutputs: NodeOutput[];

    constructor(name: string, args: SparkClusterArgs, opts?: pulumi.ComponentResourceOptions) {
        super("nixspark:index:SparkCluster", name, {}, opts);
        const cfg = args.config;
        const t = (this.topology = buildTopology(args.stack, cfg));
        const child = { parent: this };
        const autostart = cfg.autostart;
        const several = cfg.libvirt.hosts.length > 0;
        // Names of a host's own resources: the first host keeps the names a
        // one-host stack has, so a stack that grows past its host keeps them.
        const perHost = (h: number, what: string) => (h === 0 ? `${args.stack}-${what}` : `${args.stack}-${t.hosts[h].name}-${what}`);

        // With several hosts, first of all: the guard that no change moves or drops a node (its check runs in preview too).
        if (several) {
            this.placement = new Placement(
                `${args.stack}-placement`,
                {
                    hosts: Object.fromEntries(t.hosts.map((h) => [h.name, h.uri])),
                    nodes: Object.fromEntries(t.nodes.map((n) => [n.name, t.hosts[n.host].name])),
                    addressesPerHost: cfg.libvirt.addressesPerHost,
                },
                child,
            );
        }
        const guarded = this.placement ? [this.placement] : [];

        this.pools = t.hosts.map((h, i) => new StoragePool(perHost(i, "pool"), { uri: h.uri, name: t.poolName, path: t.poolPath }, { ...child, dependsOn: guarded }));
        this.pool = this.pools[0];

        // The Pulumi name is fixed and the libvirt name (nixspark:network.name) is
        // an input: renaming replaces the network delete-first, since the old
        // one holds the bridge and subnet the new one needs. The alias keeps
        // stacks created when the Pulumi name was the libvirt name. Bridge mode
        // has none: the VMs plug into the hosts' bridges.
        if (t.mode === "nat") {
            this.network = new Network(
                `${args.stack}-network`,
                {
                    uri: t.hosts[0].uri,
                    name: t.networkName,
                    bridge: t.bridge,
                    gateway: t.gateway,
                    netmask: t.netmask,
                    dhcpStart: t.dhcpRange.start,
                    dhcpEnd: t.dhcpRange.end,
                    hosts: t.nodes.map((n) => ({ mac: n.mac, ip: n.ip, name: n.hostname })),
                    autostart,
                },
                { ...child, deleteBeforeReplace: true, aliases: [{ name: t.networkName, parent: this }] },
            );
        }

        let baseImagePath: pulumi.Input<string>;
        let baseName: string;
        if ("path" in args.baseImage) {
            baseImagePath = args.baseImage.path;
            baseName = baseVolumeName(args.stack, { path: args.baseImage.path });
        } else {
            const nix = args.baseImage.nix;
            this.image = new NixImage(`${args.stack}-base-image`, { flake: nix.flake, attribute: nix.attribute, drvPath: nix.drvPath, gcRootDir: nix.gcRootDir }, child);
            baseImagePath = this.image.imagePath;
            baseName = baseVolumeName(args.stack, { drvPath: nix.drvPath });
        }
        const stateDir = args.stateDir ?? require("node:path").resolve(".nixspark", args.stack);
        // The image imported into each host's pool, once per image (built once
        // here, uploaded over each libvirt connection): node overlays back onto
        // it. A new image replaces this resource (a new name, created before
        // the old is deleted); the old volume stays while overlays use it.
        this.baseVolumes = t.hosts.map(
            (h, i) =>
                new BaseVolume(
                    perHost(i, "base-volume"),
                    { uri: h.uri, pool: this.pools[i].name, name: baseName, namePrefix: `${args.stack}-base-`, sourcePath: baseImagePath, stateDir },
                    { ...child, deleteBeforeReplace: false },
                ),
        );
        this.baseVolume = this.baseVolumes[0];

        // Each VM's console log, on the host that runs it.
        const consoleLogOf = (spec: NodeSpec) => `${several ? t.hosts[spec.host].consoleLogDir : (args.consoleLogDir ?? "/var/log/libvirt/qemu").replace(/\/+$/, "")}/${spec.domainName}-console.log`;
        this.nodes = t.nodes.map((spec) => {
            const host = t.hosts[spec.host];
            const uri = host.uri;
            const volume = new Volume(
                `${spec.domainName}-disk`,
                {
                    uri,
                    pool: this.pools[spec.host].name,
                    name: spec.volumeName,
                    basePath: this.baseVolumes[spec.host].path,
                    capacityBytes: spec.diskGiB * 1024 ** 3,
                    domain: spec.domainName,
                    stateDir,
                    // Where the file will be, known in preview: a growing disk (an
                    // update) then leaves the Domain's diskPath known, not replaced.
                    path: `${t.poolPath}/${spec.volumeName}`,
                },
                child,
            );
            const domain = new Domain(
                spec.domainName,
                {
                    uri,
                    name: spec.domainName,
                    domainType: cfg.domainType,
                    vcpus: spec.vcpus,
                    memoryMiB: spec.memoryMiB,
                    diskPath: volume.path,
                    mac: spec.mac,
                    ...(this.network ? { network: this.network.name } : {}),
                    ...interfaceOf(t, spec),
                    consoleLog: consoleLogOf(spec),
                    autostart,
                    kernel: cfg.image.kernel,
                    initrd: cfg.image.initrd,
                    cmdline: cfg.image.cmdline,
                    hostname: spec.hostname,
                    ...dataShare(cfg),
                    // A hung guest is reset by its watchdog, a crashed one restarted (docs/operations.md).
                    resilience: guestResilience(),
                    shutdownTimeoutSeconds: args.shutdownTimeoutSeconds ?? 60,
                    // A change a restart applies (size, domain type, kernel, initrd,
                    // command line, console log, network, host name) restarts VMs one
                    // at a time under a lock here; with deployments, each node's
                    // deployment restarts its VM instead, in rollout order, before it
                    // switches (its `vm` input carries the same definition).
                    stateDir,
                    restartBy: args.systems && cfg.deploy.enabled ? "deployment" : undefined,
                },
                // The network's reservations must exist before the guest asks for an address.
                { ...child, dependsOn: [...(this.network ? [this.network] : []), ...guarded] },
            );
            return { spec, host, volume, domain } as ClusterNode;
        });

        if (args.systems && cfg.deploy.enabled) {
            if (!args.ssh) throw new Error("SparkCluster: deployments need args.ssh (identity file and known-hosts file)");
            const systems = args.systems;
            const ssh = args.ssh;
            const webUiUrl = `http://${t.master.ip}:8080`;
            const offer = workerOffer(cfg.workers.vcpus, cfg.workers.memoryMiB);
            // What Spark must report after each node's switch (else the node is
            // rolled back), and how a removed worker leaves (decommission).
            const sparkCheck = (node: ClusterNode): SparkCheck =>
                node.spec.role === "master"
                    ? { role: "master", webUiUrl, address: node.spec.ip, unit: "spark-master", timeoutSeconds: cfg.deploy.rollout.verifyTimeoutSeconds }
                    : {
                          role: "worker",
                          webUiUrl,
                          address: node.spec.ip,
                          cores: offer.cores,
                          memoryMiB: offer.memoryMiB,
                          unit: "spark-worker",
                          timeoutSeconds: cfg.deploy.rollout.verifyTimeoutSeconds,
                          decommissionTimeoutSeconds: cfg.deploy.decommissionTimeoutSeconds,
                      };
            // The cluster secret (and the secret Spark settings): made once by the
            // stack, a Pulumi secret, written to every node before its switch.
            let secretProps: pulumi.Output<string> | undefined;
            if (cfg.security.authenticate) {
                this.secret = new ClusterSecret(`${args.stack}-spark-secret`, { generation: cfg.security.secretGeneration }, child);
                secretProps = pulumi.secret(pulumi.all([this.secret.value, args.sparkSecrets ?? {}]).apply(([v, extra]) => secretProperties(v, { ...(extra as Record<string, string>), ...s3SecretSettings(cfg) })));
            }
            const deploy = (node: ClusterNode, dependsOn: pulumi.Resource[]) => {
                const role = node.spec.role === "master" ? systems.master : systems.worker;
                node.deployment = new NixosDeployment(
                    `${node.spec.domainName}-nixos`,
                    {
                        node: node.spec.name,
                        flake: systems.flake,
                        configuration: role.configuration,
                        host: node.spec.ip,
                        machineId: node.domain.uuid,
                        sshUser: cfg.ssh.user,
                        sshPort: cfg.ssh.port,
                        identityFile: ssh.identityFile,
                        knownHostsFile: ssh.knownHostsFile,
                        expectedSystem: role.expectedSystem,
                        buildHost: cfg.deploy.buildHost,
                        useSudo: cfg.deploy.useSudo,
                        rebuildCommand: cfg.deploy.rebuildCommand,
                        sshWaitSeconds: cfg.deploy.sshWaitSeconds,
                        switchTimeoutSeconds: cfg.deploy.switchTimeoutSeconds,
                        // nixspark:health.enabled: false means "do not ask Spark" (nodes
                        // that run none, like the tests' tiny guests): no per-node
                        // verification and no decommission either.
                        spark: cfg.health.enabled ? sparkCheck(node) : undefined,
                        // Verify a new VM's host key against its serial console, unless
                        // its image is not known to print it (nixspark:ssh.hostKeys).
                        consoleLog: (cfg.ssh.hostKeys ?? (cfg.image.path ? "first-use" : "console")) === "console" ? consoleLogOf(node.spec) : undefined,
                        // ... read on the host that runs the VM (a remote libvirt host: over ssh).
                        consoleLogHost: node.host.uri,
                        packages: role.packages,
                        // What moved, by package, after the build: once per role, from
                        // the first node of the role to switch (the master, the canary).
                        closureDiff: node === this.nodes[0] || node === this.nodes[1] ? true : undefined,
                        // The VM as its Domain defines it, all known in preview: its identity
                        // (a change replaces it) and what a restart applies (its deployment
                        // restarts it, in rollout order). The disk and network by their names.
                        vm: {
                            uri: node.host.uri,
                            domain: node.spec.domainName,
                            diskPath: `${t.poolPath}/${node.spec.volumeName}`,
                            // Which disk: new when the Volume is created again (a disk deleted
                            // behind the stack's back), and the deployment then re-applies the role.
                            diskId: node.volume.diskId,
                            mac: node.spec.mac,
                            vcpus: node.spec.vcpus,
                            memoryMiB: node.spec.memoryMiB,
                            shutdownTimeoutSeconds: args.shutdownTimeoutSeconds ?? 60,
                            definition: {
                                domainType: cfg.domainType,
                                kernel: cfg.image.kernel,
                                initrd: cfg.image.initrd,
                                cmdline: cfg.image.cmdline,
                                consoleLog: consoleLogOf(node.spec),
                                ...(t.mode === "nat" ? { network: t.networkName } : {}),
                                ...interfaceOf(t, node.spec),
                                hostname: node.spec.hostname,
                                ...dataShare(cfg),
                                resilience: guestResilience(),
                            },
                        },
                        secretProperties: secretProps,
                        secretUnits: secretProps ? ["nixspark-spark-conf.service", node.spec.role === "master" ? "spark-master.service" : "spark-worker.service"] : undefined,
                    },
                    { ...child, dependsOn },
                );
                this.deployments.push(node.deployment);
                return node.deployment;
            };
            // The rollout (cluster/rollout.ts): the master first (workers register
            // with a running master), then the canary worker, then batches of at
            // most maxParallel. Each batch depends on every deployment of the one
            // before, so it starts only once those switched and Spark confirmed
            // them; a failed node stops the batches after it (Pulumi does not
            // run the dependents of a failed resource).
            const [masterNode, ...workerNodes] = this.nodes;
            let previous: NixosDeployment[] = [];
            for (const batch of rolloutOrder(masterNode, workerNodes, cfg.deploy.rollout)) {
                previous = batch.map((n) => deploy(n, [n.domain, ...previous]));
            }

            if (cfg.health.enabled) {
                this.health = new SparkHealth(
                    `${args.stack}-spark-health`,
                    {
                        masterUrl: `spark://${t.master.ip}:7077`,
                        webUiUrl: `http://${t.master.ip}:8080`,
                        expectedWorkers: t.workers.map((w) => ({ name: w.name, ip: w.ip })),
                        timeoutSeconds: cfg.health.timeoutSeconds,
                        decommissionTimeoutSeconds: cfg.deploy.decommissionTimeoutSeconds,
                        // Re-check whenever the topology, a deployed system or a VM changes
                        // (a re-created VM has a new machine id and is deployed again).
                        trigger: {
                            systems: [systems.master.expectedSystem, systems.worker.expectedSystem],
                            nodes: t.nodes.map((n) => `${n.name}=${n.ip}`),
                            machineIds: this.nodes.map((n) => pulumi.interpolate`${n.spec.name}=${n.domain.uuid}`),
                        },
                    },
                    { ...child, dependsOn: this.deployments },
                );
            }
        }

        this.masterAddress = t.master.ip;
        this.masterUrl = `spark://${t.master.ip}:7077`;
        this.webUiUrl = `http://${t.master.ip}:8080`;
        this.historyUrl = `http://${t.master.ip}:18080`;
        // With several libvirt hosts, each node names the host that runs it (the nixspark verbs and status reach its VM there).
        this.nodeOutputs = t.nodes.map((n) => ({
            name: n.name,
            role: n.role,
            ip: n.ip,
            mac: n.mac,
            hostname: n.hostname,
            libvirtName: n.domainName,
            ...(several ? { libvirtHost: t.hosts[n.host].name, libvirtUri: t.hosts[n.host].uri } : {}),
        }));
        this.registerOutputs({ masterUrl: this.masterUrl, webUiUrl: this.webUiUrl, historyUrl: this.historyUrl, nodes: this.nodeOutputs });
    }
}

/** How a node's interface is plugged in: bridge mode's host bridge and static address ("ADDRESS/PREFIX[ GATEWAY]"); nothing in NAT mode. */
export function interfaceOf(t: Topology, spec: NodeSpec): { bridge?: string; address?: string } {
    if (t.mode !== "bridge") return {};
    return { bridge: t.hosts[spec.host].bridge, address: `${spec.ip}/${t.prefix}${t.routerAddress ? ` ${t.routerAddress}` : ""}` };
}
