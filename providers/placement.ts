// Placement: which libvirt host runs which node, kept in the state, and the
// guard that a change never moves or drops a node behind the user's back
// (nixspark:libvirt.hosts, docs/targets.md).
//
// The program places nodes by each host's position and worker count
// (cluster/topology.ts); it cannot see the state. This resource's inputs are
// that placement, and its check compares them with the placement the state
// holds, in preview as in `up`, before any other resource of the cluster
// changes (they all depend on it):
//   - a host that still has nodes may not leave the list (its VMs would be
//     deleted, workers and their disks with them): set its workers to 0
//     first, `pulumi up` (they are decommissioned and removed), then remove it;
//   - a node may not change host (a reordered list, a host inserted before
//     another, a changed uri): its VM would be deleted on one host and a new
//     one made on another;
//   - addressesPerHost may not change while nodes run on several hosts (the
//     later hosts' workers would be renumbered: new VMs).
// It makes nothing; create, update and delete only record.
import * as pulumi from "@pulumi/pulumi";
import { keptOutputs, providerCodeChanged, UNKNOWN } from "./unknown";
import { providerRef } from "./codeRef";

export interface PlacementInputs {
    /** Each libvirt host by name: its connection URI. */
    hosts: Record<string, string>;
    /** Each node by name: the name of the host that runs it. */
    nodes: Record<string, string>;
    /** nixspark:libvirt.addressesPerHost: the worker numbers each host's position owns. */
    addressesPerHost?: number;
}

/** What a change of placement would do that the guard refuses; one line each, naming the nodes and the fix. */
export function placementProblems(olds: PlacementInputs | undefined, news: PlacementInputs): string[] {
    if (!olds || typeof olds.nodes !== "object" || typeof olds.hosts !== "object" || olds.nodes === null) return [];
    const out: string[] = [];
    const byHost = new Map<string, string[]>();
    for (const [node, host] of Object.entries(olds.nodes)) byHost.set(host, [...(byHost.get(host) ?? []), node]);
    const shown = (host: string) => (host === "" ? "the stack's libvirt host" : `host ${host}`);
    for (const [host, nodes] of byHost) {
        if (host in news.hosts) continue;
        if (nodes.includes("master")) {
            out.push(`${shown(host)} is no longer in nixspark:libvirt.hosts but runs ${nodes.join(", ")}: the master stays on the host it was made on, the first of the list; keep that host first`);
            continue;
        }
        out.push(
            `${shown(host)} is no longer in nixspark:libvirt.hosts but runs ${nodes.join(", ")}: removing it would delete ${nodes.length === 1 ? "that VM" : "those VMs"} with ${nodes.length === 1 ? "its disk" : "their disks"}. ` +
                `Move them first: set its workers to 0 (pulumi config set --path 'libvirt.hosts[N].workers' 0), run pulumi up (they are decommissioned and removed), then remove the host`,
        );
    }
    const moved: string[] = [];
    for (const [node, host] of Object.entries(olds.nodes)) {
        const now = news.nodes[node];
        if (now !== undefined && host in news.hosts && now !== host) moved.push(`${node} from ${shown(host)} to ${shown(now)}`);
    }
    if (moved.length > 0) {
        out.push(
            `this change would move ${moved.join(", ")}: a node's VM stays on the host it was made on. A worker's number comes from its host's position in nixspark:libvirt.hosts, ` +
                `so keep the hosts in their order and add new ones at the end`,
        );
    }
    const per = [olds.addressesPerHost, news.addressesPerHost];
    if (typeof per[0] === "number" && typeof per[1] === "number" && per[0] !== per[1] && byHost.size > 1) {
        out.push(
            `nixspark:libvirt.addressesPerHost changed from ${per[0]} to ${per[1]} while nodes run on ${byHost.size} hosts: the workers of every host after the first would get new numbers, names and addresses (new VMs). ` +
                `Set it back: pulumi config set --path libvirt.addressesPerHost ${per[0]}`,
        );
    }
    for (const [host, nodes] of byHost) {
        const [was, now] = [olds.hosts[host], news.hosts[host]];
        if (now !== undefined && was !== undefined && was !== now) {
            out.push(`${shown(host)} changed its uri from ${was} to ${now} while it runs ${nodes.join(", ")}: that would make those VMs again on another libvirt host. Keep its uri, or move its workers first (workers 0, pulumi up)`);
        }
    }
    return out;
}

export const placementProvider: pulumi.dynamic.ResourceProvider = {
    async check(olds: Record<string, unknown>, news: Record<string, unknown>) {
        const n = news as unknown as PlacementInputs;
        if (n.hosts === (UNKNOWN as unknown) || n.nodes === (UNKNOWN as unknown)) return { inputs: news, failures: [] };
        const problems = placementProblems(olds && Object.keys(olds).length > 0 ? (olds as unknown as PlacementInputs) : undefined, n);
        return { inputs: news, failures: problems.map((reason) => ({ property: "nodes", reason })) };
    },

    async diff(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
        const same = JSON.stringify([olds.hosts, olds.nodes, olds.addressesPerHost]) === JSON.stringify([news.hosts, news.nodes, news.addressesPerHost]);
        return { changes: !same || providerCodeChanged(olds, news), replaces: [], deleteBeforeReplace: false };
    },

    async create(inputs: Record<string, unknown>) {
        return { id: "placement", outs: { hosts: inputs.hosts, nodes: inputs.nodes, addressesPerHost: inputs.addressesPerHost } };
    },

    async update(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
        return { outs: { ...keptOutputs(olds), hosts: news.hosts, nodes: news.nodes, addressesPerHost: news.addressesPerHost } };
    },

    async read(id: string, props: Record<string, unknown>) {
        return { id, props };
    },
};

export class Placement extends pulumi.dynamic.Resource {
    declare readonly nodes: pulumi.Output<Record<string, string>>;
    constructor(name: string, args: PlacementInputs, opts?: pulumi.CustomResourceOptions) {
        super(providerRef("Placement", placementProvider), name, args, opts, "nixspark", "Placement");
    }
}
