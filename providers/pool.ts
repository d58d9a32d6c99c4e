// StoragePool: the stack's directory pool that holds the node volumes.
// One per stack, so `pulumi destroy` removes it after the last volume.
//
// Autostarted, and repaired rather than forgotten: after a host reboot a pool
// that did not come back is reported by `read` (active: false, the resource
// stays in state) and started again by the next `up` (update).
import * as pulumi from "@pulumi/pulumi";
import { poolXml, readPool } from "./libvirtXml";
import { keptOutputs } from "./unknown";
import { diffByKeys, infoFields, label, lookup, virsh, withXmlFile } from "./virsh";
import { providerRef } from "./codeRef";

export interface PoolInputs {
    uri: string;
    name: string;
    path: string;
}

export interface PoolOutputs extends PoolInputs {
    /** Running, as last seen. */
    active: boolean;
    /** Starts with libvirtd (after a host reboot), as last seen. */
    autostart: boolean;
}

/** Starts the pool if it is not running and sets it to autostart; returns what libvirt then says. */
async function ensureRunning(uri: string, name: string, repair = true): Promise<{ active: boolean; autostart: boolean }> {
    const what = label("pool", name);
    const info = infoFields((await virsh(uri, ["pool-info", name], { what })).stdout);
    if (info.State !== "running") {
        if (repair) console.error(`${what} was ${info.State || "not running"}: starting it`);
        // Creates the directory if someone removed it; fine when it exists.
        await virsh(uri, ["pool-build", name], { allowFailure: true, what });
        await virsh(uri, ["pool-start", name], { what });
    }
    if (info.Autostart !== "yes") await virsh(uri, ["pool-autostart", name], { what });
    const now = infoFields((await virsh(uri, ["pool-info", name], { what })).stdout);
    return { active: now.State === "running", autostart: now.Autostart === "yes" };
}

export const poolProvider: pulumi.dynamic.ResourceProvider = {
    async check(_olds: any, news: any) {
        const failures = (news.path && !String(news.path).startsWith("/")) ? [{ property: "path", reason: "path must be absolute" }] : [];
        return { inputs: news, failures };
    },

    async diff(_id: string, olds: PoolOutputs, news: PoolInputs) {
        const d = diffByKeys(olds as any, news as any, ["uri", "name", "path"], []);
        // Refresh saw it stopped or not autostarted: the next `up` repairs it.
        if (d.replaces.length === 0 && (olds.active === false || olds.autostart === false)) return { ...d, changes: true };
        return d;
    },

    async create(inputs: PoolInputs) {
        const what = label("pool", inputs.name);
        const existing = await lookup(inputs.uri, "pool", inputs.name, ["pool-dumpxml", inputs.name]);
        let defined = false;
        if (existing !== undefined) {
            const have = readPool(existing).path;
            if (have !== inputs.path) {
                throw new Error(
                    `${what} already exists with path ${have}, not ${inputs.path}; ` +
                        `remove it (virsh pool-destroy ${inputs.name}; virsh pool-undefine ${inputs.name}) or set nixspark:storage.path`,
                );
            }
        } else {
            await withXmlFile(poolXml(inputs.name, inputs.path), (f) => virsh(inputs.uri, ["pool-define", f], { what }));
            defined = true;
            await virsh(inputs.uri, ["pool-build", inputs.name], { allowFailure: true, what }); // creates the directory; fine when it exists
        }
        let state: { active: boolean; autostart: boolean };
        try {
            state = await ensureRunning(inputs.uri, inputs.name, !defined);
        } catch (e) {
            if (defined) await virsh(inputs.uri, ["pool-undefine", inputs.name], { allowFailure: true, what });
            throw e;
        }
        const outs: PoolOutputs = { ...inputs, ...state };
        return { id: inputs.name, outs };
    },

    // Repairs (starts, sets autostart); name and path never change here (they
    // replace). When only the provider code changed this keeps the outputs
    // and the engine stores the new code with them.
    async update(id: string, olds: PoolOutputs, news: PoolInputs) {
        const state = await ensureRunning(news.uri, id);
        return { outs: { ...keptOutputs({ ...olds, ...news } as any), ...state } };
    },

    async read(id: string, props: PoolOutputs) {
        const xml = await lookup(props.uri, "pool", id, ["pool-dumpxml", id]);
        if (xml === undefined) return { id: undefined as unknown as string, props: {} };
        const info = infoFields((await virsh(props.uri, ["pool-info", id], { what: label("pool", id) })).stdout);
        const active = info.State === "running";
        if (!active) console.error(`${label("pool", id)} is ${info.State || "not running"}; the next \`pulumi up\` starts it`);
        const outs = {
            ...props,
            path: readPool(xml).path ?? props.path,
            type: readPool(xml).type,
            active,
            autostart: info.Autostart === "yes",
        };
        return { id, props: outs };
    },

    // Works whether the pool runs or not (a host reboot stops it): the volumes
    // are gone by now; pool-delete removes the directory only when it is
    // empty, so never anyone's files.
    async delete(id: string, props: PoolOutputs) {
        const what = label("pool", id);
        const info = await lookup(props.uri, "pool", id, ["pool-info", id]);
        if (info === undefined) return;
        if (infoFields(info).State === "running") await virsh(props.uri, ["pool-destroy", id], { what });
        const del = await virsh(props.uri, ["pool-delete", id], { allowFailure: true, what });
        if (del.code !== 0) console.error(`${what}: its directory ${props.path} was not removed (${del.stderr.trim()})`);
        await virsh(props.uri, ["pool-undefine", id], { what });
    },
};

export class StoragePool extends pulumi.dynamic.Resource {
    declare readonly name: pulumi.Output<string>;
    declare readonly path: pulumi.Output<string>;
    declare readonly active: pulumi.Output<boolean>;
    declare readonly autostart: pulumi.Output<boolean>;
    constructor(name: string, args: { [K in keyof PoolInputs]: pulumi.Input<PoolInputs[K]> }, opts?: pulumi.CustomResourceOptions) {
        super(providerRef("StoragePool", poolProvider), name, { ...args, active: undefined, autostart: undefined }, { deleteBeforeReplace: true, ...opts }, "nixspark", "StoragePool");
    }
}
