// SparkCluster: the component that turns a validated config into the
// resource graph of DESIGN.md: one pool and one network per stack, and per
// node a Volume (overlay on the base image) and a Domain.
import * as pulumi from "@pulumi/pulumi";
import type { ClusterConfig } from "./config";
import { buildTopology, NodeSpec, Topology } from "./topology";
import { Network } from "../providers/network";
import { StoragePool } from "../providers/pool";
import { Volume } from "../providers/volume";
import { Domain } from "../providers/domain";

export interface SparkClusterArgs {
    stack: string;
    config: ClusterConfig;
    /** The base qcow2 image every node's volume backs onto. */
    baseImagePath: pulumi.Input<string>;
    /** Where serial console logs go; default /var/log/libvirt/qemu. */
    consoleLogDir?: string;
    /** Seconds a guest gets to power off on delete. */
    shutdownTimeoutSeconds?: number;
}

export interface NodeOutput {
    name: string;
    role: string;
    ip: string;
    mac: string;
    hostname: string;
    libvirtName: string;
}

export interface ClusterNode {
    spec: NodeSpec;
    volume: Volume;
    domain: Domain;
}

export class SparkCluster extends pulumi.ComponentResource {
    readonly topology: Topology;
    readonly network: Network;
    readonly pool: StoragePool;
    readonly nodes: ClusterNode[];
    readonly masterAddress: string;
    readonly masterUrl: string;
    readonly webUiUrl: string;
    readonly nodeOutputs: NodeOutput[];

    constructor(name: string, args: SparkClusterArgs, opts?: pulumi.ComponentResourceOptions) {
        super("nixspark:index:SparkCluster", name, {}, opts);
        const cfg = args.config;
        const uri = cfg.libvirtUri;
        const t = (this.topology = buildTopology(args.stack, cfg));
        const child = { parent: this };
        const autostart = cfg.autostart;

        this.pool = new StoragePool(`${args.stack}-pool`, { uri, name: t.poolName, path: t.poolPath }, child);

        this.network = new Network(
            t.networkName,
            {
                uri,
                name: t.networkName,
                bridge: t.bridge,
                gateway: t.gateway,
                netmask: t.netmask,
                dhcpStart: t.dhcpRange.start,
                dhcpEnd: t.dhcpRange.end,
                hosts: t.nodes.map((n) => ({ mac: n.mac, ip: n.ip, name: n.hostname })),
                autostart,
            },
            child,
        );

        const logDir = (args.consoleLogDir ?? "/var/log/libvirt/qemu").replace(/\/+$/, "");
        this.nodes = t.nodes.map((spec) => {
            const volume = new Volume(
                `${spec.domainName}-disk`,
                { uri, pool: this.pool.name, name: spec.volumeName, backingPath: args.baseImagePath, capacityBytes: spec.diskGiB * 1024 ** 3 },
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
                    diskGiB: spec.diskGiB,
                    mac: spec.mac,
                    network: this.network.name,
                    consoleLog: `${logDir}/${spec.domainName}-console.log`,
                    autostart,
                    kernel: cfg.image.kernel,
                    initrd: cfg.image.initrd,
                    cmdline: cfg.image.cmdline,
                    shutdownTimeoutSeconds: args.shutdownTimeoutSeconds ?? 60,
                },
                // The network's reservations must exist before the guest asks for an address.
                { ...child, dependsOn: [this.network] },
            );
            return { spec, volume, domain };
        });

        this.masterAddress = t.master.ip;
        this.masterUrl = `spark://${t.master.ip}:7077`;
        this.webUiUrl = `http://${t.master.ip}:8080`;
        this.nodeOutputs = t.nodes.map((n) => ({ name: n.name, role: n.role, ip: n.ip, mac: n.mac, hostname: n.hostname, libvirtName: n.domainName }));
        this.registerOutputs({ masterUrl: this.masterUrl, webUiUrl: this.webUiUrl, nodes: this.nodeOutputs });
    }
}
