// Pure builders and readers for the bits of libvirt XML nixspark uses.
//
// The builders produce the documents we define; the readers pick out the few
// fields we compare on adopt and refresh from what `virsh *-dumpxml` prints.
// Everything here is plain functions with no module-level state, so dynamic
// providers can capture them by value.

import { readSharedDir, sharedDirXml, sharedMemoryXml } from "./sharedDirXml";
import type { SharedDir } from "./sharedDirXml";
import { credentialValue, hostnameCredential, isHostnameLabel, isStaticAddress, networkCredential } from "./guestCredentials";

export { guestResilience, hostnameCredential, isHostnameLabel, isStaticAddress, networkCredential } from "./guestCredentials";

export interface DhcpHost {
    mac: string;
    ip: string;
    name: string;
}

export interface NetworkSpec {
    name: string;
    bridge: string;
    gateway: string;
    netmask: string;
    dhcpStart: string;
    dhcpEnd: string;
    hosts: DhcpHost[];
}

export interface VolumeSpec {
    name: string;
    capacityBytes: number;
    backingPath: string;
}

export interface DomainSpec extends SharedDir {
    name: string;
    domainType: "kvm" | "qemu";
    vcpus: number;
    memoryMiB: number;
    diskPath: string;
    mac: string;
    /** The libvirt network the interface is on (NAT mode); ignored when `bridge` is set. */
    network?: string;
    /** A host bridge the interface is plugged into (nixspark:network.mode bridge): no libvirt network. */
    bridge?: string;
    /** Bridge mode's static address, "ADDRESS/PREFIX[ GATEWAY]": the credential nixspark.network (networkCredential). */
    address?: string;
    consoleLog: string;
    kernel?: string;
    initrd?: string;
    cmdline?: string;
    /**
     * The guest's host name, handed to it as the systemd credential
     * `system.hostname` in an SMBIOS OEM string (type 11), which systemd
     * (>= 254) reads at boot: the guest gets its name from libvirt, not DHCP.
     */
    hostname?: string;
    /** Set when redefining an existing domain: libvirt refuses a new UUID for a known name. */
    uuid?: string;
    /** Set (to guestResilience()): a watchdog resetting a hung guest, a pvpanic device reporting a crash (on_crash restarts it). */
    resilience?: string;
}

export function esc(s: string | number): string {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/'/g, "&apos;").replace(/"/g, "&quot;");
}

export function dhcpHostXml(h: DhcpHost): string {
    return `<host mac='${esc(h.mac)}' name='${esc(h.name)}' ip='${esc(h.ip)}'/>`;
}

export function dnsHostXml(h: DhcpHost): string {
    return `<host ip='${esc(h.ip)}'><hostname>${esc(h.name)}</hostname></host>`;
}

/** A DNS entry as libvirt holds it (one address, its names): what `net-update delete dns-host` matches. */
export interface DnsEntry {
    ip: string;
    names: string[];
}

export function dnsEntryXml(e: DnsEntry): string {
    return `<host ip='${esc(e.ip)}'>${e.names.map((n) => `<hostname>${esc(n)}</hostname>`).join("")}</host>`;
}

export function networkXml(n: NetworkSpec): string {
    return [
        `<network>`,
        `  <name>${esc(n.name)}</name>`,
        `  <forward mode='nat'/>`,
        `  <bridge name='${esc(n.bridge)}' stp='on' delay='0'/>`,
        `  <dns>`,
        ...n.hosts.map((h) => `    ${dnsHostXml(h)}`),
        `  </dns>`,
        `  <ip address='${esc(n.gateway)}' netmask='${esc(n.netmask)}'>`,
        `    <dhcp>`,
        `      <range start='${esc(n.dhcpStart)}' end='${esc(n.dhcpEnd)}'/>`,
        ...n.hosts.map((h) => `      ${dhcpHostXml(h)}`),
        `    </dhcp>`,
        `  </ip>`,
        `</network>`,
        ``,
    ].join("\n");
}

export function volumeXml(v: VolumeSpec): string {
    return [
        `<volume type='file'>`,
        `  <name>${esc(v.name)}</name>`,
        `  <capacity unit='bytes'>${Math.floor(v.capacityBytes)}</capacity>`,
        `  <target>`,
        `    <format type='qcow2'/>`,
        `  </target>`,
        `  <backingStore>`,
        `    <path>${esc(v.backingPath)}</path>`,
        `    <format type='qcow2'/>`,
        `  </backingStore>`,
        `</volume>`,
        ``,
    ].join("\n");
}

export function poolXml(name: string, path: string): string {
    return [`<pool type='dir'>`, `  <name>${esc(name)}</name>`, `  <target>`, `    <path>${esc(path)}</path>`, `  </target>`, `</pool>`, ``].join("\n");
}

export function domainXml(d: DomainSpec): string {
    const boot = d.kernel
        ? [
              `    <kernel>${esc(d.kernel)}</kernel>`,
              ...(d.initrd ? [`    <initrd>${esc(d.initrd)}</initrd>`] : []),
              ...(d.cmdline ? [`    <cmdline>${esc(d.cmdline)}</cmdline>`] : []),
          ]
        : [`    <boot dev='hd'/>`];
    if (d.hostname !== undefined && d.hostname !== null && !isHostnameLabel(d.hostname)) throw new Error(`hostname ${JSON.stringify(d.hostname)} is not an RFC 1123 label`);
    const shared = sharedDirXml(d);
    if (d.address !== undefined && d.address !== null && !isStaticAddress(d.address)) throw new Error(`address ${JSON.stringify(d.address)} is not "ADDRESS/PREFIX[ GATEWAY]"`);
    const oem = [...(d.hostname ? [hostnameCredential(d.hostname)] : []), ...(d.address ? [networkCredential(d.mac, d.address)] : [])];
    const sysinfo = oem.length > 0 ? [`  <sysinfo type='smbios'>`, `    <oemStrings>`, ...oem.map((e) => `      <entry>${esc(e)}</entry>`), `    </oemStrings>`, `  </sysinfo>`] : [];
    if (!d.bridge && !d.network) throw new Error(`domain ${d.name}: neither a network nor a bridge for its interface`);
    const source = d.bridge ? `      <source bridge='${esc(d.bridge)}'/>` : `      <source network='${esc(d.network!)}'/>`;
    return [
        `<domain type='${esc(d.domainType)}'>`,
        `  <name>${esc(d.name)}</name>`,
        ...(d.uuid ? [`  <uuid>${esc(d.uuid)}</uuid>`] : []),
        `  <memory unit='MiB'>${d.memoryMiB}</memory>`,
        `  <currentMemory unit='MiB'>${d.memoryMiB}</currentMemory>`,
        `  <vcpu placement='static'>${d.vcpus}</vcpu>`,
        ...sharedMemoryXml(d),
        ...sysinfo,
        `  <os>`,
        `    <type arch='x86_64'>hvm</type>`,
        ...boot,
        ...(oem.length > 0 ? [`    <smbios mode='sysinfo'/>`] : []),
        `  </os>`,
        `  <features>`,
        `    <acpi/>`,
        `    <apic/>`,
        `  </features>`,
        // KVM guests get the host CPU; emulated (TCG) guests keep QEMU's default model.
        ...(d.domainType === "kvm" ? [`  <cpu mode='host-passthrough'/>`] : []),
        `  <on_poweroff>destroy</on_poweroff>`,
        `  <on_reboot>restart</on_reboot>`,
        `  <on_crash>restart</on_crash>`,
        `  <devices>`,
        `    <disk type='file' device='disk'>`,
        `      <driver name='qemu' type='qcow2'/>`,
        `      <source file='${esc(d.diskPath)}'/>`,
        `      <target dev='vda' bus='virtio'/>`,
        `    </disk>`,
        `    <interface type='${d.bridge ? "bridge" : "network"}'>`,
        `      <mac address='${esc(d.mac)}'/>`,
        source,
        `      <model type='virtio'/>`,
        `    </interface>`,
        `    <serial type='pty'>`,
        `      <log file='${esc(d.consoleLog)}' append='on'/>`,
        `      <target port='0'/>`,
        `    </serial>`,
        `    <console type='pty'>`,
        `      <target type='serial' port='0'/>`,
        `    </console>`,
        ...shared,
        `    <rng model='virtio'>`,
        `      <backend model='random'>/dev/urandom</backend>`,
        `    </rng>`,
        ...(d.resilience ? [`    <watchdog model='i6300esb' action='reset'/>`, `    <panic model='isa'/>`] : []),
        `  </devices>`,
        `</domain>`,
        ``,
    ].join("\n");
}

// ---- readers (for virsh dumpxml output) ----
//
// A real XML parser (fast-xml-parser) reads what libvirt prints: attribute
// quoting, entities, comments, nesting and element order are its problem,
// not a regular expression's. It is required inside parseXml, so providers
// that capture these readers still serialize as small closures and load the
// module only when they run.

/** A parsed element: attributes under "@name", text under "#text", children by tag (always arrays). */
export type XmlNode = { [key: string]: any };

/** Parses a document; every element is an array of nodes, attributes and text stay strings. */
export function parseXml(xml: string): XmlNode {
    const { XMLParser } = require("fast-xml-parser") as typeof import("fast-xml-parser");
    const parser = new XMLParser({
        ignoreAttributes: false,
        attributeNamePrefix: "@",
        textNodeName: "#text",
        parseTagValue: false,
        parseAttributeValue: false,
        trimValues: true,
        isArray: (_name: string, _path: string, _leaf: boolean, isAttribute: boolean) => !isAttribute,
        processEntities: true,
    });
    return parser.parse(xml) as XmlNode;
}

/** The first node along a path of tags ("devices", "disk", "source"), or undefined. */
export function child(node: XmlNode | undefined, ...tags: string[]): XmlNode | undefined {
    let cur: any = node;
    for (const t of tags) {
        const v = cur?.[t];
        cur = Array.isArray(v) ? v[0] : v;
        if (cur === undefined) return undefined;
    }
    return typeof cur === "string" ? { "#text": cur } : cur;
}

/** Every node with that tag directly under `node`. */
export function children(node: XmlNode | undefined, tag: string): XmlNode[] {
    const v = node?.[tag];
    if (v === undefined) return [];
    return (Array.isArray(v) ? v : [v]).map((x: any) => (typeof x === "string" ? { "#text": x } : x));
}

/** The text of a node ("" for an empty element), or undefined when there is no node. */
export function textOf(node: XmlNode | undefined): string | undefined {
    if (node === undefined) return undefined;
    const t = node["#text"];
    return t === undefined ? "" : String(t).trim();
}

/** An attribute of a node, or undefined. */
export function attr(node: XmlNode | undefined, name: string): string | undefined {
    const v = node?.[`@${name}`];
    return v === undefined ? undefined : String(v);
}

/** The document's root element of that tag (<domain>, <network>, ...); an error when it is something else. */
export function root(xml: string, tag: string): XmlNode {
    const doc = parseXml(xml);
    const r = child(doc, tag);
    if (r === undefined) throw new Error(`expected a <${tag}> document from libvirt, got: ${xml.slice(0, 200)}`);
    return r;
}

const optNumber = (s: string | undefined): number | undefined => (s === undefined || s === "" || !Number.isFinite(Number(s)) ? undefined : Number(s));

export interface NetworkFacts {
    name?: string;
    uuid?: string;
    bridge?: string;
    gateway?: string;
    netmask?: string;
    dhcpStart?: string;
    dhcpEnd?: string;
    hosts: DhcpHost[];
    /** The DNS entries (<dns><host ip=...><hostname>...), as libvirt holds them. */
    dnsHosts: DnsEntry[];
}

export function readNetwork(xml: string): NetworkFacts {
    const n = root(xml, "network");
    const ip = child(n, "ip");
    const dhcp = child(ip, "dhcp");
    const range = child(dhcp, "range");
    const prefix = attr(ip, "prefix");
    return {
        name: textOf(child(n, "name")),
        uuid: textOf(child(n, "uuid")),
        bridge: attr(child(n, "bridge"), "name"),
        gateway: attr(ip, "address"),
        netmask: attr(ip, "netmask") ?? (prefix ? prefixToNetmask(Number(prefix)) : undefined),
        dhcpStart: attr(range, "start"),
        dhcpEnd: attr(range, "end"),
        hosts: children(dhcp, "host")
            .map((h) => ({ mac: (attr(h, "mac") ?? "").toLowerCase(), ip: attr(h, "ip") ?? "", name: attr(h, "name") ?? "" }))
            .sort(byMac),
        dnsHosts: children(child(n, "dns"), "host").map((h) => ({
            ip: attr(h, "ip") ?? "",
            names: children(h, "hostname").map((x) => textOf(x) ?? "").filter((x) => x !== ""),
        })),
    };
}

export interface DomainFacts extends SharedDir {
    name?: string;
    uuid?: string;
    domainType?: string;
    vcpus?: number;
    memoryMiB?: number;
    diskPath?: string;
    mac?: string;
    network?: string;
    /** The host bridge of an interface of type bridge (not the bridge behind a libvirt network). */
    bridge?: string;
    /** From the systemd credential in the SMBIOS OEM strings, if any. */
    hostname?: string;
    /** The static address from the `nixspark.network` credential, if any (without the MAC). */
    address?: string;
    /** Direct kernel boot (<os><kernel>, <initrd>, <cmdline>), when defined. */
    kernel?: string;
    initrd?: string;
    cmdline?: string;
    /** The file the first serial port logs to (<serial><log file=...>), when defined. */
    consoleLog?: string;
    /** Its watchdog and panic devices ("watchdog i6300esb/reset, panic isa"), when it has either. */
    resilience?: string;
    /** <on_crash>: what libvirt does when the guest reports a crash. */
    onCrash?: string;
}

export function readDomain(xml: string): DomainFacts {
    const d = root(xml, "domain");
    const mem = child(d, "memory");
    const memKiB = optNumber(textOf(mem));
    const devices = child(d, "devices");
    const disk = children(devices, "disk").find((x) => attr(x, "device") === "disk") ?? child(devices, "disk");
    const iface = child(devices, "interface");
    const out: DomainFacts = {
        name: textOf(child(d, "name")),
        uuid: textOf(child(d, "uuid")),
        domainType: attr(d, "type"),
        vcpus: optNumber(textOf(child(d, "vcpu"))),
        memoryMiB: memKiB === undefined ? undefined : Math.round((memKiB * unitFactor(attr(mem, "unit") ?? "KiB")) / 1024),
        diskPath: attr(child(disk, "source"), "file"),
        mac: attr(child(iface, "mac"), "address")?.toLowerCase(),
        network: attr(child(iface, "source"), "network"),
    };
    if (attr(iface, "type") === "bridge") {
        const b = attr(child(iface, "source"), "bridge");
        if (b !== undefined) out.bridge = b;
    }
    const hostname = oemCredential(d, "system.hostname");
    if (hostname !== undefined) out.hostname = hostname;
    const address = oemCredential(d, "nixspark.network");
    if (address !== undefined) out.address = address.split(" ").slice(1).join(" ");
    // Only what is there: a domain that boots from its disk has no kernel.
    const os = child(d, "os");
    for (const k of ["kernel", "initrd", "cmdline"] as const) {
        const v = textOf(child(os, k));
        if (v !== undefined && v !== "") out[k] = v;
    }
    // The serial port's log; libvirt also shows it on the <console> that mirrors serial 0.
    const log = attr(child(children(devices, "serial")[0], "log"), "file") ?? attr(child(children(devices, "console")[0], "log"), "file");
    if (log !== undefined) out.consoleLog = log;
    const [wd, panic, onCrash] = [child(devices, "watchdog"), child(devices, "panic"), textOf(child(d, "on_crash"))];
    const guard = [...(wd ? [`watchdog ${attr(wd, "model")}/${attr(wd, "action") ?? "reset"}`] : []), ...(panic ? [`panic ${attr(panic, "model") ?? "isa"}`] : [])];
    if (guard.length > 0) out.resilience = guard.join(", ");
    if (onCrash) out.onCrash = onCrash;
    return { ...out, ...readSharedDir(children(devices, "filesystem")) };
}

/** A network interface of a running domain, from its live XML. */
export interface InterfaceFacts {
    mac?: string;
    /** The libvirt network it is on (<source network=...>). */
    network?: string;
    /** The bridge libvirt plugged it into (<source bridge=...>, live XML only). */
    bridge?: string;
    /** The host-side tap device (<target dev=...>, live XML only). */
    tap?: string;
}

/** Every <interface> of a domain: the live XML (virsh dumpxml) carries the tap and the bridge it was plugged into. */
export function readInterfaces(xml: string): InterfaceFacts[] {
    const d = root(xml, "domain");
    return children(child(d, "devices"), "interface").map((i) => ({
        mac: attr(child(i, "mac"), "address")?.toLowerCase(),
        network: attr(child(i, "source"), "network"),
        bridge: attr(child(i, "source"), "bridge"),
        tap: attr(child(i, "target"), "dev"),
    }));
}

function oemCredential(d: XmlNode, name: string): string | undefined {
    return credentialValue(children(child(d, "sysinfo", "oemStrings"), "entry").map((e) => textOf(e) ?? ""), name);
}

export interface VolumeFacts {
    name?: string;
    path?: string;
    capacityBytes?: number;
    /** The file this volume's qcow2 backs onto (its <backingStore>), if any. */
    backingPath?: string;
    format?: string;
}

export function readVolume(xml: string): VolumeFacts {
    const v = root(xml, "volume");
    const cap = child(v, "capacity");
    const capacity = optNumber(textOf(cap));
    const target = child(v, "target");
    return {
        name: textOf(child(v, "name")),
        path: textOf(child(target, "path")),
        capacityBytes: capacity === undefined ? undefined : Math.round(capacity * unitFactor(attr(cap, "unit") ?? "bytes") * 1024),
        backingPath: textOf(child(v, "backingStore", "path")) || undefined,
        format: attr(child(target, "format"), "type"),
    };
}

export interface PoolFacts {
    name?: string;
    type?: string;
    path?: string;
}

export function readPool(xml: string): PoolFacts {
    const p = root(xml, "pool");
    return { name: textOf(child(p, "name")), type: attr(p, "type"), path: textOf(child(p, "target", "path")) };
}

function unitFactor(unit: string): number {
    // in KiB
    const u = unit.toLowerCase();
    if (u === "b" || u === "bytes") return 1 / 1024;
    if (u === "k" || u === "kib") return 1;
    if (u === "m" || u === "mib") return 1024;
    if (u === "g" || u === "gib") return 1024 * 1024;
    if (u === "t" || u === "tib") return 1024 * 1024 * 1024;
    if (u === "kb") return 1000 / 1024;
    if (u === "mb") return 1000 ** 2 / 1024;
    if (u === "gb") return 1000 ** 3 / 1024;
    return 1;
}

function prefixToNetmask(p: number): string {
    const m = p === 0 ? 0 : (0xffffffff << (32 - p)) >>> 0;
    return [24, 16, 8, 0].map((s) => (m >>> s) & 255).join(".");
}

export function byMac(a: DhcpHost, b: DhcpHost): number {
    return a.mac < b.mac ? -1 : a.mac > b.mac ? 1 : 0;
}
