// The shared data directory in a domain's XML (nixspark:data): a host
// directory exported to the guest by virtiofs, which the guest mounts by its
// tag (nix/modules/guest.nix). Plain functions, like libvirtXml.ts, which
// builds and reads the rest of the domain with them.
import type { XmlNode } from "./libvirtXml";

export interface SharedDir {
    /** A host directory shared with the guest by virtiofs (nixspark:data.path); with dataTag. */
    dataDir?: string;
    /** The tag the guest mounts dataDir by (`mount -t virtiofs TAG DIR`; at most 36 bytes). */
    dataTag?: string;
    /** virtiofsd's path on the host; unset: libvirt finds it through QEMU's vhost-user descriptors. */
    virtiofsd?: string;
}

const esc = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/'/g, "&apos;").replace(/"/g, "&quot;");

/** <memoryBacking>: virtiofsd maps the guest's memory, so it is shared (and never overcommitted by the host). */
export function sharedMemoryXml(d: SharedDir): string[] {
    return d.dataDir ? [`  <memoryBacking>`, `    <source type='memfd'/>`, `    <access mode='shared'/>`, `  </memoryBacking>`] : [];
}

/**
 * The <filesystem> device. No <readonly/>: libvirt 9.0 refuses it for
 * virtiofs ("virtiofs does not yet support read-only mode", since libvirt
 * 6.4), and QEMU 7.2's C virtiofsd has no read-only option; the nodes mount
 * it read-only instead (the bench test shows libvirt's refusal).
 */
export function sharedDirXml(d: SharedDir): string[] {
    if (!d.dataDir) return [];
    if (!d.dataTag) throw new Error(`dataDir ${d.dataDir} needs a dataTag for the guest to mount it by`);
    return [
        `    <filesystem type='mount' accessmode='passthrough'>`,
        `      <driver type='virtiofs'/>`,
        ...(d.virtiofsd ? [`      <binary path='${esc(d.virtiofsd)}'/>`] : []),
        `      <source dir='${esc(d.dataDir)}'/>`,
        `      <target dir='${esc(d.dataTag)}'/>`,
        `    </filesystem>`,
    ];
}

/** The virtiofs share among a domain's <filesystem> devices (parsed by libvirtXml.parseXml), as far as defined. */
export function readSharedDir(filesystems: XmlNode[]): SharedDir {
    const first = (n: XmlNode | undefined, tag: string): XmlNode | undefined => (Array.isArray(n?.[tag]) ? n![tag][0] : n?.[tag]);
    const at = (n: XmlNode | undefined, tag: string, name: string): string | undefined => {
        const v = first(n, tag)?.[`@${name}`];
        return v === undefined || v === "" ? undefined : String(v);
    };
    const fs = filesystems.find((x) => at(x, "driver", "type") === "virtiofs");
    if (fs === undefined) return {};
    const out: SharedDir = {};
    const dataDir = at(fs, "source", "dir");
    const dataTag = at(fs, "target", "dir");
    const virtiofsd = at(fs, "binary", "path");
    if (dataDir) out.dataDir = dataDir;
    if (dataTag) out.dataTag = dataTag;
    if (virtiofsd) out.virtiofsd = virtiofsd;
    return out;
}
