// Pure topology: node names, libvirt object names, addresses and MACs.
//
// Everything here is derived deterministically from the stack name and the
// config, so re-running a program yields the same topology, and two stacks on
// one host never share a libvirt name. Address math goes through ip-address.
import { createHash } from "node:crypto";
import { Address4 } from "ip-address";
import type { ClusterConfig } from "./config";
import { defaultCidr } from "./subnet";

export type Role = "master" | "worker";

export interface NodeSpec {
    /** "master", "worker-1", ... : the node's name inside the stack. */
    name: string;
    role: Role;
    /** Worker index (1-based); 0 for the master. */
    index: number;
    /** libvirt domain name and hostname: "<stack>-<name>". */
    domainName: string;
    hostname: string;
    volumeName: string;
    ip: string;
    mac: string;
    vcpus: number;
    memoryMiB: number;
    diskGiB: number;
    /** The libvirt host it runs on: its position in Topology.hosts. */
    host: number;
}

/** A libvirt host of the stack: nixspark:libvirt.hosts, or the one nixspark:libvirtUri. */
export interface LibvirtHost {
    /** Its name in the stack ("" for the one host of a stack without nixspark:libvirt.hosts). */
    name: string;
    uri: string;
    /** Bridge mode: the host bridge its VMs plug into. */
    bridge?: string;
    /** Where its libvirt logs the VMs' consoles. */
    consoleLogDir: string;
}

export interface Topology {
    stack: string;
    networkName: string;
    bridge: string;
    poolName: string;
    poolPath: string;
    cidr: string;
    prefix: number;
    netmask: string;
    gateway: string;
    dhcpRange: { start: string; end: string };
    /** "nat": one libvirt network with DHCP; "bridge": host bridges, static addresses. */
    mode: "nat" | "bridge";
    /** Bridge mode: the nodes' default route, if any. */
    routerAddress?: string;
    hosts: LibvirtHost[];
    master: NodeSpec;
    workers: NodeSpec[];
    nodes: NodeSpec[];
}

export class TopologyError extends Error {
    constructor(message: string) {
        super(message);
        this.name = "TopologyError";
    }
}

/** Offset of the master inside the subnet; worker i sits at MASTER_OFFSET + i. */
export const MASTER_OFFSET = 10;
/** Longest name a hostname label may have (RFC 1035). */
export const MAX_LABEL = 63;

export function workerName(i: number): string {
    return `worker-${i}`;
}

export function nodeNames(workerCount: number): string[] {
    return ["master", ...Array.from({ length: workerCount }, (_, i) => workerName(i + 1))];
}

/** A locally administered unicast MAC, stable for a stack and node name. */
export function macFor(stack: string, node: string): string {
    const h = createHash("sha256").update(`nixspark/${stack}/${node}`).digest();
    const bytes = [...h.subarray(0, 6)];
    bytes[0] = (bytes[0] & 0xfc) | 0x02; // unicast (bit 0 clear), locally administered (bit 1 set)
    return bytes.map((b) => b.toString(16).padStart(2, "0")).join(":");
}

/** The default bridge: "nxs-<stack>" when it fits Linux's 15 characters, else a stable hash. */
export function defaultBridge(stack: string): string {
    const plain = `nxs-${stack}`;
    if (plain.length <= 15 && /^[A-Za-z0-9_-]+$/.test(plain)) return plain;
    return `nxs-${createHash("sha256").update(stack).digest("hex").slice(0, 11)}`;
}

function parseSubnet(cidr: string): { base: bigint; size: bigint; prefix: number; netmask: string } {
    if (!/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(cidr) || !Address4.isValid(cidr)) {
        throw new TopologyError(`nixspark:network.cidr: "${cidr}" is not an IPv4 subnet in CIDR form; expected for example 10.77.0.0/24`);
    }
    const a = new Address4(cidr);
    const prefix = a.subnetMask;
    const base = a.startAddress().bigInt();
    if (a.bigInt() !== base) {
        throw new TopologyError(
            `nixspark:network.cidr: "${cidr}" has host bits set; the subnet is ${a.startAddress().address}/${prefix}`,
        );
    }
    const netmask = Address4.fromBigInt((0xffffffffn << BigInt(32 - prefix)) & 0xffffffffn).address;
    return { base, size: 1n << BigInt(32 - prefix), prefix, netmask };
}

/** How many nodes (master + workers) a subnet can hold beside the gateway and the DHCP range. */
export function capacity(cidr: string): number {
    const { size } = parseSubnet(cidr);
    return Math.max(0, Number(dhcpStartOffset(size) - BigInt(MASTER_OFFSET)));
}

/** The DHCP range for ad-hoc guests is the top quarter of the subnet, above every reservation. */
function dhcpStartOffset(size: bigint): bigint {
    return size - size / 4n;
}

export function buildTopology(stack: string, cfg: ClusterConfig): Topology {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(stack)) {
        throw new TopologyError(`stack name "${stack}" must start with a letter or digit and hold only letters, digits, '-', '_' or '.'`);
    }
    const cidr = cfg.network.cidr ?? defaultCidr(stack);
    const { base, size, prefix, netmask } = parseSubnet(cidr);
    const room = capacity(cidr);
    const placed = placement(cfg);
    const count = placed.length;
    const top = Math.max(0, ...placed.map((w) => w.index));
    if (1 + top > room) {
        const need = [24, 23, 22, 21, 20, 16].find((p) => capacity(`10.0.0.0/${p}`) >= 1 + top) ?? 16;
        throw new TopologyError(
            cfg.libvirt.hosts.length > 0
                ? `nixspark:network.cidr: ${cidr} has room for node numbers up to ${room - 1}, but the workers of nixspark:libvirt.hosts reach number ${top} ` +
                      `(worker k of the host at position p is number p * libvirt.addressesPerHost (${cfg.libvirt.addressesPerHost}) + k); use a larger subnet such as /${need}`
                : `nixspark:network.cidr: ${cidr} has room for ${room} node(s) (master + workers), ` +
                      `but nixspark:workers.count = ${count} needs ${1 + count}; use a larger subnet such as /${need}`,
        );
    }
    const addr = (offset: bigint) => Address4.fromBigInt(base + offset).address;
    const prefixName = (s: string) => `${stack}-${s}`;
    const longest = prefixName(workerName(Math.max(top, 1)));
    if (longest.length > MAX_LABEL) {
        throw new TopologyError(
            `stack name "${stack}" is too long: the node name "${longest}" has ${longest.length} characters, ` +
                `hostnames allow ${MAX_LABEL}; use a stack name of at most ${MAX_LABEL - (longest.length - stack.length)} characters`,
        );
    }
    const node = (name: string, role: Role, index: number, size: { vcpus: number; memoryMiB: number; diskGiB: number }, host = 0): NodeSpec => ({
        name,
        role,
        index,
        domainName: prefixName(name),
        hostname: prefixName(name).toLowerCase().replace(/[^a-z0-9-]/g, "-"),
        volumeName: `${prefixName(name)}.qcow2`,
        ip: addr(BigInt(MASTER_OFFSET + index)),
        mac: macFor(stack, name),
        vcpus: size.vcpus,
        memoryMiB: size.memoryMiB,
        diskGiB: size.diskGiB,
        host,
    });
    const master = node("master", "master", 0, cfg.master);
    const workers = placed.map((w) => node(workerName(w.index), "worker", w.index, cfg.workers, w.host));
    const nodes = [master, ...workers];
    const macs = new Set(nodes.map((n) => n.mac));
    if (macs.size !== nodes.length) throw new TopologyError(`MAC collision in stack "${stack}"; rename the stack`);
    return {
        stack,
        networkName: prefixName(cfg.network.name),
        bridge: cfg.network.bridge ?? defaultBridge(stack),
        poolName: prefixName(cfg.storage.pool),
        poolPath: `${cfg.storage.path.replace(/\/+$/, "")}/${stack}`,
        cidr,
        prefix,
        netmask,
        gateway: addr(1n),
        dhcpRange: { start: addr(dhcpStartOffset(size)), end: addr(size - 2n) },
        mode: cfg.network.mode,
        ...(cfg.network.mode === "bridge" && cfg.network.gateway ? { routerAddress: cfg.network.gateway } : {}),
        hosts: libvirtHosts(cfg),
        master,
        workers,
        nodes,
    };
}

/**
 * Where each worker runs and its number (cluster/libvirtHostsConfig.ts):
 * without nixspark:libvirt.hosts, workers 1..count on the one host; with it,
 * worker k of the host at position p is number p * addressesPerHost + k.
 */
export function placement(cfg: ClusterConfig): { index: number; host: number }[] {
    const hosts = cfg.libvirt.hosts;
    if (hosts.length === 0) return Array.from({ length: cfg.workers.count }, (_, i) => ({ index: i + 1, host: 0 }));
    const b = cfg.libvirt.addressesPerHost;
    return hosts.flatMap((h, p) => Array.from({ length: h.workers }, (_, k) => ({ index: p * b + k + 1, host: p })));
}

/** The stack's libvirt hosts: nixspark:libvirt.hosts, or the one nixspark:libvirtUri. */
export function libvirtHosts(cfg: ClusterConfig): LibvirtHost[] {
    const bridged = cfg.network.mode === "bridge";
    const logDir = (d: string) => d.replace(/\/+$/, "");
    if (cfg.libvirt.hosts.length === 0) {
        return [{ name: "", uri: cfg.libvirtUri, ...(bridged && cfg.network.bridge ? { bridge: cfg.network.bridge } : {}), consoleLogDir: logDir(cfg.consoleLogDir) }];
    }
    return cfg.libvirt.hosts.map((h) => ({
        name: h.name,
        uri: h.uri,
        ...(h.bridge ?? cfg.network.bridge ? { bridge: h.bridge ?? cfg.network.bridge } : {}),
        consoleLogDir: logDir(h.consoleLogDir ?? cfg.consoleLogDir),
    }));
}
