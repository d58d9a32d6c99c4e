// nixspark:libvirt (one cluster over several libvirt hosts) and the network
// mode it needs: the schema of the section (cluster/configSchema.ts) and the
// rules across keys (run by its crossChecks). docs/targets.md says what each
// key does; cluster/topology.ts places the nodes.
//
// Placement is by count per host and never moves a node: worker k (from 1) of
// the host at position p (from 0) is worker number p * addressesPerHost + k,
// which fixes its name, MAC and address (topology.ts), so adding a worker to
// one host or a host at the end of the list leaves every other node where it
// is. The master is on the first host, at the first address of its block.
import { z } from "zod";
import { dnsLabel, int, str } from "./configPrimitives";

const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;
const BRIDGE = /^[A-Za-z0-9_-]{1,15}$/;
const BRIDGE_MESSAGE = "expected a Linux bridge name: 1 to 15 letters, digits, '-' or '_'";

/** One libvirt host of nixspark:libvirt.hosts. */
export const libvirtHostEntry = z
    .object({
        // Part of no libvirt name: it names the host in messages, placement and status.
        name: dnsLabel("the libvirt host's name in the stack"),
        uri: str("a libvirt connection URI such as qemu+ssh://root@lab1/system"),
        // The workers this host runs (the first host also runs the master).
        workers: int(0, 250, "the number of Spark workers on this host").default(0),
        // The host bridge on the shared L2 segment; default nixspark:network.bridge.
        bridge: z.string().regex(BRIDGE, BRIDGE_MESSAGE).optional(),
        // Where this host's libvirt writes the console logs; default nixspark:consoleLogDir.
        consoleLogDir: str("an absolute directory on that host for the VMs' console logs")
            .refine((p) => p.startsWith("/"), "expected an absolute directory path")
            .optional(),
    })
    .strict();

export type LibvirtHostEntry = z.infer<typeof libvirtHostEntry>;

export const libvirtSchema = z
    .object({
        hosts: z.array(libvirtHostEntry, { invalid_type_error: "expected a list of libvirt hosts: [{ name, uri, workers }]" }).default([]),
        // The addresses (and worker numbers) each host's position in the list owns.
        addressesPerHost: int(2, 1024, "the addresses each libvirt host's position owns").default(32),
    })
    .strict()
    .default({});

/** nixspark:network's keys for the bridge mode (merged into its object in configSchema.ts). */
export const networkModeKeys = {
    // "nat": a libvirt NAT network with DHCP on the one host (the default).
    // "bridge": the VMs on a host bridge, each with a static address from its SMBIOS credential.
    mode: z.enum(["nat", "bridge"], { errorMap: () => ({ message: 'expected "nat" (a libvirt network with DHCP on one host) or "bridge" (a host bridge, static addresses)' }) }).default("nat"),
    // Bridge mode: the nodes' default route (none when unset: nodes need none to be deployed).
    gateway: str("an IPv4 address").regex(IPV4, "expected the IPv4 address of a router on the bridge's segment, such as 192.168.50.254").optional(),
};

type Add = (path: (string | number)[], message: string) => void;

/** The rules across nixspark:libvirt, network, workers and libvirtUri. */
export function libvirtHostsProblems(
    c: {
        libvirt: { hosts: LibvirtHostEntry[]; addressesPerHost: number };
        network: { mode: "nat" | "bridge"; bridge?: string; gateway?: string };
        workers: { count: number };
        libvirtUri: string;
        data: { path?: string };
    },
    defaults: { workersCount: number; libvirtUri: string },
    add: Add,
): void {
    const hosts = c.libvirt.hosts;
    const { mode, bridge, gateway } = c.network;
    if (mode === "bridge" && !bridge && hosts.some((h) => !h.bridge)) {
        add(["network", "bridge"], "required with nixspark:network.mode bridge: the host bridge on the shared segment that the VMs plug into (it must exist on every libvirt host), such as br0: pulumi config set --path network.bridge br0");
    }
    if (mode === "nat" && gateway !== undefined) {
        add(["network", "gateway"], "only read with nixspark:network.mode bridge (a NAT network routes through the host itself); remove it: pulumi config rm --path network.gateway");
    }
    if (hosts.length === 0) return;
    if (mode !== "bridge") {
        add(["network", "mode"], `"nat", but nixspark:libvirt.hosts lists ${hosts.length} host(s): a NAT network cannot span hosts; put the VMs on a bridge onto a shared segment: pulumi config set --path network.mode bridge (and network.bridge)`);
    }
    if (c.workers.count !== defaults.workersCount) {
        add(["workers", "count"], "set, but with nixspark:libvirt.hosts each host's workers count decides the cluster's size; remove it: pulumi config rm --path workers.count");
    }
    if (c.libvirtUri !== defaults.libvirtUri) {
        add(["libvirtUri"], "set, but with nixspark:libvirt.hosts each host has its own uri; remove it: pulumi config rm nixspark:libvirtUri");
    }
    if (c.data.path !== undefined && hosts.length > 1) {
        add(["data", "path"], "a directory on one host, but nixspark:libvirt.hosts spreads the VMs over several; mount shared storage on the nodes instead (S3: nixspark:s3), or remove it: pulumi config rm --path data.path");
    }
    const seen = new Map<string, number>();
    const uris = new Map<string, number>();
    hosts.forEach((h, i) => {
        if (seen.has(h.name)) add(["libvirt", "hosts", i, "name"], `"${h.name}" is also host ${seen.get(h.name)}'s name; each host needs its own`);
        else seen.set(h.name, i);
        if (uris.has(h.uri)) add(["libvirt", "hosts", i, "uri"], `${h.uri} is also host ${uris.get(h.uri)}'s uri; list each libvirt host once and give it all its workers`);
        else uris.set(h.uri, i);
        const most = c.libvirt.addressesPerHost - 1;
        if (h.workers > most) {
            add(["libvirt", "hosts", i, "workers"], `${h.workers}, but each host's position owns ${c.libvirt.addressesPerHost} addresses (nixspark:libvirt.addressesPerHost; the first is the master's, or kept free): at most ${most} workers; put the rest on another host`);
        }
    });
}
