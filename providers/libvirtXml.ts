// Pure builders and readers for the bits of libvirt XML nixspark uses.
//
// The builders produce the documents we define; the readers pick out the few
// fields we compare on adopt and refresh from what `virsh *-dumpxml` prints.
// Everything here is plain functions with no module-level state, so dynamic
// providers can capture them by value.

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

export interface DomainSpec {
    name: string;
    domainType: "kvm" | "qemu";
    vcpus: number;
    memoryMiB: number;
    diskPath: string;
    mac: string;
    network: string;
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
}

/** The SMBIOS OEM string that carries the host name as a systemd credential. */
export function hostnameCredential(hostname: string): string {
    return `io.systemd.credential:system.hostname=${hostname}`;
}

/** An RFC 1123 host name label: letters, digits and inner '-', 1 to 63 characters. */
export function isHostnameLabel(s: unknown): boolean {
    return typeof s === "string" && /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(s);
}

export function esc(s: string | number): string {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/'/g, "&apos;").replace(/"/g, "&quot;");
}

function unesc(s: string): string {
    return s.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&apos;/g, "'").replace(/&quot;/g, '"').replace(/&amp;/g, "&");
}

export function dhcpHostXml(h: DhcpHost): string {
    return `<host mac='${esc(h.mac)}' name='${esc(h.name)}' ip='${esc(h.ip)}'/>`;
}

export function dnsHostXml(h: DhcpHost): string {
    return `<host ip='${esc(h.ip)}'><hostname>${esc(h.name)}</hostname></host>`;
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
    const sysinfo = d.hostname
        ? [`  <sysinfo type='smbios'>`, `    <oemStrings>`, `      <entry>${esc(hostnameCredential(d.hostname))}</entry>`, `    </oemStrings>`, `  </sysinfo>`]
        : [];
    return [
        `<domain type='${esc(d.domainType)}'>`,
        `  <name>${esc(d.name)}</name>`,
        ...(d.uuid ? [`  <uuid>${esc(d.uuid)}</uuid>`] : []),
        `  <memory unit='MiB'>${d.memoryMiB}</memory>`,
        `  <currentMemory unit='MiB'>${d.memoryMiB}</currentMemory>`,
        `  <vcpu placement='static'>${d.vcpus}</vcpu>`,
        ...sysinfo,
        `  <os>`,
        `    <type arch='x86_64'>hvm</type>`,
        ...boot,
        ...(d.hostname ? [`    <smbios mode='sysinfo'/>`] : []),
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
        `    <interface type='network'>`,
        `      <mac address='${esc(d.mac)}'/>`,
        `      <source network='${esc(d.network)}'/>`,
        `      <model type='virtio'/>`,
        `    </interface>`,
        `    <serial type='pty'>`,
        `      <log file='${esc(d.consoleLog)}' append='on'/>`,
        `      <target port='0'/>`,
        `    </serial>`,
        `    <console type='pty'>`,
        `      <target type='serial' port='0'/>`,
        `    </console>`,
        `    <rng model='virtio'>`,
        `      <backend model='random'>/dev/urandom</backend>`,
        `    </rng>`,
        `  </devices>`,
        `</domain>`,
        ``,
    ].join("\n");
}

// ---- readers (for virsh dumpxml output) ----

/** Attributes of every `<tag .../>` or `<tag ...>` occurrence, in document order. */
export function elements(xml: string, tag: string): Record<string, string>[] {
    const out: Record<string, string>[] = [];
    const re = new RegExp(`<${tag}(\\s[^>]*?)?/?>`, "g");
    for (const m of xml.matchAll(re)) {
        const attrs: Record<string, string> = {};
        for (const a of (m[1] ?? "").matchAll(/([A-Za-z_:][\w:.-]*)\s*=\s*(?:'([^']*)'|"([^"]*)")/g)) {
            attrs[a[1]] = unesc(a[2] ?? a[3] ?? "");
        }
        out.push(attrs);
    }
    return out;
}

/** Text of the first `<tag>text</tag>`, or undefined. */
export function text(xml: string, tag: string): string | undefined {
    const m = xml.match(new RegExp(`<${tag}(?:\\s[^>]*)?>([^<]*)</${tag}>`));
    return m ? unesc(m[1].trim()) : undefined;
}

/** The section between the first `<tag ...>` and its `</tag>` (no nesting of the same tag). */
export function section(xml: string, tag: string): string {
    const m = xml.match(new RegExp(`<${tag}(?:\\s[^>]*)?>([\\s\\S]*?)</${tag}>`));
    return m ? m[1] : "";
}

export interface NetworkFacts {
    name?: string;
    uuid?: string;
    bridge?: string;
    gateway?: string;
    netmask?: string;
    dhcpStart?: string;
    dhcpEnd?: string;
    hosts: DhcpHost[];
}

export function readNetwork(xml: string): NetworkFacts {
    const ip = elements(xml, "ip")[0] ?? {};
    const dhcp = section(xml, "dhcp");
    const range = elements(dhcp, "range")[0] ?? {};
    return {
        name: text(xml, "name"),
        uuid: text(xml, "uuid"),
        bridge: elements(xml, "bridge")[0]?.name,
        gateway: ip.address,
        netmask: ip.netmask ?? (ip.prefix ? prefixToNetmask(Number(ip.prefix)) : undefined),
        dhcpStart: range.start,
        dhcpEnd: range.end,
        hosts: elements(dhcp, "host")
            .map((h) => ({ mac: (h.mac ?? "").toLowerCase(), ip: h.ip ?? "", name: h.name ?? "" }))
            .sort(byMac),
    };
}

export interface DomainFacts {
    name?: string;
    uuid?: string;
    domainType?: string;
    vcpus?: number;
    memoryMiB?: number;
    diskPath?: string;
    mac?: string;
    network?: string;
    /** From the systemd credential in the SMBIOS OEM strings, if any. */
    hostname?: string;
}

export function readDomain(xml: string): DomainFacts {
    const memKiB = Number(text(xml, "memory")) * unitFactor(elements(xml, "memory")[0]?.unit ?? "KiB");
    const iface = section(xml, "interface");
    return {
        name: text(xml, "name"),
        uuid: text(xml, "uuid"),
        domainType: elements(xml, "domain")[0]?.type,
        vcpus: Number(text(xml, "vcpu")),
        memoryMiB: Math.round(memKiB / 1024),
        diskPath: elements(section(xml, "disk"), "source")[0]?.file,
        mac: elements(iface, "mac")[0]?.address?.toLowerCase(),
        network: elements(iface, "source")[0]?.network,
        ...hostnameOf(xml),
    };
}

function hostnameOf(xml: string): { hostname?: string } {
    const prefix = "io.systemd.credential:system.hostname=";
    for (const m of section(section(xml, "sysinfo"), "oemStrings").matchAll(/<entry>([^<]*)<\/entry>/g)) {
        const v = unesc(m[1].trim());
        if (v.startsWith(prefix)) return { hostname: v.slice(prefix.length) };
    }
    return {};
}

export function readVolume(xml: string): { name?: string; path?: string; capacityBytes?: number; backingPath?: string } {
    return {
        name: text(xml, "name"),
        path: text(section(xml, "target"), "path"),
        capacityBytes: Number(text(xml, "capacity")),
        backingPath: text(section(xml, "backingStore"), "path"),
    };
}

function unitFactor(unit: string): number {
    // in KiB
    const u = unit.toLowerCase();
    if (u === "b" || u === "bytes") return 1 / 1024;
    if (u === "k" || u === "kib") return 1;
    if (u === "m" || u === "mib") return 1024;
    if (u === "g" || u === "gib") return 1024 * 1024;
    return 1;
}

function prefixToNetmask(p: number): string {
    const m = p === 0 ? 0 : (0xffffffff << (32 - p)) >>> 0;
    return [24, 16, 8, 0].map((s) => (m >>> s) & 255).join(".");
}

export function byMac(a: DhcpHost, b: DhcpHost): number {
    return a.mac < b.mac ? -1 : a.mac > b.mac ? 1 : 0;
}
