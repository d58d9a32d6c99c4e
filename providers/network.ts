// Network: a libvirt NAT network with one DHCP reservation and one DNS entry
// per node. Reservations change in place with `virsh net-update` (live and
// persistent), so scaling never recreates the network; only a new name,
// bridge or subnet replaces it.
import * as pulumi from "@pulumi/pulumi";
import { byMac, DhcpHost, dhcpHostXml, dnsHostXml, networkXml, NetworkSpec, readNetwork } from "./libvirtXml";
import { diffByKeys, dumpXml, virsh, withXmlFile } from "./virsh";

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

export const networkProvider: pulumi.dynamic.ResourceProvider = {
    async check(_olds: any, news: any) {
        const failures = ["uri", "name", "bridge", "gateway", "netmask"].filter((k) => !news[k]).map((k) => ({ property: k, reason: `${k} is required` }));
        return { inputs: news, failures };
    },

    async diff(_id: string, olds: NetworkOutputs, news: NetworkInputs) {
        // The order of reservations is not a change: compare them sorted by MAC.
        const norm = (x: any) => ({ ...x, hosts: Array.isArray(x.hosts) ? sortedHosts(x.hosts) : x.hosts });
        return diffByKeys(norm(olds), norm(news), REPLACE_KEYS, UPDATE_KEYS);
    },

    async create(inputs: NetworkInputs) {
        const spec = { ...inputs, hosts: sortedHosts(inputs.hosts) };
        const existing = await dumpXml(spec.uri, ["net-dumpxml", spec.name]);
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
            await withXmlFile(networkXml(spec), (file) => virsh(spec.uri, ["net-define", file]));
        }
        try {
            const info = await virsh(spec.uri, ["net-info", spec.name]);
            if (!/Active:\s+yes/.test(info.stdout)) await virsh(spec.uri, ["net-start", spec.name]);
            await virsh(spec.uri, ["net-autostart", spec.name, ...(spec.autostart ? [] : ["--disable"])]);
        } catch (e) {
            if (existing === undefined) {
                // Leave nothing half-created behind.
                await virsh(spec.uri, ["net-destroy", spec.name], { allowFailure: true });
                await virsh(spec.uri, ["net-undefine", spec.name], { allowFailure: true });
            }
            throw e;
        }
        const facts = readNetwork((await dumpXml(spec.uri, ["net-dumpxml", spec.name])) ?? "");
        const outs: NetworkOutputs = { ...spec, uuid: facts.uuid ?? "", active: true };
        return { id: spec.name, outs };
    },

    async update(_id: string, olds: NetworkOutputs, news: NetworkInputs) {
        const uri = news.uri;
        const info = await virsh(uri, ["net-info", news.name]);
        const scope = /Active:\s+yes/.test(info.stdout) ? ["--live", "--config"] : ["--config"];
        // Plan against what libvirt has now, not only the recorded state: a
        // reservation added or removed by hand must not make net-update fail.
        const current = readNetwork((await dumpXml(uri, ["net-dumpxml", news.name, "--inactive"])) ?? "").hosts;
        const plan = planHostChanges(current, news.hosts);
        const upd = (command: string, section: string, xml: string) => virsh(uri, ["net-update", news.name, command, section, xml, ...scope]);
        for (const h of plan.remove) {
            await upd("delete", "ip-dhcp-host", dhcpHostXml(h));
            await upd("delete", "dns-host", dnsHostXml(h)).catch(() => undefined); // absent DNS entry: nothing to remove
        }
        for (const { from, to } of plan.modify) {
            await upd("modify", "ip-dhcp-host", dhcpHostXml(to));
            await upd("delete", "dns-host", dnsHostXml(from)).catch(() => undefined);
            await upd("add-last", "dns-host", dnsHostXml(to));
        }
        for (const h of plan.add) {
            await upd("add-last", "ip-dhcp-host", dhcpHostXml(h));
            await upd("add-last", "dns-host", dnsHostXml(h));
        }
        if (olds.autostart !== news.autostart) await virsh(uri, ["net-autostart", news.name, ...(news.autostart ? [] : ["--disable"])]);
        const facts = readNetwork((await dumpXml(uri, ["net-dumpxml", news.name])) ?? "");
        const outs: NetworkOutputs = { ...news, hosts: sortedHosts(news.hosts), uuid: facts.uuid ?? olds.uuid, active: scope.length === 2 };
        return { outs };
    },

    async read(id: string, props: NetworkOutputs) {
        const xml = await dumpXml(props.uri, ["net-dumpxml", id]);
        if (xml === undefined) return { id: undefined as unknown as string, props: {} }; // gone: refresh drops it
        const f = readNetwork(xml);
        const info = await virsh(props.uri, ["net-info", id]);
        const outs: NetworkOutputs = {
            ...props,
            bridge: f.bridge ?? props.bridge,
            gateway: f.gateway ?? props.gateway,
            netmask: f.netmask ?? props.netmask,
            dhcpStart: f.dhcpStart ?? props.dhcpStart,
            dhcpEnd: f.dhcpEnd ?? props.dhcpEnd,
            hosts: f.hosts.map((h) => ({ ...h, name: h.name || props.hosts.find((p) => p.mac === h.mac)?.name || "" })),
            autostart: /Autostart:\s+yes/.test(info.stdout),
            uuid: f.uuid ?? props.uuid,
            active: /Active:\s+yes/.test(info.stdout),
        };
        return { id, props: outs };
    },

    async delete(id: string, props: NetworkOutputs) {
        const xml = await dumpXml(props.uri, ["net-dumpxml", id]);
        if (xml === undefined) return;
        // net-destroy stops dnsmasq too; it would otherwise outlive the network.
        await virsh(props.uri, ["net-destroy", id], { allowFailure: true });
        await virsh(props.uri, ["net-undefine", id]);
    },
};

export class Network extends pulumi.dynamic.Resource {
    declare readonly uuid: pulumi.Output<string>;
    declare readonly name: pulumi.Output<string>;
    declare readonly hosts: pulumi.Output<DhcpHost[]>;
    constructor(name: string, args: { [K in keyof NetworkInputs]: pulumi.Input<NetworkInputs[K]> }, opts?: pulumi.CustomResourceOptions) {
        super(networkProvider, name, { ...args, uuid: undefined, active: undefined }, { deleteBeforeReplace: true, ...opts }, "nixspark", "Network");
    }
}
