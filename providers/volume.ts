// Volume: a qcow2 copy-on-write overlay on the base image, one per node.
// Any change replaces it (a node's disk is rebuilt from the image); the
// Domain carries the same size input so it is replaced along with its disk.
import * as pulumi from "@pulumi/pulumi";
import { readVolume, volumeXml } from "./libvirtXml";
import { keptOutputs } from "./unknown";
import { diffByKeys, isNotFound, isPoolInactive, label, lookup, virsh, virshError, withXmlFile } from "./virsh";

export interface VolumeInputs {
    uri: string;
    pool: string;
    name: string;
    backingPath: string;
    capacityBytes: number;
}

export interface VolumeOutputs extends VolumeInputs {
    path: string;
}

/**
 * The volume's XML, undefined when libvirt says the volume does not exist.
 * A pool that is not running (a host reboot) is started first when `start`
 * is set, and otherwise reported as "inactive".
 */
async function volumeXmlOf(p: VolumeInputs, start: boolean): Promise<string | undefined | "inactive"> {
    const args = ["vol-dumpxml", "--pool", p.pool, p.name];
    const what = label("volume", `${p.pool}/${p.name}`);
    for (let attempt = 1; ; attempt++) {
        const r = await virsh(p.uri, args, { allowFailure: true, what });
        if (r.code === 0) return r.stdout;
        if (isNotFound("volume", r.stderr)) return undefined;
        if (!isPoolInactive(r.stderr)) throw virshError(args, r, what);
        if (!start || attempt > 1) return "inactive";
        console.error(`${what}: ${label("pool", p.pool)} is not running; starting it`);
        await virsh(p.uri, ["pool-start", p.pool], { what: label("pool", p.pool) });
    }
}

export const volumeProvider: pulumi.dynamic.ResourceProvider = {
    async check(_olds: any, news: any) {
        const failures = [];
        if (typeof news.capacityBytes === "number" && news.capacityBytes <= 0) failures.push({ property: "capacityBytes", reason: "capacity must be positive" });
        return { inputs: news, failures };
    },

    async diff(_id: string, olds: VolumeOutputs, news: VolumeInputs) {
        return diffByKeys(olds as any, news as any, ["uri", "pool", "name", "backingPath", "capacityBytes"], []);
    },

    async create(inputs: VolumeInputs) {
        const fs = require("node:fs") as typeof import("node:fs");
        if (!fs.existsSync(inputs.backingPath)) {
            throw new Error(`base image ${inputs.backingPath} does not exist; build it (see README) or set nixspark:image.path`);
        }
        const existing = await volumeXmlOf(inputs, true);
        if (existing === "inactive") throw new Error(`${label("pool", inputs.pool)} is not running and did not start`);
        if (existing !== undefined) {
            const f = readVolume(existing);
            if (f.backingPath !== inputs.backingPath) {
                throw new Error(
                    `volume "${inputs.name}" already exists in pool "${inputs.pool}" backed by ${f.backingPath ?? "nothing"}, not ${inputs.backingPath}; ` +
                        `delete it (virsh vol-delete --pool ${inputs.pool} ${inputs.name}) and run again`,
                );
            }
        } else {
            await withXmlFile(volumeXml(inputs), (f) => virsh(inputs.uri, ["vol-create", inputs.pool, f], { what: label("volume", `${inputs.pool}/${inputs.name}`) }));
        }
        const path = (await virsh(inputs.uri, ["vol-path", "--pool", inputs.pool, inputs.name], { what: label("volume", `${inputs.pool}/${inputs.name}`) })).stdout.trim();
        const outs: VolumeOutputs = { ...inputs, path };
        return { id: `${inputs.pool}/${inputs.name}`, outs };
    },

    // Every input replaces (see diff), so an update only ever means new
    // provider code: keep the outputs; the engine stores the new code.
    async update(_id: string, olds: VolumeOutputs, _news: VolumeInputs) {
        return { outs: keptOutputs(olds as any) };
    },

    async read(id: string, props: VolumeOutputs) {
        const xml = await volumeXmlOf(props, false);
        if (xml === undefined) return { id: undefined as unknown as string, props: {} };
        if (xml === "inactive") {
            // A stopped pool (host reboot) says nothing about its volumes: keep what is recorded.
            console.error(`${label("volume", `${props.pool}/${props.name}`)}: ${label("pool", props.pool)} is not running, keeping the recorded state; the next \`pulumi up\` starts the pool`);
            return { id, props };
        }
        const f = readVolume(xml);
        return { id, props: { ...props, path: f.path ?? props.path, backingPath: f.backingPath ?? props.backingPath, capacityBytes: f.capacityBytes ?? props.capacityBytes } };
    },

    // After a host reboot the pool may be stopped: it is started, then the volume deleted.
    async delete(_id: string, props: VolumeOutputs) {
        const xml = await volumeXmlOf(props, true);
        if (xml === undefined) return;
        if (xml === "inactive") throw new Error(`${label("volume", `${props.pool}/${props.name}`)}: ${label("pool", props.pool)} is not running and did not start`);
        await virsh(props.uri, ["vol-delete", "--pool", props.pool, props.name], { what: label("volume", `${props.pool}/${props.name}`) });
    },
};

export class Volume extends pulumi.dynamic.Resource {
    declare readonly path: pulumi.Output<string>;
    constructor(name: string, args: { [K in keyof VolumeInputs]: pulumi.Input<VolumeInputs[K]> }, opts?: pulumi.CustomResourceOptions) {
        super(volumeProvider, name, { ...args, path: undefined }, { deleteBeforeReplace: true, ...opts }, "nixspark", "Volume");
    }
}
