// A NixosDeployment's diff: what makes the node switch, restart its VM
// first, or be replaced with a new VM. Pure (no I/O), as every diff.
import { UNKNOWN } from "../unknown";
import { definitionChanges } from "../vmPower";
import type { VmRef } from "../vmPower";

/** Inputs whose change means the node must switch. Everything else only says how to reach it. */
// machineId: a VM recreated at the same address (a domain replaced, or
// destroyed behind the stack's back and brought back by `up`) boots the bare
// base image and must be deployed again.
// Not `flake`: it is the store copy of the flake that the program evaluated
// (cluster/nixParams.ts), whose path changes with any file under nix/ (a
// comment, another stack's settings); what the node runs is expectedSystem.
const SWITCH_KEYS = ["expectedSystem", "configuration", "host", "machineId"] as const;

/** The keys whose change makes the node switch (for tests and docs). */
export function switchKeys(): string[] {
    return [...SWITCH_KEYS];
}

/**
 * diff: update when the node must switch (expected system, configuration or
 * address changed, an input is unknown during preview, or a refresh found
 * the node running something other than expected); no change otherwise.
 * A replace (delete first) only when the VM itself is new (machineId): the
 * VM is owned by its Domain, a configuration change never replaces anything.
 *
 * SSH options, timeouts, sudo, build host, rebuild command and flavour only
 * say *how* to reach the node: changing them alone reports no changes, so the
 * recorded outputs keep their old values until the next real update (which
 * runs with, and records, the new ones).
 */
export function deploymentDiff(olds: Record<string, unknown>, news: Record<string, unknown>): { changes: boolean; replaces: string[]; deleteBeforeReplace: boolean; reasons: string[] } {
    const reasons: string[] = [];
    // An unknown UUID of the same VM, not gone (its Domain only updated: a
    // restart, an interface plugged back, a start): the same VM after apply.
    const sameVm = olds.vmGone !== true && typeof olds.machineId === "string" && olds.machineId !== "" && sameVmIdentity(olds.vm, news.vm);
    for (const k of SWITCH_KEYS) {
        if (news[k] === UNKNOWN) {
            if (!(k === "machineId" && sameVm)) reasons.push(`${k} is not known until apply`);
        } else if (olds[k] !== news[k]) reasons.push(`${k} changed`);
    }
    // The node's disk re-created under the same VM: nothing of the role is on it.
    if (diskRecreated(olds, news)) reasons.push("the node's disk was re-created (a new Volume): its role is applied again, from a first contact");
    const current = olds.currentSystem;
    if (typeof current === "string" && current !== "" && news.expectedSystem !== UNKNOWN && current !== news.expectedSystem && current !== UNKNOWN) {
        reasons.push(`the node runs ${current}, not the expected system`);
    }
    // A new VM size or definition: the update restarts the VM (in rollout order) before it switches.
    const ov = olds.vm as Partial<VmRef> | undefined;
    const nv = news.vm as Partial<VmRef> | typeof UNKNOWN | undefined;
    if (ov && typeof ov === "object" && nv !== undefined && (nv === UNKNOWN || ov.vcpus !== nv.vcpus || ov.memoryMiB !== nv.memoryMiB)) {
        reasons.push(nv === UNKNOWN ? "the VM's size is not known until apply" : `the VM's size changed (${ov.memoryMiB} -> ${nv.memoryMiB} MiB, ${ov.vcpus} -> ${nv.vcpus} vCPUs): it restarts before the switch`);
    }
    // The rest of what a restart applies; state recorded before `definition` existed compares the size only.
    if (ov && typeof ov === "object" && ov.definition && nv && nv !== UNKNOWN && typeof nv === "object" && nv.definition !== undefined && nv.definition !== null) {
        const nd = nv.definition as unknown;
        const moved = nd === UNKNOWN ? [] : definitionChanges(ov.definition as Record<string, unknown>, nd as Record<string, unknown>, ["domainType", "kernel", "initrd", "cmdline", "consoleLog", "network", "bridge", "address", "hostname", "dataDir", "dataTag", "virtiofsd", "resilience"]);
        if (nd === UNKNOWN) reasons.push("the VM's definition is not known until apply");
        else if (moved.length > 0) reasons.push(`the VM's definition changed (${moved.map((c) => c.text).join(", ")}): it restarts before the switch`);
    }
    // A refresh found the VM running an older definition than its Domain saved.
    const drift = olds.vmPending;
    if (Array.isArray(drift) && drift.length > 0) reasons.push(`refresh found the VM not running its definition (${drift.join(", ")}): it restarts before the switch`);
    // The value is never named: it is a secret.
    if (news.secretProperties === UNKNOWN || (olds.secretProperties ?? undefined) !== (news.secretProperties ?? undefined)) reasons.push("the secret Spark properties changed");
    // A new VM behind the node (its Domain is replaced, delete-before-replace
    // since libvirt names are fixed): the deployment is replaced with it,
    // delete first, so the old worker is decommissioned through Spark while
    // its VM still runs (delete), and the new VM gets a first deployment
    // (create). The engine asks this diff with machineId unknown when it
    // plans the Domain's replacement, and deletes this resource before it.
    // State written before machineId existed is only updated.
    // An unknown machineId alone is no proof of a new VM: in preview a Domain
    // that is only updated (a restart, a new size, new provider code) has its
    // UUID unknown too, since a dynamic provider cannot mark outputs stable.
    // So it is a new VM only when the VM's identity, what replaces a Domain
    // (libvirt URI, name, disk, MAC; `vm`), changed or cannot be compared.
    // Or when a refresh found the VM it deployed gone (vmGone): its Domain is
    // then created again, same identity, and its UUID is unknown in preview.
    const oldId = olds.machineId;
    const newVm =
        typeof oldId === "string" && oldId !== "" && oldId !== UNKNOWN && (news.machineId === UNKNOWN ? olds.vmGone === true || !sameVmIdentity(olds.vm, news.vm) : news.machineId !== oldId);
    return { changes: reasons.length > 0, replaces: newVm ? ["machineId"] : [], deleteBeforeReplace: newVm, reasons: [...new Set(reasons)] };
}

/**
 * True when the VM's disk is not the one the deployment switched: its
 * Volume's identity (vm.diskId, set when the Volume is created) differs, or,
 * in preview where a new Volume's diskId is unknown, a refresh found the disk
 * gone (diskGone). Never for state without a diskId in the new inputs, nor
 * for a Volume only updated (diskId unknown, the disk there).
 */
export function diskRecreated(olds: Record<string, unknown>, news: Record<string, unknown>): boolean {
    const ov = olds.vm as Partial<VmRef> | undefined;
    const nv = news.vm as Partial<VmRef> | typeof UNKNOWN | undefined;
    if (!ov || typeof ov !== "object" || !nv || nv === UNKNOWN || typeof nv !== "object") return false;
    const now = nv.diskId as unknown;
    if (now === undefined || now === null) return false;
    if (olds.diskGone === true) return now === UNKNOWN || now !== ov.diskId;
    return now !== UNKNOWN && typeof ov.diskId === "string" && ov.diskId !== "" && ov.diskId !== now;
}

/** True when both `vm` inputs name the same VM: libvirt URI, domain, disk and MAC all recorded, known and equal. */
export function sameVmIdentity(olds: unknown, news: unknown): boolean {
    const o = olds as Partial<VmRef> | undefined;
    const n = news as Partial<VmRef> | undefined;
    if (!o || !n || typeof o !== "object" || typeof n !== "object") return false;
    return (["uri", "domain", "diskPath", "mac"] as const).every((k) => typeof o[k] === "string" && o[k] !== UNKNOWN && o[k] === n[k]);
}
