// StoragePool: the stack's directory pool that holds the node volumes.
// One per stack, so `pulumi destroy` removes it after the last volume.
import * as pulumi from "@pulumi/pulumi";
import { elements, poolXml, section, text } from "./libvirtXml";
import { diffByKeys, dumpXml, virsh, withXmlFile } from "./virsh";

export interface PoolInputs {
    uri: string;
    name: string;
    path: string;
}

export const poolProvider: pulumi.dynamic.ResourceProvider = {
    async check(_olds: any, news: any) {
        const failures = (news.path && !String(news.path).startsWith("/")) ? [{ property: "path", reason: "path must be absolute" }] : [];
        return { inputs: news, failures };
    },

    async diff(_id: string, olds: PoolInputs, news: PoolInputs) {
        return diffByKeys(olds as any, news as any, ["uri", "name", "path"], []);
    },

    async create(inputs: PoolInputs) {
        const existing = await dumpXml(inputs.uri, ["pool-dumpxml", inputs.name]);
        let defined = false;
        if (existing !== undefined) {
            const have = text(section(existing, "target"), "path");
            if (have !== inputs.path) {
                throw new Error(
                    `libvirt storage pool "${inputs.name}" already exists with path ${have}, not ${inputs.path}; ` +
                        `remove it (virsh pool-destroy ${inputs.name}; virsh pool-undefine ${inputs.name}) or set nixspark:storage.path`,
                );
            }
        } else {
            await withXmlFile(poolXml(inputs.name, inputs.path), (f) => virsh(inputs.uri, ["pool-define", f]));
            defined = true;
        }
        try {
            await virsh(inputs.uri, ["pool-build", inputs.name], { allowFailure: true }); // creates the directory; fine when it exists
            const info = await virsh(inputs.uri, ["pool-info", inputs.name]);
            if (!/State:\s+running/.test(info.stdout)) await virsh(inputs.uri, ["pool-start", inputs.name]);
        } catch (e) {
            if (defined) await virsh(inputs.uri, ["pool-undefine", inputs.name], { allowFailure: true });
            throw e;
        }
        return { id: inputs.name, outs: { ...inputs } };
    },

    async read(id: string, props: PoolInputs) {
        const xml = await dumpXml(props.uri, ["pool-dumpxml", id]);
        if (xml === undefined) return { id: undefined as unknown as string, props: {} };
        return { id, props: { ...props, path: text(section(xml, "target"), "path") ?? props.path, type: elements(xml, "pool")[0]?.type } };
    },

    async delete(id: string, props: PoolInputs) {
        if ((await dumpXml(props.uri, ["pool-dumpxml", id])) === undefined) return;
        await virsh(props.uri, ["pool-destroy", id], { allowFailure: true });
        // pool-delete removes the directory only when it is empty: never anyone's files.
        await virsh(props.uri, ["pool-delete", id], { allowFailure: true });
        await virsh(props.uri, ["pool-undefine", id]);
    },
};

export class StoragePool extends pulumi.dynamic.Resource {
    declare readonly name: pulumi.Output<string>;
    declare readonly path: pulumi.Output<string>;
    constructor(name: string, args: { [K in keyof PoolInputs]: pulumi.Input<PoolInputs[K]> }, opts?: pulumi.CustomResourceOptions) {
        super(poolProvider, name, args, { deleteBeforeReplace: true, ...opts }, "nixspark", "StoragePool");
    }
}
