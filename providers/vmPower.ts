// Power and definition of a running VM, shared by the Domain provider
// (start, stop, restart for a new definition when no deployment does it) and
// the NixosDeployment provider (the restart a new definition needs, taken in
// rollout order: see restartForDefinition). Import-free of @pulumi/pulumi,
// like everything a provider object calls (docs/design.md, Provider rules).
import { readDomain } from "./libvirtXml";
import type { DomainFacts } from "./libvirtXml";
import { isUnknown } from "./unknown";
import { label, lookup, sleep, virsh, virshError } from "./virsh";

/** libvirt's state of the domain, or undefined when it does not exist. */
export async function domState(uri: string, name: string): Promise<string | undefined> {
    const out = await lookup(uri, "domain", name, ["domstate", name]);
    return out === undefined ? undefined : out.trim();
}

/**
 * Brings a defined domain to "running": resumes a paused one, wakes a
 * suspended one, starts one that is off. A network that is not running (a
 * host reboot) is started first when libvirt names it as the reason.
 */
export async function bringUp(uri: string, name: string, state: string | undefined, repair = true): Promise<string | undefined> {
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

/** Shuts the guest down (ACPI), destroys it after the timeout; resolves when it is off. */
export async function powerOff(uri: string, id: string, timeoutSeconds: number): Promise<void> {
    const what = label("domain", id);
    let state = await domState(uri, id);
    if (state === "running") {
        await virsh(uri, ["shutdown", id], { allowFailure: true, what });
        const deadline = Date.now() + timeoutSeconds * 1000;
        while (state === "running" && Date.now() < deadline) {
            await sleep(500);
            state = await domState(uri, id);
        }
        if (state === "running") console.error(`${what}: did not shut down within ${timeoutSeconds} s; destroying it`);
    }
    if (state !== undefined && state !== "shut off") {
        const r = await virsh(uri, ["destroy", id], { allowFailure: true, what });
        if (r.code !== 0 && (await domState(uri, id)) === "running") throw virshError(["destroy", id], r, what);
    }
}

/**
 * What a running VM only picks up when it starts again, beyond its size: the
 * parts of its libvirt definition that a redefinition saves for the next
 * boot and a restart (shutdown, then start) applies. Absent means none (no
 * direct kernel boot, no host name credential).
 */
export interface BootDefinition {
    domainType?: string;
    kernel?: string;
    initrd?: string;
    cmdline?: string;
    /** The serial console's log file. */
    consoleLog?: string;
    /** The libvirt network the VM's interface attaches to (NAT mode). */
    network?: string;
    /** Bridge mode: the host bridge, and the static address handed over as a credential. */
    bridge?: string;
    address?: string;
    hostname?: string;
    /** The shared data directory (virtiofs): host directory, tag, virtiofsd. */
    dataDir?: string;
    dataTag?: string;
    virtiofsd?: string;
    /** The watchdog and panic devices (libvirtXml.ts guestResilience): added to a running VM only by a restart. */
    resilience?: string;
}

/** Which VM a deployment runs on, and the definition its Domain gives it (SparkCluster passes it). */
export interface VmRef {
    uri: string;
    /** The libvirt domain name. */
    domain: string;
    vcpus: number;
    memoryMiB: number;
    /** Seconds the guest gets to shut down before it is destroyed. */
    shutdownTimeoutSeconds: number;
    /**
     * With uri and domain, the VM's identity: what replaces its Domain (its
     * disk, its MAC). Tells a replaced VM from an updated one in preview,
     * where the UUID of both is unknown.
     */
    diskPath?: string;
    mac?: string;
    /** The disk's identity, set when its Volume is created: another one is a re-created disk (its role is applied again). */
    diskId?: string;
    /**
     * The rest of the definition a restart applies. Absent in state recorded
     * before it existed: then only the size is compared.
     */
    definition?: BootDefinition;
}

/** One part of a VM's definition that differs: `memory 256 -> 384 MiB`, `console log /a -> /b`. */
export interface DefinitionChange {
    key: string;
    /** "memory 256 -> 384 MiB" */
    text: string;
    /** "memory 256 MiB": the old value alone. */
    was: string;
    /** "memory 384 MiB": the new value alone. */
    now: string;
}

// Everything a restart applies, in the order messages name it. Not exported
// (see providers/deployment/inputs.ts: an exported const would be captured as exports.X).
const RESTART_FIELDS: [key: string, label: string][] = [
    ["memoryMiB", "memory"],
    ["vcpus", "vCPUs"],
    ["domainType", "domain type"],
    ["kernel", "kernel"],
    ["initrd", "initrd"],
    ["cmdline", "kernel command line"],
    ["consoleLog", "console log"],
    ["network", "network"],
    ["bridge", "bridge"],
    ["address", "static address"],
    ["hostname", "host name"],
    ["dataDir", "shared directory"],
    ["dataTag", "shared directory tag"],
    ["virtiofsd", "virtiofsd"],
    // A redefinition saves new devices for the next boot only; libvirt does not
    // hot-plug an ISA panic device, so the VM picks them up when it restarts.
    ["resilience", "watchdog/panic devices"],
];

/** The keys of a Domain's inputs that a restart applies (redefine, then shutdown and start). */
export function restartKeys(): string[] {
    return RESTART_FIELDS.map(([k]) => k);
}

/**
 * The restart-relevant fields that differ between two definitions (Domain
 * inputs, DomainFacts read from libvirt, or a VmRef's size and definition).
 * Absent and null mean "none"; an unknown value (preview) always differs.
 * `keys` limits the comparison (state recorded before a field existed).
 */
export function definitionChanges(from: Record<string, unknown> | undefined, to: Record<string, unknown> | undefined, keys: string[] = restartKeys()): DefinitionChange[] {
    const out: DefinitionChange[] = [];
    const show = (k: string, v: unknown): string => {
        if (isUnknown(v)) return "(known after apply)";
        if (v === undefined || v === null || v === "") return "(none)";
        return k === "cmdline" ? JSON.stringify(v) : String(v);
    };
    for (const [k, label] of RESTART_FIELDS) {
        if (!keys.includes(k)) continue;
        // (libvirt's XML reader trims text: " quiet" and "quiet" are the same command line.)
        const norm = (v: unknown) => (typeof v === "string" && !isUnknown(v) ? v.trim() : (v ?? null));
        const a = norm(from?.[k]);
        const b = norm(to?.[k]);
        if (!isUnknown(b) && (a === b || (a === "" && b === null) || (a === null && b === ""))) continue;
        // No virtiofsd path asked for: libvirt picks one (QEMU's vhost-user
        // descriptors) and shows it in the live XML; any is what was asked.
        if (k === "virtiofsd" && b === null) continue;
        const unit = k === "memoryMiB" ? " MiB" : "";
        const newUnit = isUnknown(b) ? "" : unit;
        out.push({ key: k, text: `${label} ${show(k, a)} -> ${show(k, b)}${newUnit}`, was: `${label} ${show(k, a)}${unit}`, now: `${label} ${show(k, b)}${newUnit}` });
    }
    return out;
}

/** What a VmRef asks of the running VM, and which fields of it to compare. */
function wanted(vm: VmRef): { want: Record<string, unknown>; keys: string[] } {
    if (!vm.definition || typeof vm.definition !== "object") return { want: { vcpus: vm.vcpus, memoryMiB: vm.memoryMiB }, keys: ["memoryMiB", "vcpus"] };
    return { want: { ...vm.definition, vcpus: vm.vcpus, memoryMiB: vm.memoryMiB }, keys: restartKeys() };
}

/** The definition the VM runs with now (libvirt's live XML), or undefined when it is not running. */
export async function liveDefinition(uri: string, name: string): Promise<DomainFacts | undefined> {
    if ((await domState(uri, name)) !== "running") return undefined;
    return readDomain((await virsh(uri, ["dumpxml", name], { what: label("domain", name) })).stdout);
}

/**
 * What the running (or paused) VM has not picked up: libvirt's live
 * definition against the saved one (`dumpxml --inactive`), on the fields a
 * restart applies. Empty when the VM is off (its next start takes the saved
 * definition) or runs what is saved.
 */
export async function pendingChanges(uri: string, name: string): Promise<DefinitionChange[]> {
    const state = await domState(uri, name);
    if (state !== "running" && state !== "paused") return [];
    const what = label("domain", name);
    const live = readDomain((await virsh(uri, ["dumpxml", name], { what })).stdout);
    const saved = readDomain((await virsh(uri, ["dumpxml", "--inactive", name], { what })).stdout);
    return definitionChanges(live as Record<string, unknown>, saved as Record<string, unknown>);
}

/** What the running VM lacks of what `vm` asks (empty when it is not running or runs it). */
export async function vmDrift(vm: VmRef): Promise<DefinitionChange[]> {
    const live = await liveDefinition(vm.uri, vm.domain);
    if (live === undefined) return [];
    const { want, keys } = wanted(vm);
    return definitionChanges(live as Record<string, unknown>, want, keys);
}

/**
 * Restarts the VM (shutdown within its timeout, then start) when it runs
 * with another definition than `vm` says (size, console log, kernel, command
 * line, network, ...): its Domain's update saved the new definition and left
 * the restart to the node's deployment, which runs in rollout order (master,
 * canary, batches; each after the one before was verified). Returns whether
 * it restarted; throws when the VM does not come back, or comes back
 * without what `vm` asks (its saved definition differs).
 */
export async function restartForDefinition(vm: VmRef, log: (m: string) => void): Promise<boolean> {
    const what = label("domain", vm.domain);
    const changes = await vmDrift(vm);
    if (changes.length === 0) return false;
    log(`${what}: restarting for ${changes.map((c) => c.text).join(", ")} (shutdown, up to ${vm.shutdownTimeoutSeconds} s, then start)`);
    await powerOff(vm.uri, vm.domain, vm.shutdownTimeoutSeconds);
    const state = await bringUp(vm.uri, vm.domain, await domState(vm.uri, vm.domain), false);
    if (state !== "running") throw new Error(`${what} did not start again after its restart for ${changes.map((c) => c.now).join(", ")}: state is "${state}"`);
    const still = await vmDrift(vm);
    if (still.length > 0) {
        throw new Error(`${what} restarted but runs ${still.map((c) => c.was).join(", ")}, not what the stack defines (${still.map((c) => c.now).join(", ")}): its saved definition differs; run \`pulumi refresh\`, then \`pulumi up\``);
    }
    log(`${what}: running again with ${changes.map((c) => c.now).join(", ")}`);
    return true;
}
