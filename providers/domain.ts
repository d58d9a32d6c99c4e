// Domain: one VM. Whatever libvirt applies by redefining the domain and
// restarting it (memory, vCPUs, domain type, kernel, initrd, command line,
// console log, network, host name, the shared data directory, watchdog/panic devices) is an update: the definition is saved
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
//
// A running VM whose network was undefined and re-created (net-destroy and
// net-undefine by hand, then `up` re-creates the Network) keeps a tap device
// on no bridge: libvirt re-plugs taps neither on net-start nor on an
// update-device with the same interface (tried on the bench, libvirt 9.0),
// only when libvirtd itself restarts. `read` records such interfaces
// (`detachedInterfaces`: the tap's /sys/class/net/<tap>/master is not the
// network's bridge), diff makes that an update, and update plugs the tap back
// into the bridge as libvirt does when it starts the VM (`ip link set dev
// <tap> master <bridge>`): no restart, the guest keeps its NIC. (A provider
// that runs in another network namespace than libvirtd sees no tap and
// records nothing.)
import * as pulumi from "@pulumi/pulumi";
import { domainXml, isHostnameLabel, isStaticAddress, readDomain, readInterfaces } from "./libvirtXml";
import { run } from "./run";
import { isUnknown } from "./unknown";
import { holderWhat, withLock } from "./lock";
import { diffByKeys, infoFields, isGone, label, lookup, onThisMachine, virsh, virshError, withXmlFile } from "./virsh";
import { bringUp, definitionChanges, domState, pendingChanges, powerOff, restartKeys } from "./vmPower";
import { providerRef } from "./codeRef";

export interface DomainInputs {
    uri: string;
    name: string;
    domainType: "kvm" | "qemu";
    vcpus: number;
    memoryMiB: number;
    diskPath: string;
    mac: string;
    /** The libvirt network (NAT mode); absent with `bridge`. */
    network?: string;
    /** The host bridge (nixspark:network.mode bridge): no libvirt network. A restart applies it. */
    bridge?: string;
    /** The static address handed to the guest in bridge mode, "ADDRESS/PREFIX[ GATEWAY]" (libvirtXml.ts networkCredential). A restart applies it. */
    address?: string;
    consoleLog: string;
    autostart: boolean;
    kernel?: string;
    initrd?: string;
    cmdline?: string;
    /** The guest's host name, given to it as a systemd credential (SMBIOS OEM string); an RFC 1123 label. */
    hostname?: string;
    /** A host directory shared by virtiofs (nixspark:data.path), the tag the guest mounts it by, virtiofsd's path: a restart applies them. */
    dataDir?: string;
    dataTag?: string;
    virtiofsd?: string;
    /** libvirtXml.ts guestResilience(): a watchdog device and a panic device; a restart adds them to a running VM. */
    resilience?: string;
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
    /**
     * Interfaces of the running VM that are not on their network's bridge (the
     * network was re-created under it), as refresh found them: "interface
     * vnet0 (52:54:..) is on no bridge, not on nxs-dev of network dev-net".
     * The next `up` plugs them back (an update, no restart).
     */
    detachedInterfaces?: string[];
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

/** A network interface name as the kernel allows it (at most 15 characters, no '/'): only such names are looked up in /sys. */
export function isIfName(s: unknown): s is string {
    return typeof s === "string" && /^[A-Za-z0-9_.:-]{1,15}$/.test(s) && s !== "." && s !== "..";
}

/**
 * The bridge a network device is plugged into (/sys/class/net/<dev>/master):
 * "" when it is on none, undefined when this process cannot see the device
 * (it runs in another network namespace than libvirtd: nothing can be told).
 */
export function bridgeOf(dev: string): string | undefined {
    const fs = require("node:fs") as typeof import("node:fs");
    const path = require("node:path") as typeof import("node:path");
    if (!isIfName(dev) || !fs.existsSync(`/sys/class/net/${dev}`)) return undefined;
    try {
        return path.basename(fs.readlinkSync(`/sys/class/net/${dev}/master`));
    } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "ENOENT") return "";
        throw e;
    }
}

export interface DetachedInterface {
    tap: string;
    mac?: string;
    network?: string;
    /** The bridge it belongs on: its network's bridge now (libvirt's record when the network is gone). */
    bridge: string;
    /** The bridge it is on ("" for none). */
    on: string;
}

export function describeDetached(i: DetachedInterface): string {
    return `interface ${i.tap}${i.mac ? ` (${i.mac})` : ""} is ${i.on ? `on bridge ${i.on}` : "on no bridge"}, not on ${i.bridge}${i.network ? ` of network ${i.network}` : ""}`;
}

/**
 * The running VM's interfaces whose tap is not on its network's bridge
 * (libvirt's live XML names the tap and the network; the kernel says where
 * the tap is). Undefined when the domain does not exist.
 */
export async function detachedInterfaces(uri: string, name: string): Promise<DetachedInterface[] | undefined> {
    const xml = await lookup(uri, "domain", name, ["dumpxml", name]);
    if (xml === undefined) return undefined;
    const out: DetachedInterface[] = [];
    for (const i of readInterfaces(xml)) {
        if (!i.tap) continue;
        const on = bridgeOf(i.tap);
        if (on === undefined) continue; // not visible from here
        const info = i.network ? await lookup(uri, "network", i.network, ["net-info", i.network]) : undefined;
        const bridge = (info !== undefined ? infoFields(info).Bridge : undefined) || i.bridge;
        if (bridge && on !== bridge) out.push({ tap: i.tap, mac: i.mac, network: i.network, bridge, on });
    }
    return out;
}

/** Plugs every detached interface of the running VM back into its network's bridge, as libvirt does when it starts the VM. */
export async function plugBack(uri: string, name: string, what: string): Promise<void> {
    for (const i of (await detachedInterfaces(uri, name)) ?? []) {
        if (!isIfName(i.bridge)) throw new Error(`${what}: ${describeDetached(i)}, and "${i.bridge}" is no bridge name it could be plugged into`);
        if (i.network && !(await lookup(uri, "network", i.network, ["net-info", i.network]))) {
            throw new Error(`${what}: ${describeDetached(i)}, and the network does not exist; run \`pulumi up\` again once it is created (the Domain depends on it)`);
        }
        console.error(`${what}: ${describeDetached(i)} (its network was re-created): plugging it back into ${i.bridge}; the VM keeps running`);
        try {
            await run(["ip", "link", "set", "dev", i.tap, "master", i.bridge], { timeoutMs: 30_000 });
        } catch (e) {
            throw new Error(
                `${what}: could not plug interface ${i.tap} back into bridge ${i.bridge}: ${(e as Error).message.split("\n")[0]}; ` +
                    `as root run \`ip link set dev ${i.tap} master ${i.bridge}\` (or restart the VM), then \`pulumi refresh\``,
            );
        }
    }
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

/**
 * What is wrong with the shared directory (nixspark:data) before anything is
 * defined: the host directory must exist (checked when libvirt runs on this
 * machine: a URI without a host), the tag must fit virtiofs' 36 bytes.
 * Reads only (a stat), so check stays free of side effects.
 */
export function dataDirProblems(news: Record<string, unknown>): { property: string; reason: string }[] {
    const out: { property: string; reason: string }[] = [];
    const dir = news.dataDir;
    if (dir === undefined || dir === null || isUnknown(dir)) return out;
    if (typeof dir !== "string" || !dir.startsWith("/")) return [{ property: "dataDir", reason: `nixspark:data.path ${JSON.stringify(dir)} must be an absolute directory on the host` }];
    const tag = news.dataTag;
    if (!isUnknown(tag) && (typeof tag !== "string" || tag === "" || Buffer.byteLength(tag) > 36)) {
        out.push({ property: "dataTag", reason: `nixspark:data.tag ${JSON.stringify(tag)} must be 1 to 36 bytes (what a virtio-fs device holds): pulumi config set --path data.tag nixspark-data` });
    }
    const uri = typeof news.uri === "string" && !isUnknown(news.uri) ? news.uri : "";
    if (onThisMachine(uri)) {
        const fs = require("node:fs") as typeof import("node:fs");
        let st: import("node:fs").Stats | undefined;
        try {
            st = fs.statSync(dir);
        } catch {
            st = undefined;
        }
        if (!st?.isDirectory()) {
            out.push({ property: "dataDir", reason: `nixspark:data.path ${dir} is ${st ? "not a directory" : "missing"} on the host; create it (mkdir -p ${dir}) or set another: pulumi config set --path data.path DIR` });
        }
    }
    return out;
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
        if (news.address !== undefined && news.address !== null && news.address !== "" && !isUnknown(news.address) && !isStaticAddress(news.address)) {
            failures.push({ property: "address", reason: `address ${JSON.stringify(news.address)} must be "ADDRESS/PREFIX" or "ADDRESS/PREFIX GATEWAY" (IPv4)` });
        }
        if (!news.bridge && !news.network) failures.push({ property: "network", reason: "the interface needs a libvirt network or a host bridge" });
        failures.push(...dataDirProblems(news));
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
        // Refresh saw an interface off its network's bridge (the network was re-created): the next `up` plugs it back.
        const detached = Array.isArray(olds.detachedInterfaces) ? olds.detachedInterfaces : [];
        if (detached.length > 0) {
            console.error(`[${olds.name ?? _id}] ${detached.join("; ")}: \`pulumi up\` plugs it back into the bridge (an update, no restart)`);
            return { changes: true, replaces: [], deleteBeforeReplace: true, stables };
        }
        return { ...d, stables };
    },

    async create(inputs: DomainInputs) {
        const what = label("domain", inputs.name);
        const existing = await lookup(inputs.uri, "domain", inputs.name, ["dumpxml", "--inactive", inputs.name]);
        let defined = false;
        if (existing !== undefined) {
            const f = readDomain(existing);
            const want = {
                domainType: inputs.domainType,
                vcpus: inputs.vcpus,
                memoryMiB: inputs.memoryMiB,
                diskPath: inputs.diskPath,
                mac: inputs.mac.toLowerCase(),
                network: inputs.bridge ? undefined : inputs.network,
                bridge: inputs.bridge || undefined,
                address: inputs.address || undefined,
                hostname: inputs.hostname ?? undefined,
            };
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
        const outs: DomainOutputs = { ...inputs, uuid: f.uuid ?? "", state: "running", pendingRestart: false, detachedInterfaces: [] };
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
        // A running VM whose network was re-created: its taps back onto the bridge.
        await plugBack(uri, id, what);
        const outs: DomainOutputs = { ...news, uuid: olds.uuid, state: state ?? "unknown", pendingRestart: false, detachedInterfaces: [] };
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
            network: f.bridge ? props.network : (f.network ?? props.network),
            consoleLog: f.consoleLog ?? props.consoleLog,
            uuid: f.uuid ?? props.uuid,
            state,
        };
        // What is defined now, present or not: a removed or changed field is drift the next `up` repairs.
        for (const k of ["bridge", "address", "hostname", "kernel", "initrd", "cmdline", "dataDir", "dataTag", "virtiofsd", "resilience"] as const) {
            if (f[k] !== undefined) outs[k] = f[k];
            else if (outs[k]) delete outs[k]; // ("" and absent are the same: none)
        }
        // Interfaces left off their network's bridge (the network was re-created under the running VM).
        const detached = state === "running" ? ((await detachedInterfaces(props.uri, id)) ?? []) : [];
        outs.detachedInterfaces = detached.map(describeDetached);
        if (detached.length > 0) console.error(`${what}: ${outs.detachedInterfaces.join("; ")}: the guest cannot be reached; the next \`pulumi up\` plugs it back (no restart)`);
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
        super(providerRef("Domain", domainProvider), name, { ...args, uuid: undefined, state: undefined, pendingRestart: undefined }, { deleteBeforeReplace: true, ...opts }, "nixspark", "Domain");
    }
}
