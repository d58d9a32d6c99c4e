// Volume: a qcow2 copy-on-write overlay on the base image, one per node.
// Any change replaces it (a node's disk is rebuilt from the image); the
// Domain carries the same size input so it is replaced along with its disk.
import * as pulumi from "@pulumi/pulumi";
import { readVolume, volumeXml } from "./libvirtXml";
import { diffByKeys, dumpXml, virsh, withXmlFile } from "./virsh";

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
        const existing = await dumpXml(inputs.uri, ["vol-dumpxml", "--pool", inputs.pool, inputs.name]);
        if (existing !== undefined) {
            const f = readVolume(existing);
            if (f.backingPath !== inputs.backingPath) {
                throw new Error(
                    `volume "${inputs.name}" already exists in pool "${inputs.pool}" backed by ${f.backingPath ?? "nothing"}, not ${inputs.backingPath}; ` +
                        `delete it (virsh vol-delete --pool ${inputs.pool} ${inputs.name}) and run again`,
                );
            }
        } else {
            await withXmlFile(volumeXml(inputs), (f) => virsh(inputs.uri, ["vol-create", inputs.pool, f]));
        }
        const path = (await virsh(inputs.uri, ["vol-path", "--pool", inputs.pool, inputs.name])).stdout.trim();
        const outs: VolumeOutputs = { ...inputs, path };
        return { id: `${inputs.pool}/${inputs.name}`, outs };
    },

    async read(id: string, props: VolumeOutputs) {
        const xml = await dumpXml(props.uri, ["vol-dumpxml", "--pool", props.pool, props.name]);
        if (xml === undefined) return { id: undefined as unknown as string, props: {} };
        const f = readVolume(xml);
        return { id, props: { ...props, path: f.path ?? props.path, backingPath: f.backingPath ?? props.backingPath, capacityBytes: f.capacityBytes ?? props.capacityBytes } };
    },

    async delete(_id: string, props: VolumeOutputs) {
        if ((await dumpXml(props.uri, ["vol-dumpxml", "--pool", props.pool, props.name])) === undefined) return;
        await virsh(props.uri, ["vol-delete", "--pool", props.pool, props.name]);
    },
};

export class Volume extends pulumi.dynamic.Resource {
    declare readonly path: pulumi.Output<string>;
    constructor(name: string, args: { [K in keyof VolumeInputs]: pulumi.Input<VolumeInputs[K]> }, opts?: pulumi.CustomResourceOptions) {
        super(volumeProvider, name, { ...args, path: undefined }, { deleteBeforeReplace: true, ...opts }, "nixspark", "Volume");
    }
}
