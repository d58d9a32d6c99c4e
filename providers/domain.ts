// Domain: one VM. Memory and vCPUs change in place (persisted in the
// definition for the next boot, and said so); everything else replaces the
// VM, delete-before-replace because libvirt names are fixed.
import * as pulumi from "@pulumi/pulumi";
import { domainXml, readDomain } from "./libvirtXml";
import { isUnknown } from "./unknown";
import { diffByKeys, dumpXml, sleep, virsh, withXmlFile } from "./virsh";

export interface DomainInputs {
    uri: string;
    name: string;
    domainType: "kvm" | "qemu";
    vcpus: number;
    memoryMiB: number;
    diskPath: string;
    /** The disk's size: not part of the XML, but a new disk means a new VM. */
    diskGiB: number;
    mac: string;
    network: string;
    consoleLog: string;
    autostart: boolean;
    kernel?: string;
    initrd?: string;
    cmdline?: string;
    /** Seconds a guest gets to shut down on delete before it is destroyed. */
    shutdownTimeoutSeconds: number;
}

export interface DomainOutputs extends DomainInputs {
    uuid: string;
    /** libvirt's state as last seen: "running", "shut off", ... */
    state: string;
    /** Memory or vCPU changes saved in the definition that the running VM has not picked up yet. */
    pendingRestart: boolean;
}

const REPLACE_KEYS = ["uri", "name", "domainType", "diskPath", "diskGiB", "mac", "network", "consoleLog", "kernel", "initrd", "cmdline"];
const UPDATE_KEYS = ["vcpus", "memoryMiB", "autostart"];

async function domState(uri: string, name: string): Promise<string | undefined> {
    const r = await virsh(uri, ["domstate", name], { allowFailure: true });
    if (r.code !== 0) {
        if (/not found|no domain/i.test(r.stderr)) return undefined;
        throw new Error(`virsh domstate ${name}: ${r.stderr.trim()}`);
    }
    return r.stdout.trim();
}

export const domainProvider: pulumi.dynamic.ResourceProvider = {
    async check(_olds: any, news: any) {
        const failures = [];
        if (typeof news.domainType === "string" && !isUnknown(news.domainType) && !["kvm", "qemu"].includes(news.domainType)) {
            failures.push({ property: "domainType", reason: 'domainType must be "kvm" or "qemu"' });
        }
        return { inputs: news, failures };
    },

    async diff(_id: string, olds: DomainOutputs, news: DomainInputs) {
        const d = diffByKeys(olds as any, news as any, REPLACE_KEYS, UPDATE_KEYS);
        // Refresh saw the VM shut off: the next `up` starts it again.
        if (olds.state && olds.state !== "running" && !d.changes) return { changes: true, replaces: [], deleteBeforeReplace: true };
        return d;
    },

    async create(inputs: DomainInputs) {
        const existing = await dumpXml(inputs.uri, ["dumpxml", "--inactive", inputs.name]);
        let defined = false;
        if (existing !== undefined) {
            const f = readDomain(existing);
            const want = { domainType: inputs.domainType, vcpus: inputs.vcpus, memoryMiB: inputs.memoryMiB, diskPath: inputs.diskPath, mac: inputs.mac.toLowerCase(), network: inputs.network };
            const mismatch = (Object.keys(want) as (keyof typeof want)[]).filter((k) => f[k] !== want[k]);
            if (mismatch.length > 0) {
                throw new Error(
                    `libvirt domain "${inputs.name}" already exists and differs in ${mismatch.join(", ")}; ` +
                        `remove it (virsh destroy ${inputs.name}; virsh undefine --nvram ${inputs.name}) or use another stack name`,
                );
            }
        } else {
            await withXmlFile(domainXml(inputs), (f) => virsh(inputs.uri, ["define", f]));
            defined = true;
        }
        try {
            await virsh(inputs.uri, ["autostart", inputs.name, ...(inputs.autostart ? [] : ["--disable"])]);
            if ((await domState(inputs.uri, inputs.name)) !== "running") await virsh(inputs.uri, ["start", inputs.name]);
            const state = await domState(inputs.uri, inputs.name);
            if (state !== "running") throw new Error(`domain ${inputs.name} did not start: state is "${state}"; see ${inputs.consoleLog}`);
        } catch (e) {
            if (defined) {
                // Leave nothing half-created behind.
                await virsh(inputs.uri, ["destroy", inputs.name], { allowFailure: true });
                await virsh(inputs.uri, ["undefine", "--nvram", inputs.name], { allowFailure: true });
            }
            throw e;
        }
        const f = readDomain((await dumpXml(inputs.uri, ["dumpxml", inputs.name])) ?? "");
        const outs: DomainOutputs = { ...inputs, uuid: f.uuid ?? "", state: "running", pendingRestart: false };
        return { id: inputs.name, outs };
    },

    async update(id: string, olds: DomainOutputs, news: DomainInputs) {
        const uri = news.uri;
        let pendingRestart = olds.pendingRestart ?? false;
        const kib = (mib: number) => String(mib * 1024);
        if (news.memoryMiB !== olds.memoryMiB) {
            // Grow the ceiling first, shrink it last, so each step is valid.
            if (news.memoryMiB > olds.memoryMiB) await virsh(uri, ["setmaxmem", id, kib(news.memoryMiB), "--config"]);
            await virsh(uri, ["setmem", id, kib(news.memoryMiB), "--config"]);
            if (news.memoryMiB < olds.memoryMiB) await virsh(uri, ["setmaxmem", id, kib(news.memoryMiB), "--config"]);
            pendingRestart = true;
        }
        if (news.vcpus !== olds.vcpus) {
            if (news.vcpus > olds.vcpus) await virsh(uri, ["setvcpus", id, String(news.vcpus), "--config", "--maximum"]);
            await virsh(uri, ["setvcpus", id, String(news.vcpus), "--config"]);
            if (news.vcpus < olds.vcpus) await virsh(uri, ["setvcpus", id, String(news.vcpus), "--config", "--maximum"]);
            pendingRestart = true;
        }
        if (news.autostart !== olds.autostart) await virsh(uri, ["autostart", id, ...(news.autostart ? [] : ["--disable"])]);
        let state = await domState(uri, id);
        if (state !== "running") {
            console.error(`${id}: was "${state}", starting it`);
            await virsh(uri, ["start", id]);
            state = await domState(uri, id);
            pendingRestart = false; // a fresh boot runs the saved definition
        } else if (pendingRestart) {
            console.error(`${id}: ${news.memoryMiB} MiB / ${news.vcpus} vCPUs saved in the domain definition; the running VM picks them up at its next boot (virsh shutdown ${id}; virsh start ${id})`);
        }
        const outs: DomainOutputs = { ...news, uuid: olds.uuid, state: state ?? "unknown", pendingRestart };
        return { outs };
    },

    async read(id: string, props: DomainOutputs) {
        const xml = await dumpXml(props.uri, ["dumpxml", "--inactive", id]);
        if (xml === undefined) return { id: undefined as unknown as string, props: {} }; // gone: refresh drops it, `up` recreates it
        const f = readDomain(xml);
        const state = (await domState(props.uri, id)) ?? "unknown";
        const outs: DomainOutputs = {
            ...props,
            vcpus: f.vcpus ?? props.vcpus,
            memoryMiB: f.memoryMiB ?? props.memoryMiB,
            diskPath: f.diskPath ?? props.diskPath,
            mac: f.mac ?? props.mac,
            network: f.network ?? props.network,
            uuid: f.uuid ?? props.uuid,
            state,
        };
        return { id, props: outs };
    },

    async delete(id: string, props: DomainOutputs) {
        const uri = props.uri;
        let state = await domState(uri, id);
        if (state === undefined) return;
        if (state === "running") {
            // Ask the guest first, so it can shut down cleanly; destroy after a bounded wait.
            await virsh(uri, ["shutdown", id], { allowFailure: true });
            const deadline = Date.now() + (props.shutdownTimeoutSeconds ?? 60) * 1000;
            while (state === "running" && Date.now() < deadline) {
                await sleep(500);
                state = await domState(uri, id);
            }
            if (state === "running") console.error(`${id}: did not shut down within ${props.shutdownTimeoutSeconds} s; destroying it`);
        }
        if (state !== undefined && state !== "shut off") await virsh(uri, ["destroy", id], { allowFailure: true });
        if ((await domState(uri, id)) !== undefined) await virsh(uri, ["undefine", "--nvram", id]);
    },
};

export class Domain extends pulumi.dynamic.Resource {
    declare readonly uuid: pulumi.Output<string>;
    declare readonly state: pulumi.Output<string>;
    declare readonly name: pulumi.Output<string>;
    constructor(name: string, args: { [K in keyof DomainInputs]: pulumi.Input<DomainInputs[K]> }, opts?: pulumi.CustomResourceOptions) {
        super(domainProvider, name, { ...args, uuid: undefined, state: undefined, pendingRestart: undefined }, { deleteBeforeReplace: true, ...opts }, "nixspark", "Domain");
    }
}
