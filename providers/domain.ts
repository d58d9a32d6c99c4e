// Domain: one VM. Whatever libvirt applies by redefining the domain and
// restarting it (memory, vCPUs, domain type, kernel, initrd, command line,
// console log, network, host name) is an update: the definition is saved
// (same UUID) and the VM restarted (graceful shutdown with a timeout, then
// start). With deployments the node's NixosDeployment restarts it, in
// rollout order, right before it switches; without, this provider does, one
// VM of the stack at a time (a lock file in the stack's state directory).
// check says so in preview (`restartRequired`). The disk grows through its
// Volume (same VM). Only a new disk or a new identity (name, MAC, libvirt
// URI) replaces the VM, delete-before-replace because libvirt names are
// fixed, and preview warns that the node goes down without a rollout.
//
// A VM that is not running (a host reboot, `virsh destroy` or `suspend` by
// hand) is reported by `read` (its state) and started or resumed by the next
// `up` (update), so `pulumi refresh` then `pulumi up` brings a stack back.
import * as pulumi from "@pulumi/pulumi";
import { domainXml, isHostnameLabel, readDomain } from "./libvirtXml";
import { isUnknown } from "./unknown";
import { holderWhat, withLock } from "./lock";
import { diffByKeys, isGone, label, lookup, virsh, virshError, withXmlFile } from "./virsh";
import { bringUp, definitionChanges, domState, pendingChanges, powerOff, restartKeys } from "./vmPower";

export interface DomainInputs {
    uri: string;
    name: string;
    domainType: "kvm" | "qemu";
    vcpus: number;
    memoryMiB: number;
    diskPath: string;
    mac: string;
    network: string;
    consoleLog: string;
    autostart: boolean;
    kernel?: string;
    initrd?: string;
    cmdline?: string;
    /** The guest's host name, given to it as a systemd credential (SMBIOS OEM string); an RFC 1123 label. */
    hostname?: string;
    /** Seconds a guest gets to shut down (on delete, and before a restart) before it is destroyed. */
    shutdownTimeoutSeconds: number;
    /** The stack's state directory (absolute): holds the lock that lets one VM restart at a time. */
    stateDir?: string;
    /**
     * "deployment": a change that needs a restart is saved in the definition
     * only; the node's NixosDeployment restarts the VM before it switches, in
     * rollout order (providers/vmPower.ts restartForDefinition). Unset: this
     * provider restarts the VM itself, one VM of the stack at a time.
     */
    restartBy?: "deployment";
    /**
     * Set by check, for preview: what a change will do to the running VM
     * ("" when nothing restarts it). Not compared by diff.
     */
    restartRequired?: string;
}

export interface DomainOutputs extends DomainInputs {
    uuid: string;
    /** libvirt's state as last seen: "running", "shut off", "paused", ... */
    state: string;
    /**
     * The running VM does not run its saved definition, and no step of the
     * stack has taken the restart on: set by a refresh that finds it so (the
     * next `up` restarts it). An update never leaves it set: without
     * deployments it restarts the VM itself; with them it hands the restart to
     * the node's deployment, which tracks it from then on (its `vmPending`).
     */
    pendingRestart: boolean;
}

// A new disk or a new identity: a new VM. The MAC is identity too: the
// network's DHCP reservation and DNS name are keyed on it, and the Network
// updates every reservation at once, before any VM could restart in rollout
// order; it is derived from the stack and node names anyway.
const REPLACE_KEYS = ["uri", "name", "diskPath", "mac"];
// Saved in the definition and applied by a restart (vmPower.ts restartKeys), or applied at once (autostart).
const UPDATE_KEYS = [...restartKeys(), "autostart"];

/** What a change does to the running VM, for preview; "" when nothing restarts it (nothing changed, a new VM, a replaced one). */
export function restartReason(olds: Record<string, unknown> | undefined, news: Record<string, unknown>): string {
    const how = news.restartBy === "deployment" ? "in rollout order, by its NixOS deployment before it switches (deploy.rollout)" : "one VM of the stack at a time";
    if (!olds || olds.memoryMiB === undefined) return "";
    if (replacedBy(olds, news).length > 0) return "";
    const changes = definitionChanges(olds, news);
    return changes.length === 0 ? "" : `${changes.map((c) => c.text).join(", ")}: the VM restarts (shutdown, then start), ${how}`;
}

/** The keys whose change replaces the VM (a new disk or identity); unknown values count. */
export function replacedBy(olds: Record<string, unknown>, news: Record<string, unknown>): string[] {
    return REPLACE_KEYS.filter((k) => isUnknown(news[k]) || JSON.stringify(olds[k] ?? null) !== JSON.stringify(news[k] ?? null));
}

/**
 * Runs fn while holding the stack's restart lock, <stateDir>/vm-restart.lock
 * (providers/lock.ts: taken over only when its owner is provably gone,
 * removed only by its owner). Waits up to timeoutMs for another restart to finish.
 */
export async function withRestartLock<T>(stateDir: string, what: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
    const fs = require("node:fs") as typeof import("node:fs");
    const path = require("node:path") as typeof import("node:path");
    fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    const lock = path.join(stateDir, "vm-restart.lock");
    return withLock(
        lock,
        {
            what,
            timeoutMs,
            onWait: (holder) => console.error(`${what}: waiting for another VM's restart to finish (${holderWhat(holder)})`),
            timeoutError: (holder) => new Error(`${what}: another VM of the stack is restarting (${lock}: ${holder.trim()}) for longer than ${Math.round(timeoutMs / 1000)} s`),
        },
        fn,
    );
}

export const domainProvider: pulumi.dynamic.ResourceProvider = {
    async check(olds: any, news: any) {
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
        return { inputs: { ...news, restartRequired: restartReason(olds, news) }, failures };
    },

    async diff(_id: string, olds: DomainOutputs, news: DomainInputs) {
        const d = diffByKeys(olds as any, news as any, REPLACE_KEYS, UPDATE_KEYS);
        if (d.replaces.length > 0) {
            // Say it plainly: a replacement is no rollout. (The engine may ask twice; the line is the same.)
            console.error(
                `warning: [${olds.name ?? _id}] its VM is replaced (${d.replaces.join(", ")} changed): the node goes down without a rollout ` +
                    `(the VM is shut down and deleted, a new one created and deployed from scratch); nodes replaced together go down together, ` +
                    `and a worker decommissioned first can hand its blocks only to workers that stay up`,
            );
            return d;
        }
        // An update (a restart too) keeps the VM: its UUID, the deployments'
        // machineId, stays known in preview, so no deployment is replaced for it.
        const stables = ["uuid", "name", "uri"];
        // Refresh saw the VM shut off or paused: the next `up` starts or resumes it.
        if (olds.state && olds.state !== "running" && !d.changes) return { changes: true, replaces: [], deleteBeforeReplace: true, stables };
        // Refresh saw it running an older definition than saved: the next `up` restarts it (or hands that to its deployment).
        if (olds.pendingRestart && !d.changes) return { changes: true, replaces: [], deleteBeforeReplace: true, stables };
        return { ...d, stables };
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

    // A change a restart applies (size, domain type, kernel, initrd, command
    // line, console log, network, host name): the whole definition is
    // redefined (same UUID) and the VM restarted, by its deployment in rollout
    // order (restartBy "deployment") or here under the stack's restart lock.
    // Also the update that only stores new provider code: with nothing to
    // change and the VM running it keeps the outputs.
    async update(id: string, olds: DomainOutputs, news: DomainInputs) {
        const uri = news.uri;
        const what = label("domain", id);
        const changed = definitionChanges(olds as unknown as Record<string, unknown>, news as unknown as Record<string, unknown>);
        if (changed.length > 0) await withXmlFile(domainXml({ ...news, uuid: olds.uuid }), (f) => virsh(uri, ["define", f], { what }));
        if (news.autostart !== olds.autostart) await virsh(uri, ["autostart", id, ...(news.autostart ? [] : ["--disable"])], { what });
        let state = await domState(uri, id);
        if (state === undefined) throw new Error(`${what} does not exist any more; run \`pulumi refresh\` and then \`pulumi up\` to create it again`);
        // What the running VM lacks, as libvirt says (live against saved
        // definition): this update's changes, or older ones a refresh found.
        const pending = await pendingChanges(uri, id);
        const said = pending.map((c) => c.text).join(", ");
        if (pending.length > 0 && news.restartBy === "deployment" && state === "running") {
            console.error(`${what}: ${said} saved in the definition; its NixOS deployment restarts the VM in rollout order`);
        } else if (pending.length > 0) {
            const timeout = news.shutdownTimeoutSeconds ?? 60;
            const restart = async () => {
                console.error(`${what}: restarting for ${said} (shutdown, up to ${timeout} s, then start)`);
                await powerOff(uri, id, timeout);
                const s = await bringUp(uri, id, await domState(uri, id), false);
                if (s !== "running") throw new Error(`${what} did not start again after its restart for ${pending.map((c) => c.now).join(", ")}: state is "${s}"; see ${news.consoleLog}`);
                console.error(`${what}: running again with ${pending.map((c) => c.now).join(", ")}`);
                return s;
            };
            // One VM of the stack at a time: never the whole cluster down at once.
            state = news.stateDir ? await withRestartLock(news.stateDir, what, 30 * 60_000, restart) : await restart();
        }
        if (state !== "running") {
            // (A VM that was off boots the saved definition.)
            state = await bringUp(uri, id, state);
            if (state !== "running") throw new Error(`${what} did not start: state is "${state}"; see ${news.consoleLog}`);
        }
        const outs: DomainOutputs = { ...news, uuid: olds.uuid, state: state ?? "unknown", pendingRestart: false };
        return { outs };
    },

    async read(id: string, props: DomainOutputs) {
        const xml = await lookup(props.uri, "domain", id, ["dumpxml", "--inactive", id]);
        if (xml === undefined) return { id: undefined as unknown as string, props: {} }; // gone: refresh drops it, `up` recreates it
        const f = readDomain(xml);
        const what = label("domain", id);
        const state = (await domState(props.uri, id)) ?? "unknown";
        if (state !== "running") console.error(`${what} is "${state}"; the next \`pulumi up\` ${state === "paused" ? "resumes" : "starts"} it`);
        const outs: DomainOutputs = {
            ...props,
            domainType: (f.domainType as DomainOutputs["domainType"]) ?? props.domainType,
            vcpus: f.vcpus ?? props.vcpus,
            memoryMiB: f.memoryMiB ?? props.memoryMiB,
            diskPath: f.diskPath ?? props.diskPath,
            mac: f.mac ?? props.mac,
            network: f.network ?? props.network,
            consoleLog: f.consoleLog ?? props.consoleLog,
            uuid: f.uuid ?? props.uuid,
            state,
        };
        // What is defined now, present or not: a removed or changed field is drift the next `up` repairs.
        for (const k of ["hostname", "kernel", "initrd", "cmdline"] as const) {
            if (f[k] !== undefined) outs[k] = f[k];
            else if (outs[k]) delete outs[k]; // ("" and absent are the same: none)
        }
        // The running VM against its saved definition: what a restart would still apply.
        const pending = await pendingChanges(props.uri, id);
        outs.pendingRestart = pending.length > 0;
        if (pending.length > 0) {
            const who = props.restartBy === "deployment" ? "through its NixOS deployment, in rollout order" : "one VM of the stack at a time";
            console.error(`${what} runs an older definition than it has saved (${pending.map((c) => c.text).join(", ")}); the next \`pulumi up\` restarts it, ${who}`);
        }
        return { id, props: outs };
    },

    async delete(id: string, props: DomainOutputs) {
        const uri = props.uri;
        const what = label("domain", id);
        if ((await domState(uri, id)) === undefined) return;
        // Ask the guest first, so it can shut down cleanly; destroy after a bounded wait.
        await powerOff(uri, id, props.shutdownTimeoutSeconds ?? 60);
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
