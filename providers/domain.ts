// Domain: one VM. Memory, vCPUs and the host name change in place (persisted
// in the definition for the next boot, and said so); everything else
// replaces the VM, delete-before-replace because libvirt names are fixed.
//
// A VM that is not running (a host reboot, `virsh destroy` or `suspend` by
// hand) is reported by `read` (its state) and started or resumed by the next
// `up` (update), so `pulumi refresh` then `pulumi up` brings a stack back.
import * as pulumi from "@pulumi/pulumi";
import { domainXml, isHostnameLabel, readDomain } from "./libvirtXml";
import { isUnknown } from "./unknown";
import { diffByKeys, isGone, label, lookup, sleep, virsh, virshError, withXmlFile } from "./virsh";

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
    /** The guest's host name, given to it as a systemd credential (SMBIOS OEM string); an RFC 1123 label. */
    hostname?: string;
    /** Seconds a guest gets to shut down on delete before it is destroyed. */
    shutdownTimeoutSeconds: number;
}

export interface DomainOutputs extends DomainInputs {
    uuid: string;
    /** libvirt's state as last seen: "running", "shut off", "paused", ... */
    state: string;
    /** Memory, vCPU or host name changes saved in the definition that the running VM has not picked up yet. */
    pendingRestart: boolean;
}

const REPLACE_KEYS = ["uri", "name", "domainType", "diskPath", "diskGiB", "mac", "network", "consoleLog", "kernel", "initrd", "cmdline"];
const UPDATE_KEYS = ["vcpus", "memoryMiB", "autostart", "hostname"];

/** libvirt's state of the domain, or undefined when it does not exist. */
async function domState(uri: string, name: string): Promise<string | undefined> {
    const out = await lookup(uri, "domain", name, ["domstate", name]);
    return out === undefined ? undefined : out.trim();
}

/**
 * Brings a defined domain to "running": resumes a paused one, wakes a
 * suspended one, starts one that is off. A network that is not running (a
 * host reboot) is started first when libvirt names it as the reason.
 */
async function bringUp(uri: string, name: string, state: string | undefined, repair = true): Promise<string | undefined> {
    const what = label("domain", name);
    if (state === "running") return state;
    if (repair) console.error(`${what} was "${state}": ${state === "paused" ? "resuming" : "starting"} it`);
    if (state === "paused") {
        await virsh(uri, ["resume", name], { what });
    } else if (state === "pmsuspended") {
        await virsh(uri, ["dompmwakeup", name], { what });
    } else {
        const args = ["start", name];
        const r = await virsh(uri, args, { allowFailure: true, what });
        const inactiveNet = /network '([^']+)' is not active/.exec(r.stderr);
        if (r.code !== 0 && inactiveNet) {
            console.error(`${what}: ${label("network", inactiveNet[1])} is not running; starting it first`);
            await virsh(uri, ["net-start", inactiveNet[1]], { what: label("network", inactiveNet[1]) });
            await virsh(uri, args, { what });
        } else if (r.code !== 0 && (await domState(uri, name)) !== "running") {
            // (A start whose answer got lost to a reconnect, retried: "already active" is fine.)
            throw virshError(args, r, what);
        }
    }
    return domState(uri, name);
}

export const domainProvider: pulumi.dynamic.ResourceProvider = {
    async check(_olds: any, news: any) {
        const failures = [];
        if (typeof news.domainType === "string" && !isUnknown(news.domainType) && !["kvm", "qemu"].includes(news.domainType)) {
            failures.push({ property: "domainType", reason: 'domainType must be "kvm" or "qemu"' });
        }
        if (news.hostname !== undefined && news.hostname !== null && !isUnknown(news.hostname) && !isHostnameLabel(news.hostname)) {
            failures.push({
                property: "hostname",
                reason: `hostname ${JSON.stringify(news.hostname)} must be an RFC 1123 label: 1 to 63 letters, digits or '-', not starting or ending with '-'`,
            });
        }
        return { inputs: news, failures };
    },

    async diff(_id: string, olds: DomainOutputs, news: DomainInputs) {
        const d = diffByKeys(olds as any, news as any, REPLACE_KEYS, UPDATE_KEYS);
        // Refresh saw the VM shut off or paused: the next `up` starts or resumes it.
        if (olds.state && olds.state !== "running" && !d.changes) return { changes: true, replaces: [], deleteBeforeReplace: true };
        return d;
    },

    async create(inputs: DomainInputs) {
        const what = label("domain", inputs.name);
        const existing = await lookup(inputs.uri, "domain", inputs.name, ["dumpxml", "--inactive", inputs.name]);
        let defined = false;
        if (existing !== undefined) {
            const f = readDomain(existing);
            const want = { domainType: inputs.domainType, vcpus: inputs.vcpus, memoryMiB: inputs.memoryMiB, diskPath: inputs.diskPath, mac: inputs.mac.toLowerCase(), network: inputs.network, hostname: inputs.hostname ?? undefined };
            const mismatch = (Object.keys(want) as (keyof typeof want)[]).filter((k) => f[k] !== want[k]);
            if (mismatch.length > 0) {
                throw new Error(
                    `${what} already exists and differs in ${mismatch.join(", ")}; ` +
                        `remove it (virsh destroy ${inputs.name}; virsh undefine --nvram ${inputs.name}) or use another stack name`,
                );
            }
        } else {
            await withXmlFile(domainXml(inputs), (f) => virsh(inputs.uri, ["define", f], { what }));
            defined = true;
        }
        try {
            await virsh(inputs.uri, ["autostart", inputs.name, ...(inputs.autostart ? [] : ["--disable"])], { what });
            const state = await bringUp(inputs.uri, inputs.name, await domState(inputs.uri, inputs.name), !defined);
            if (state !== "running") throw new Error(`${what} did not start: state is "${state}"; see ${inputs.consoleLog}`);
        } catch (e) {
            if (defined) {
                // Leave nothing half-created behind.
                await virsh(inputs.uri, ["destroy", inputs.name], { allowFailure: true, what });
                await virsh(inputs.uri, ["undefine", "--nvram", inputs.name], { allowFailure: true, what });
            }
            throw e;
        }
        const f = readDomain((await virsh(inputs.uri, ["dumpxml", inputs.name], { what })).stdout);
        const outs: DomainOutputs = { ...inputs, uuid: f.uuid ?? "", state: "running", pendingRestart: false };
        return { id: inputs.name, outs };
    },

    // Also the update that only stores new provider code: with nothing to
    // change and the VM running it changes nothing and keeps the outputs.
    async update(id: string, olds: DomainOutputs, news: DomainInputs) {
        const uri = news.uri;
        const what = label("domain", id);
        let pendingRestart = olds.pendingRestart ?? false;
        const kib = (mib: number) => String(mib * 1024);
        if ((olds.hostname ?? null) !== (news.hostname ?? null)) {
            // The SMBIOS strings have no virsh setter: define the whole new
            // definition (memory and vCPUs included), read at the next boot.
            await withXmlFile(domainXml({ ...news, uuid: olds.uuid }), (f) => virsh(uri, ["define", f], { what }));
            pendingRestart = true;
        } else {
            if (news.memoryMiB !== olds.memoryMiB) {
                // Grow the ceiling first, shrink it last, so each step is valid.
                if (news.memoryMiB > olds.memoryMiB) await virsh(uri, ["setmaxmem", id, kib(news.memoryMiB), "--config"], { what });
                await virsh(uri, ["setmem", id, kib(news.memoryMiB), "--config"], { what });
                if (news.memoryMiB < olds.memoryMiB) await virsh(uri, ["setmaxmem", id, kib(news.memoryMiB), "--config"], { what });
                pendingRestart = true;
            }
            if (news.vcpus !== olds.vcpus) {
                if (news.vcpus > olds.vcpus) await virsh(uri, ["setvcpus", id, String(news.vcpus), "--config", "--maximum"], { what });
                await virsh(uri, ["setvcpus", id, String(news.vcpus), "--config"], { what });
                if (news.vcpus < olds.vcpus) await virsh(uri, ["setvcpus", id, String(news.vcpus), "--config", "--maximum"], { what });
                pendingRestart = true;
            }
        }
        if (news.autostart !== olds.autostart) await virsh(uri, ["autostart", id, ...(news.autostart ? [] : ["--disable"])], { what });
        let state = await domState(uri, id);
        if (state === undefined) throw new Error(`${what} does not exist any more; run \`pulumi refresh\` and then \`pulumi up\` to create it again`);
        if (state !== "running") {
            const wasOff = state !== "paused" && state !== "pmsuspended";
            state = await bringUp(uri, id, state);
            if (state !== "running") throw new Error(`${what} did not start: state is "${state}"; see ${news.consoleLog}`);
            if (wasOff) pendingRestart = false; // a fresh boot runs the saved definition
        }
        if (pendingRestart) {
            console.error(`${what}: ${news.memoryMiB} MiB / ${news.vcpus} vCPUs${news.hostname ? ` / host name ${news.hostname}` : ""} saved in the domain definition; the running VM picks them up at its next boot (virsh shutdown ${id}; virsh start ${id})`);
        }
        const outs: DomainOutputs = { ...news, uuid: olds.uuid, state: state ?? "unknown", pendingRestart };
        return { outs };
    },

    async read(id: string, props: DomainOutputs) {
        const xml = await lookup(props.uri, "domain", id, ["dumpxml", "--inactive", id]);
        if (xml === undefined) return { id: undefined as unknown as string, props: {} }; // gone: refresh drops it, `up` recreates it
        const f = readDomain(xml);
        const state = (await domState(props.uri, id)) ?? "unknown";
        if (state !== "running") console.error(`${label("domain", id)} is "${state}"; the next \`pulumi up\` ${state === "paused" ? "resumes" : "starts"} it`);
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
        // The host name as defined now: a removed or changed credential is drift the next `up` repairs.
        if (f.hostname !== undefined) outs.hostname = f.hostname;
        else delete outs.hostname;
        return { id, props: outs };
    },

    async delete(id: string, props: DomainOutputs) {
        const uri = props.uri;
        const what = label("domain", id);
        let state = await domState(uri, id);
        if (state === undefined) return;
        if (state === "running") {
            // Ask the guest first, so it can shut down cleanly; destroy after a bounded wait.
            await virsh(uri, ["shutdown", id], { allowFailure: true, what });
            const deadline = Date.now() + (props.shutdownTimeoutSeconds ?? 60) * 1000;
            while (state === "running" && Date.now() < deadline) {
                await sleep(500);
                state = await domState(uri, id);
            }
            if (state === "running") console.error(`${what}: did not shut down within ${props.shutdownTimeoutSeconds} s; destroying it`);
        }
        if (state !== undefined && state !== "shut off") {
            const r = await virsh(uri, ["destroy", id], { allowFailure: true, what });
            // Stopped meanwhile or gone: fine; anything else is an error.
            if (r.code !== 0 && (await domState(uri, id)) === "running") throw virshError(["destroy", id], r, what);
        }
        const undef = await virsh(uri, ["undefine", "--nvram", id], { allowFailure: true, what });
        if (undef.code !== 0 && !(await isGone(uri, "domain", id, undef.stderr))) throw virshError(["undefine", "--nvram", id], undef, what);
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
