// Network: a libvirt NAT network with one DHCP reservation and one DNS entry
// per node. Reservations change in place with `virsh net-update` (live and
// persistent), so scaling never recreates the network; only a new name,
// bridge or subnet replaces it. A network that is not running (a host
// reboot, net-destroy by hand) is reported by `read` (active: false, the
// resource stays in state) and started again by the next `up`.
import * as pulumi from "@pulumi/pulumi";
import { byMac, DhcpHost, dhcpHostXml, DnsEntry, dnsEntryXml, dnsHostXml, networkXml, NetworkSpec, readNetwork } from "./libvirtXml";
import { diffByKeys, infoFields, label, lookup, virsh, withXmlFile } from "./virsh";
import { providerRef } from "./codeRef";

export interface NetworkInputs extends NetworkSpec {
    uri: string;
    autostart: boolean;
}

export interface NetworkOutputs extends NetworkInputs {
    uuid: string;
    active: boolean;
}

const REPLACE_KEYS = ["uri", "name", "bridge", "gateway", "netmask", "dhcpStart", "dhcpEnd"];
const UPDATE_KEYS = ["hosts", "autostart"];

function sortedHosts(hosts: DhcpHost[]): DhcpHost[] {
    if (!Array.isArray(hosts)) return hosts;
    return [...hosts].map((h) => ({ mac: h.mac.toLowerCase(), ip: h.ip, name: h.name })).sort(byMac);
}

/** What must change to turn `from` into `to`: by MAC, as dnsmasq keys reservations. */
export function planHostChanges(from: DhcpHost[], to: DhcpHost[]): { add: DhcpHost[]; remove: DhcpHost[]; modify: { from: DhcpHost; to: DhcpHost }[] } {
    const before = new Map(sortedHosts(from).map((h) => [h.mac, h]));
    const after = new Map(sortedHosts(to).map((h) => [h.mac, h]));
    const add = [...after.values()].filter((h) => !before.has(h.mac));
    const remove = [...before.values()].filter((h) => !after.has(h.mac));
    const modify = [...after.values()]
        .filter((h) => before.has(h.mac) && JSON.stringify(before.get(h.mac)) !== JSON.stringify(h))
        .map((h) => ({ from: before.get(h.mac)!, to: h }));
    return { add, remove, modify };
}

/**
 * The DNS entries to delete, by address: those libvirt holds for an address
 * that loses its node (`leaving`) or that a node moves to (`arriving`), as
 * libvirt holds them. An address with no entry deletes nothing.
 */
export function planDnsDeletes(live: DnsEntry[], leaving: DhcpHost[], arriving: DhcpHost[]): Map<string, DnsEntry[]> {
    const out = new Map<string, DnsEntry[]>();
    for (const ip of new Set([...leaving, ...arriving].map((h) => h.ip))) {
        const entries = live.filter((e) => e.ip === ip);
        if (entries.length > 0) out.set(ip, entries);
    }
    return out;
}

/** Starts the network if it is not running. */
async function ensureActive(uri: string, name: string, repair = true): Promise<void> {
    const what = label("network", name);
    const info = infoFields((await virsh(uri, ["net-info", name], { what })).stdout);
    if (info.Active !== "yes") {
        if (repair) console.error(`${what} is not running: starting it`);
        await virsh(uri, ["net-start", name], { what });
    }
}

export const networkProvider: pulumi.dynamic.ResourceProvider = {
    async check(_olds: any, news: any) {
        const failures = ["uri", "name", "bridge", "gateway", "netmask"].filter((k) => !news[k]).map((k) => ({ property: k, reason: `${k} is required` }));
        return { inputs: news, failures };
    },

    async diff(_id: string, olds: NetworkOutputs, news: NetworkInputs) {
        // The order of reservations is not a change: compare them sorted by MAC.
        const norm = (x: any) => ({ ...x, hosts: Array.isArray(x.hosts) ? sortedHosts(x.hosts) : x.hosts });
        const d = diffByKeys(norm(olds), norm(news), REPLACE_KEYS, UPDATE_KEYS);
        // Refresh saw it stopped: the next `up` starts it (an update).
        if (d.replaces.length === 0 && olds.active === false) return { ...d, changes: true };
        return d;
    },

    async create(inputs: NetworkInputs) {
        const spec = { ...inputs, hosts: sortedHosts(inputs.hosts) };
        const what = label("network", spec.name);
        const existing = await lookup(spec.uri, "network", spec.name, ["net-dumpxml", spec.name]);
        if (existing !== undefined) {
            // Adopt only an identical network (a re-run after a lost state file); never silently take over another.
            const f = readNetwork(existing);
            const mismatch = (["bridge", "gateway", "netmask", "dhcpStart", "dhcpEnd"] as const).filter((k) => f[k] !== spec[k]);
            if (JSON.stringify(f.hosts) !== JSON.stringify(spec.hosts)) mismatch.push("hosts" as any);
            if (mismatch.length > 0) {
                throw new Error(
                    `libvirt network "${spec.name}" already exists and differs in ${mismatch.join(", ")}; ` +
                        `remove it (virsh net-destroy ${spec.name}; virsh net-undefine ${spec.name}) or choose another nixspark:network.name`,
                );
            }
        } else {
            await withXmlFile(networkXml(spec), (file) => virsh(spec.uri, ["net-define", file], { what }));
        }
        try {
            await ensureActive(spec.uri, spec.name, existing !== undefined);
            await virsh(spec.uri, ["net-autostart", spec.name, ...(spec.autostart ? [] : ["--disable"])], { what });
        } catch (e) {
            if (existing === undefined) {
                // Leave nothing half-created behind.
                await virsh(spec.uri, ["net-destroy", spec.name], { allowFailure: true, what });
                await virsh(spec.uri, ["net-undefine", spec.name], { allowFailure: true, what });
            }
            throw e;
        }
        const facts = readNetwork((await virsh(spec.uri, ["net-dumpxml", spec.name], { what })).stdout);
        const outs: NetworkOutputs = { ...spec, uuid: facts.uuid ?? "", active: true };
        return { id: spec.name, outs };
    },

    async update(_id: string, olds: NetworkOutputs, news: NetworkInputs) {
        const uri = news.uri;
        const what = label("network", news.name);
        // A stopped network (host reboot) is started first, so the changes
        // below reach the running dnsmasq as well as the definition.
        await ensureActive(uri, news.name);
        const scope = ["--live", "--config"];
        // Plan against what libvirt has now, not only the recorded state: a
        // reservation or DNS entry added or removed by hand must not make
        // net-update fail. DNS entries are deleted as libvirt holds them (by
        // address, with the names it has), and only when they are there; a
        // failure to delete one is an error.
        const live = readNetwork((await virsh(uri, ["net-dumpxml", news.name, "--inactive"], { what })).stdout);
        const plan = planHostChanges(live.hosts, news.hosts);
        const upd = (command: string, section: string, xml: string) => virsh(uri, ["net-update", news.name, command, section, xml, ...scope], { what });
        const dnsDeletes = planDnsDeletes(live.dnsHosts, [...plan.remove, ...plan.modify.map((m) => m.from)], plan.modify.map((m) => m.to));
        const deleteDns = async (e: DnsEntry, of: string) => {
            try {
                await upd("delete", "dns-host", dnsEntryXml(e));
            } catch (err) {
                throw new Error(
                    `${what}: removing the DNS entry of ${of} (${e.ip}) failed: ${(err as Error).message}; ` +
                        `see \`virsh net-dumpxml ${news.name}\`, remove the entry by hand (virsh net-update ${news.name} delete dns-host ...) and run \`pulumi up\` again`,
                );
            }
        };
        for (const h of plan.remove) {
            await upd("delete", "ip-dhcp-host", dhcpHostXml(h));
            for (const e of dnsDeletes.get(h.ip) ?? []) await deleteDns(e, h.name);
        }
        for (const { from, to } of plan.modify) {
            await upd("modify", "ip-dhcp-host", dhcpHostXml(to));
            for (const ip of new Set([from.ip, to.ip])) {
                for (const e of dnsDeletes.get(ip) ?? []) await deleteDns(e, from.name);
                dnsDeletes.delete(ip);
            }
            await upd("add-last", "dns-host", dnsHostXml(to));
        }
        for (const h of plan.add) {
            await upd("add-last", "ip-dhcp-host", dhcpHostXml(h));
            await upd("add-last", "dns-host", dnsHostXml(h));
        }
        if (olds.autostart !== news.autostart) await virsh(uri, ["net-autostart", news.name, ...(news.autostart ? [] : ["--disable"])], { what });
        const facts = readNetwork((await virsh(uri, ["net-dumpxml", news.name], { what })).stdout);
        const info = infoFields((await virsh(uri, ["net-info", news.name], { what })).stdout);
        const outs: NetworkOutputs = { ...news, hosts: sortedHosts(news.hosts), uuid: facts.uuid ?? olds.uuid, active: info.Active === "yes" };
        return { outs };
    },

    async read(id: string, props: NetworkOutputs) {
        const xml = await lookup(props.uri, "network", id, ["net-dumpxml", id]);
        if (xml === undefined) return { id: undefined as unknown as string, props: {} }; // gone: refresh drops it
        const f = readNetwork(xml);
        const info = infoFields((await virsh(props.uri, ["net-info", id], { what: label("network", id) })).stdout);
        if (info.Active !== "yes") console.error(`${label("network", id)} is not running; the next \`pulumi up\` starts it`);
        const outs: NetworkOutputs = {
            ...props,
            bridge: f.bridge ?? props.bridge,
            gateway: f.gateway ?? props.gateway,
            netmask: f.netmask ?? props.netmask,
            dhcpStart: f.dhcpStart ?? props.dhcpStart,
            dhcpEnd: f.dhcpEnd ?? props.dhcpEnd,
            hosts: f.hosts.map((h) => ({ ...h, name: h.name || props.hosts.find((p) => p.mac === h.mac)?.name || "" })),
            autostart: info.Autostart === "yes",
            uuid: f.uuid ?? props.uuid,
            active: info.Active === "yes",
        };
        return { id, props: outs };
    },

    async delete(id: string, props: NetworkOutputs) {
        const what = label("network", id);
        const info = await lookup(props.uri, "network", id, ["net-info", id]);
        if (info === undefined) return;
        // net-destroy stops dnsmasq too; it would otherwise outlive the network.
        // A stopped network (host reboot) is only undefined.
        if (infoFields(info).Active === "yes") await virsh(props.uri, ["net-destroy", id], { what });
        await virsh(props.uri, ["net-undefine", id], { what });
    },
};

export class Network extends pulumi.dynamic.Resource {
    declare readonly uuid: pulumi.Output<string>;
    declare readonly name: pulumi.Output<string>;
    declare readonly hosts: pulumi.Output<DhcpHost[]>;
    constructor(name: string, args: { [K in keyof NetworkInputs]: pulumi.Input<NetworkInputs[K]> }, opts?: pulumi.CustomResourceOptions) {
        super(providerRef("Network", networkProvider), name, { ...args, uuid: undefined, active: undefined }, { deleteBeforeReplace: true, ...opts }, "nixspark", "Network");
    }
}
