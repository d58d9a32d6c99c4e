// NixosDeployment: one node's NixOS configuration, applied in place with
// `nixos-rebuild switch --flake REF#NAME --target-host USER@HOST`.
//
// A configuration change is an *update* of this resource, never a replace:
// the VM keeps running and switches to the new system. See
// docs/live-updates.md for the user's view and for the lines of nixos-rebuild
// (shell script and nixos-rebuild-ng) this file relies on.
//
// Provider rules (DESIGN.md): modules are required inside functions, the
// provider object captures neither zod nor @pulumi/pulumi, outs carry every
// input, diff always answers `changes` and never replaces. Progress goes to
// console.error: the Pulumi engine shows a dynamic provider's stderr to the
// user line by line (pkg plugin.go, runtrace -> Diag.Infoerrf).
import * as pulumi from "@pulumi/pulumi";
import { lastLines, run } from "./run";
import { keptOutputs, providerCodeChanged, UNKNOWN } from "./unknown";
import { destination, ensureKeyFile, ensureKnownHostsFile, firstContact, hostKeyLines, localPath, nixSshOpts, remoteCommand, restoreHostKeys, SshTarget, verifiedFirstContact, waitForSsh, withFileLock } from "./ssh";
import { fetchMasterState } from "./sparkHealth";
import { describeMaster, matchWorkers } from "../cluster/sparkStatus";
import type { MasterState, MasterWorker } from "../cluster/sparkStatus";
import { deliverSecretProperties } from "./clusterSecret";
import { describePackageChanges } from "./packageChanges";
import { definitionChanges, restartForDefinition, vmDrift } from "./vmPower";
import { lookup } from "./virsh";
import type { VmRef } from "./vmPower";

export type RebuildFlavour = "auto" | "legacy" | "ng";

/** Resolved inputs, as the provider sees them (every one is also in the outputs). */
export interface NixosDeploymentInputs {
    /** Node name, for messages ("master", "worker-1"). */
    node: string;
    /**
     * Flake reference holding the NixOS configurations: the immutable store
     * copy the program evaluated ("path:/nix/store/...-source"), so the switch
     * builds exactly the system the program previewed. Changing it alone
     * switches nothing (see SWITCH_KEYS).
     */
    flake: string;
    /** Name under nixosConfigurations, e.g. "dev-worker". */
    configuration: string;
    /** Address of the node. */
    host: string;
    /**
     * Identity of the VM behind the address (its libvirt domain UUID). A new
     * one means a new VM: it is deployed again and its new host key replaces
     * the old one in the known-hosts file, as on first contact.
     */
    machineId?: string;
    sshUser: string;
    sshPort: number;
    identityFile: string;
    /** The stack's known-hosts file (a cache: the keys pinned for this node are `hostKeys` in the outputs). */
    knownHostsFile: string;
    /**
     * The stack's own deploy key, when it deploys with one (a Pulumi secret,
     * from the DeployKey resource): written to identityFile when that file is
     * missing, so read, update and delete reach the node from the state alone.
     */
    privateKey?: string;
    /** The toplevel OUT path the program evaluated (`nix eval --raw ...toplevel.outPath`). */
    expectedSystem: string;
    /** Optional `--build-host`; it gets the same NIX_SSHOPTS as the target. */
    buildHost?: string;
    /** Activate with sudo on the target (legacy: --use-remote-sudo, ng: --sudo). */
    useSudo: boolean;
    /** The nixos-rebuild executable (name on PATH or absolute path). */
    rebuildCommand: string;
    flavour: RebuildFlavour;
    sshWaitSeconds: number;
    switchTimeoutSeconds: number;
    /**
     * Spark properties that must not enter /nix/store (the cluster secret,
     * secret Spark settings), as providers/clusterSecret.ts renders them. A
     * Pulumi secret: written to the node before the switch, never logged.
     */
    secretProperties?: string;
    /** Units restarted when secretProperties change on a running node (its Spark daemon and the unit that assembles its configuration). */
    secretUnits?: string[];
    /** When given: after the switch, wait until Spark agrees (else roll back); on delete, decommission a worker. */
    spark?: SparkCheck;
    /**
     * The VM's serial console log on this host (libvirt writes it). When set,
     * a first contact pins the host key only if the VM printed its
     * fingerprint there; otherwise the first key that answers is trusted.
     */
    consoleLog?: string;
    /** Versions of what the expected system runs (from the evaluation that gave it): what preview shows moving. */
    packages?: Record<string, unknown>;
    /**
     * Print `nix store diff-closures` of the node's previous and new system
     * after its switch. SparkCluster sets it on the first node of each role
     * in the rollout (the master, the canary): once per role, not per node.
     */
    closureDiff?: boolean;
    /**
     * The VM behind the node and the definition its Domain gives it: size,
     * and what else a restart applies (domain type, kernel, initrd, command
     * line, console log, network, host name). When it changes, the update
     * restarts the VM (its Domain only saved the new definition) before it
     * switches: VM restarts follow the rollout order and each is verified
     * with the switch that follows it.
     */
    vm?: VmRef;
}

/**
 * What Spark must report about a node after its switch, and how a removed
 * worker is decommissioned. SparkCluster passes one per node.
 */
export interface SparkCheck {
    role: "master" | "worker";
    /** The master's web UI (http://MASTER:8080), whose /json/ is asked. */
    webUiUrl: string;
    /** The address the node's Spark daemon serves on (master) or registers from (worker). */
    address: string;
    /** A worker's cores and memory as its system offers them (cluster/rollout.ts workerOffer); checked when given. */
    cores?: number;
    memoryMiB?: number;
    /** The daemon's systemd unit: its journal goes into the error, a removed worker's gets SIGPWR. */
    unit: "spark-master" | "spark-worker";
    /** How long Spark gets to agree after the switch (deploy.rollout.verifyTimeoutSeconds). */
    timeoutSeconds: number;
    /** How long a removed worker's executors get after it is decommissioned (deploy.decommissionTimeoutSeconds). Default 120. */
    decommissionTimeoutSeconds?: number;
}

export interface NixosDeploymentOutputs extends NixosDeploymentInputs {
    /** What `readlink -f /run/current-system` said on the node at the last deploy or refresh. */
    currentSystem: string;
    /** The nixos-rebuild generation used at the last deploy. */
    flavourUsed: "legacy" | "ng";
    /**
     * The node's SSH host keys as known_hosts lines: what first contact pinned
     * (verified against the VM's console, or first use), then what the
     * known-hosts file held when the node last answered. Put back into the
     * known-hosts file when a checkout's file has no entry for the node.
     */
    hostKeys?: string[];
}

/** The resource's arguments (what SparkCluster passes per node). */
export interface NixosDeploymentArgs {
    node: pulumi.Input<string>;
    flake: pulumi.Input<string>;
    configuration: pulumi.Input<string>;
    host: pulumi.Input<string>;
    /** The VM's identity (libvirt domain UUID): a new VM at the same address is deployed again. */
    machineId?: pulumi.Input<string>;
    sshUser: pulumi.Input<string>;
    /** Default 22. */
    sshPort?: pulumi.Input<number>;
    identityFile: pulumi.Input<string>;
    knownHostsFile: pulumi.Input<string>;
    /** The stack's own deploy key (pass a Pulumi secret): the deployment reaches its node from the state alone. */
    privateKey?: pulumi.Input<string>;
    expectedSystem: pulumi.Input<string>;
    buildHost?: pulumi.Input<string>;
    /** Default true. */
    useSudo?: pulumi.Input<boolean>;
    /** Default "nixos-rebuild". */
    rebuildCommand?: pulumi.Input<string>;
    /** Default "auto". */
    flavour?: pulumi.Input<RebuildFlavour>;
    /** Default 300. */
    sshWaitSeconds?: pulumi.Input<number>;
    /** Default 3600. */
    switchTimeoutSeconds?: pulumi.Input<number>;
    /** The secret Spark properties for the node (pass a Pulumi secret). */
    secretProperties?: pulumi.Input<string>;
    secretUnits?: pulumi.Input<pulumi.Input<string>[]>;
    /** What Spark must report after the switch; a worker is decommissioned through Spark on delete. */
    spark?: pulumi.Input<SparkCheck>;
    /** The VM's console log, to verify its host key on first contact. */
    consoleLog?: pulumi.Input<string>;
    /** Versions of what the expected system runs, for a package-level preview. */
    packages?: pulumi.Input<Record<string, unknown>>;
    /** The VM and its definition: a new one restarts it, in rollout order, before the switch. */
    vm?: pulumi.Input<VmRef> | { [K in keyof VmRef]: pulumi.Input<VmRef[K]> };
    /** Print `nix store diff-closures` of the old and new system after the switch (one node per role). */
    closureDiff?: pulumi.Input<boolean>;
}


// Not exported as consts on purpose: TypeScript compiles references to an
// exported const into `exports.X`, which would make the serialized provider
// capture this whole module (and with it @pulumi/pulumi via the class below).

/** Inputs whose change means the node must switch. Everything else only says how to reach it. */
// machineId: a VM recreated at the same address (a domain replaced, or
// destroyed behind the stack's back and brought back by `up`) boots the bare
// base image and must be deployed again.
// Not `flake`: it is the store copy of the flake that the program evaluated
// (cluster/nixParams.ts), whose path changes with any file under nix/ (a
// comment, another stack's settings); what the node runs is expectedSystem.
const SWITCH_KEYS = ["expectedSystem", "configuration", "host", "machineId"] as const;

const DEFAULTS = {
    sshPort: 22,
    useSudo: true,
    rebuildCommand: "nixos-rebuild",
    flavour: "auto" as RebuildFlavour,
    sshWaitSeconds: 300,
    switchTimeoutSeconds: 3600,
};

/** The keys whose change makes the node switch (for tests and docs). */
export function switchKeys(): string[] {
    return [...SWITCH_KEYS];
}

/** Default values of optional inputs. */
export function defaultInputs(): typeof DEFAULTS {
    return { ...DEFAULTS };
}

export function withDefaults(news: Record<string, unknown>): Record<string, unknown> {
    const out: Record<string, unknown> = { ...news };
    for (const [k, v] of Object.entries(DEFAULTS)) if (out[k] === undefined || out[k] === null) out[k] = v;
    return out;
}

/** check: problems with the inputs, one per key; unknown (preview) values pass. */
export function checkInputs(news: Record<string, unknown>): { property: string; reason: string }[] {
    const failures: { property: string; reason: string }[] = [];
    const known = (k: string) => news[k] !== UNKNOWN && news[k] !== undefined;
    for (const k of ["node", "flake", "configuration", "host", "sshUser", "identityFile", "knownHostsFile", "expectedSystem", "rebuildCommand"]) {
        if (news[k] === UNKNOWN) continue;
        if (typeof news[k] !== "string" || news[k] === "") failures.push({ property: k, reason: `${k} must be a non-empty string` });
    }
    if (known("configuration") && typeof news.configuration === "string" && !/^[A-Za-z0-9_.-]+$/.test(news.configuration)) {
        failures.push({ property: "configuration", reason: "configuration must be a plain nixosConfigurations name (letters, digits, '_', '.', '-')" });
    }
    if (known("flake") && typeof news.flake === "string" && news.flake.includes("#")) {
        failures.push({ property: "flake", reason: "flake must not contain '#': the configuration name goes in `configuration`" });
    }
    if (known("expectedSystem") && typeof news.expectedSystem === "string" && news.expectedSystem !== "") {
        if (news.expectedSystem.endsWith(".drv")) {
            failures.push({
                property: "expectedSystem",
                reason: "expectedSystem must be the toplevel OUT path (nix eval --raw <flake>#nixosConfigurations.<name>.config.system.build.toplevel.outPath), not a .drv",
            });
        } else if (!news.expectedSystem.startsWith("/")) {
            failures.push({ property: "expectedSystem", reason: "expectedSystem must be an absolute store path such as /nix/store/...-nixos-system-..." });
        }
    }
    for (const [k, lo, hi] of [["sshPort", 1, 65535], ["sshWaitSeconds", 1, 3600], ["switchTimeoutSeconds", 10, 86400]] as const) {
        const v = news[k];
        if (v === UNKNOWN || v === undefined) continue;
        if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi) failures.push({ property: k, reason: `${k} must be a whole number from ${lo} to ${hi}` });
    }
    if (known("flavour") && !["auto", "legacy", "ng"].includes(news.flavour as string)) {
        failures.push({ property: "flavour", reason: 'flavour must be "auto", "legacy" or "ng"' });
    }
    if (known("useSudo") && typeof news.useSudo !== "boolean") failures.push({ property: "useSudo", reason: "useSudo must be true or false" });
    failures.push(...checkSpark(news.spark));
    const vm = news.vm as Record<string, unknown> | string | undefined;
    if (vm !== undefined && vm !== null && vm !== UNKNOWN) {
        const whole = (v: unknown) => v === UNKNOWN || (typeof v === "number" && Number.isInteger(v) && v > 0);
        if (typeof vm !== "object" || !(vm.uri === UNKNOWN || typeof vm.uri === "string") || !(vm.domain === UNKNOWN || typeof vm.domain === "string") || !whole(vm.vcpus) || !whole(vm.memoryMiB) || !whole(vm.shutdownTimeoutSeconds)) {
            failures.push({ property: "vm", reason: "vm must be { uri, domain, vcpus, memoryMiB, shutdownTimeoutSeconds } with whole positive numbers" });
        }
    }
    return failures;
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
        const moved = nd === UNKNOWN ? [] : definitionChanges(ov.definition as Record<string, unknown>, nd as Record<string, unknown>, ["domainType", "kernel", "initrd", "cmdline", "consoleLog", "network", "hostname"]);
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

/**
 * refresh: whether the disk the VM runs from (vm.diskPath) is gone from
 * libvirt (a `virsh vol-delete` by hand), as diskGone: preview then shows
 * this deployment updated with the Volume that `up` creates again.
 */
export async function diskGoneOf(inp: NixosDeploymentInputs, log: (m: string) => void): Promise<{ diskGone?: boolean }> {
    if (!inp.vm || typeof inp.vm !== "object" || typeof inp.vm.diskPath !== "string" || inp.vm.diskPath === "") return {};
    try {
        const gone = (await lookup(inp.vm.uri, "volume", inp.vm.diskPath, ["vol-name", inp.vm.diskPath])) === undefined;
        if (gone) log(`refresh: its disk ${inp.vm.diskPath} is gone; the next \`pulumi up\` applies its role again to the disk it creates`);
        return { diskGone: gone };
    } catch (e) {
        log(`refresh: could not ask libvirt whether its disk is there: ${(e as Error).message.split("\n")[0]}`);
        return {};
    }
}

/** True when both `vm` inputs name the same VM: libvirt URI, domain, disk and MAC all recorded, known and equal. */
export function sameVmIdentity(olds: unknown, news: unknown): boolean {
    const o = olds as Partial<VmRef> | undefined;
    const n = news as Partial<VmRef> | undefined;
    if (!o || !n || typeof o !== "object" || typeof n !== "object") return false;
    return (["uri", "domain", "diskPath", "mac"] as const).every((k) => typeof o[k] === "string" && o[k] !== UNKNOWN && o[k] === n[k]);
}

/** The SSH target of a deployment. */
export function targetOf(inp: NixosDeploymentInputs): SshTarget {
    return { host: inp.host, user: inp.sshUser, port: inp.sshPort, identityFile: inp.identityFile, knownHostsFile: inp.knownHostsFile };
}

/**
 * What this checkout needs to reach the node, from the state when its cache
 * (.nixspark/<stack>/) lacks it: the deploy key (inp.privateKey) written to
 * identityFile when missing, and the host keys the state pinned (`pinned`,
 * the outputs' hostKeys) put into the known-hosts file when it has no entry
 * for the node. A refresh or destroy runs before any program could write
 * them, so read and delete need this as much as update.
 */
export async function prepareContact(inp: NixosDeploymentInputs, pinned: unknown, log: (m: string) => void): Promise<void> {
    if (typeof inp.privateKey === "string" && inp.privateKey !== "") {
        const fs = require("node:fs") as typeof import("node:fs");
        const path = require("node:path") as typeof import("node:path");
        const file = localPath(inp.identityFile);
        fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
        const key = inp.privateKey;
        const r = await withFileLock(file, async () => ensureKeyFile(file, key));
        if (r.action === "written") log(`wrote the stack's deploy key from the Pulumi state to ${inp.identityFile}`);
        if (r.action === "moved-aside") log(`${inp.identityFile} held another key than the stack's state; it now holds the state's key, the other was kept as ${r.movedTo}`);
    }
    if (await restoreHostKeys(inp.knownHostsFile, inp.host, inp.sshPort, pinned)) log(`put its pinned host key from the Pulumi state back into ${inp.knownHostsFile}`);
}

/** The hostKeys output after the node answered: the known-hosts file's entries for it, else what the state had. */
export function recordedHostKeys(inp: NixosDeploymentInputs, previous: unknown): { hostKeys?: string[] } {
    const lines = hostKeyLines(inp.knownHostsFile, inp.host, inp.sshPort);
    if (lines.length > 0) return { hostKeys: lines };
    return Array.isArray(previous) ? { hostKeys: previous as string[] } : {};
}

/**
 * An update for new provider code keeps the outputs, but takes how to reach
 * the node from the new inputs (the key, the stack's files): what a later
 * refresh or delete uses. (A state from before hostKeys gets them at the
 * node's next refresh or deploy, from the known-hosts file that worked.)
 */
export function reachOf(news: Record<string, unknown>): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const k of ["identityFile", "knownHostsFile", "privateKey"]) if (typeof news[k] === "string" && news[k] !== UNKNOWN) out[k] = news[k];
    return out;
}

/**
 * argv of nixos-rebuild for a switch (or its rollback). The privilege flag is
 * the one each generation documents: the shell script knows only
 * --use-remote-sudo (it rejects --sudo as an unknown option); nixos-rebuild-ng
 * has --sudo and keeps --use-remote-sudo only as a deprecated alias.
 * A rollback adds --rollback and --fast: --fast keeps either generation from
 * first building nixos-rebuild out of the (possibly broken) new flake.
 */
export function rebuildArgv(inp: NixosDeploymentInputs, flavour: "legacy" | "ng", opts: { rollback?: boolean } = {}): string[] {
    const argv = [inp.rebuildCommand, "switch"];
    if (opts.rollback) argv.push("--rollback", "--fast");
    argv.push("--flake", `${inp.flake}#${inp.configuration}`, "--target-host", destination(targetOf(inp)));
    if (inp.buildHost) argv.push("--build-host", inp.buildHost);
    if (inp.useSudo) argv.push(flavour === "ng" ? "--sudo" : "--use-remote-sudo");
    return argv;
}

/** Environment for nixos-rebuild: this process's, plus NIX_SSHOPTS (strict host keys). */
export function rebuildEnv(inp: NixosDeploymentInputs, base: Record<string, string | undefined> = process.env): Record<string, string | undefined> {
    return { ...base, NIX_SSHOPTS: nixSshOpts(targetOf(inp), "strict") };
}

/**
 * Which generation `command` is. A name ending in "nixos-rebuild-ng" is ng.
 * Otherwise ask it about an option neither knows: the shell script answers
 * "unknown option `...'" (its `*)` case), nixos-rebuild-ng's argparse answers
 * "unrecognized arguments" after a "usage:" line. Both exit before doing
 * anything (`--help` would start man instead). When the answer is neither,
 * assume the shell script: its --use-remote-sudo is also accepted by ng.
 */
export async function detectFlavour(command: string, log: (m: string) => void = () => undefined): Promise<"legacy" | "ng"> {
    const path = require("node:path") as typeof import("node:path");
    if (/nixos-rebuild-ng$/.test(path.basename(command))) return "ng";
    let out = "";
    try {
        const r = await run([command, "--nixspark-flavour-probe"], { timeoutMs: 30_000, allowFailure: true });
        out = `${r.stdout}\n${r.stderr}`;
    } catch (e) {
        throw new Error(`cannot run ${command} (deploy.rebuildCommand): ${(e as Error).message.split("\n")[0]}`);
    }
    if (/unrecognized arguments|usage: nixos-rebuild/.test(out)) return "ng";
    if (/unknown option/.test(out)) return "legacy";
    log(`could not tell which nixos-rebuild ${command} is; assuming the shell script (its --use-remote-sudo is accepted by both)`);
    return "legacy";
}

function logger(node: string): (m: string) => void {
    return (m: string) => console.error(`[${node}] ${m}`);
}

function inputsOf(props: Record<string, unknown>): NixosDeploymentInputs {
    const p = withDefaults(props) as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    for (const k of ["node", "flake", "configuration", "host", "machineId", "sshUser", "sshPort", "identityFile", "knownHostsFile", "privateKey", "expectedSystem", "buildHost", "useSudo", "rebuildCommand", "flavour", "sshWaitSeconds", "switchTimeoutSeconds", "secretProperties", "secretUnits", "spark", "consoleLog", "packages", "vm", "closureDiff"]) {
        if (p[k] !== undefined && p[k] !== null && p[k] !== "") out[k] = p[k];
    }
    return out as unknown as NixosDeploymentInputs;
}

const PROFILE = "/nix/var/nix/profiles/system";

/** The system profile's current generation link ("system-42-link"), or undefined if it cannot be read. */
async function profileGeneration(t: SshTarget): Promise<string | undefined> {
    try {
        return (await remoteCommand(t, ["readlink", PROFILE], 30_000)) || undefined;
    } catch {
        return undefined;
    }
}

export async function readCurrentSystem(t: SshTarget): Promise<string> {
    return remoteCommand(t, ["readlink", "-f", "/run/current-system"], 30_000);
}

/**
 * Rolls a node back after a failed switch or verification, but only if the
 * switch got as far as moving the system profile: a failure before that
 * (evaluation, build, copy) changed nothing on the node, and rolling back then
 * would step one generation *behind* what it ran. Returns a sentence for the
 * error message; never throws.
 */
async function rollBack(inp: NixosDeploymentInputs, flavour: "legacy" | "ng", before: string | undefined, log: (m: string) => void): Promise<string> {
    const t = targetOf(inp);
    const after = await profileGeneration(t);
    if (before !== undefined && after !== undefined && before === after) {
        log(`the system profile is still ${before}: nothing was activated, no rollback needed`);
        return `Nothing was activated (the system profile is still ${before}), so no rollback was needed.`;
    }
    const argv = rebuildArgv(inp, flavour, { rollback: true });
    log(`rolling back: ${argv.join(" ")}`);
    try {
        await run(argv, {
            env: rebuildEnv(inp),
            timeoutMs: Math.min(inp.switchTimeoutSeconds, 900) * 1000,
            onLine: (l) => log(`rollback: ${l}`),
        });
    } catch (e) {
        return `The ROLLBACK FAILED as well: ${(e as Error).message}\nRoll back by hand: NIX_SSHOPTS='${nixSshOpts(t, "strict")}' ${argv.join(" ")}`;
    }
    let now = "an unknown system";
    try {
        now = await readCurrentSystem(t);
    } catch {
        /* reported as unknown */
    }
    log(`rolled back; the node runs ${now}`);
    return `The node was rolled back to its previous generation and runs ${now}.`;
}

// ---------------------------------------------------------------------------
// Spark's word on a node: after its switch, and when a worker is removed.

/** check: problems with the `spark` input (unknown values pass). */
export function checkSpark(spark: unknown): { property: string; reason: string }[] {
    if (spark === undefined || spark === null || spark === UNKNOWN) return [];
    const bad = (reason: string) => [{ property: "spark", reason }];
    if (typeof spark !== "object") return bad("spark must be an object {role, webUiUrl, address, unit, timeoutSeconds, ...}");
    const s = spark as Record<string, unknown>;
    const known = (k: string) => s[k] !== UNKNOWN && s[k] !== undefined;
    if (known("role") && s.role !== "master" && s.role !== "worker") return bad('spark.role must be "master" or "worker"');
    if (known("unit") && s.unit !== "spark-master" && s.unit !== "spark-worker") return bad('spark.unit must be "spark-master" or "spark-worker"');
    if (known("webUiUrl") && !/^https?:\/\/[^/]+\/?$/.test(String(s.webUiUrl))) return bad(`spark.webUiUrl must be http://HOST:PORT (the master's web UI), got ${JSON.stringify(s.webUiUrl)}`);
    if (known("address") && (typeof s.address !== "string" || s.address === "")) return bad("spark.address must be the node's address");
    for (const k of ["timeoutSeconds", "cores", "memoryMiB", "decommissionTimeoutSeconds"]) {
        if (known(k) && (typeof s[k] !== "number" || !Number.isInteger(s[k]) || (s[k] as number) < 0)) return bad(`spark.${k} must be a whole number`);
    }
    if (known("timeoutSeconds") && (s.timeoutSeconds as number) < 1) return bad("spark.timeoutSeconds must be at least 1");
    return [];
}

/** A worker's ALIVE registration right after its switch: the master must then hear from it again. */
interface SparkBaseline {
    id: string;
    lastHeartbeat: number;
}

interface SparkVerdict {
    ok: boolean;
    /** What Spark reported, for progress and errors. */
    said: string;
    baseline?: SparkBaseline;
}

/**
 * Whether Spark agrees that the node runs: the master's status is ALIVE; for
 * a worker, the master lists exactly one ALIVE worker at its address, with
 * the expected cores and memory, that the master heard from after the
 * switch (a registration other than the baseline, the one the master listed
 * when the switch had completed, or a newer heartbeat of it). The last rule
 * keeps a registration the master has not yet noticed is gone from passing
 * for a worker that died or hung in the activation.
 */
export function sparkVerdict(spark: SparkCheck, master: MasterState | undefined, error?: string, baseline?: SparkBaseline): SparkVerdict {
    if (!master) return { ok: false, said: describeMaster(undefined, error) };
    if (spark.role === "master") {
        return { ok: master.status === "ALIVE", said: master.status === "ALIVE" ? `master ALIVE at ${spark.webUiUrl}` : `master status ${master.status}, expected ALIVE` };
    }
    const report = matchWorkers([{ name: "this node", ip: spark.address }], master);
    const match = report.matches[0];
    const alive = [...(match.state === "ALIVE" && match.worker ? [match.worker] : []), ...report.undeclared.filter((w) => w.host === spark.address)];
    const context = describeMaster(master, error);
    if (master.status !== "ALIVE") return { ok: false, said: `master status ${master.status}, expected ALIVE; ${context}` };
    if (alive.length === 0) {
        const what = match.state === "MISSING" ? "no worker registered" : `the newest registration is ${match.state} (${match.worker?.id ?? "?"})`;
        return { ok: false, said: `no ALIVE worker at ${spark.address}: ${what}; ${context}` };
    }
    if (alive.length > 1) return { ok: false, said: `${alive.length} ALIVE workers at ${spark.address}, expected exactly one; ${context}` };
    const w = alive[0] as MasterWorker;
    const wrong: string[] = [];
    if (spark.cores !== undefined && w.cores !== spark.cores) wrong.push(`${w.cores} cores, expected ${spark.cores}`);
    if (spark.memoryMiB !== undefined && w.memoryMiB !== spark.memoryMiB) wrong.push(`${w.memoryMiB} MiB, expected ${spark.memoryMiB}`);
    if (wrong.length > 0) return { ok: false, said: `the worker at ${spark.address} (${w.id}) offers ${wrong.join(" and ")}; ${context}` };
    if (baseline && w.id === baseline.id && w.lastHeartbeat <= baseline.lastHeartbeat) {
        return { ok: false, said: `the worker at ${spark.address} (${w.id}) has not sent the master a heartbeat since the switch; ${context}` };
    }
    return { ok: true, said: `worker ALIVE at ${spark.address} (${w.id}) with ${w.cores} cores and ${w.memoryMiB} MiB` };
}

/** The worker's ALIVE registration now, if the master answers (undefined for the master role). */
async function sparkBaseline(spark: SparkCheck): Promise<SparkBaseline | undefined> {
    if (spark.role !== "worker") return undefined;
    try {
        const m = await fetchMasterState(spark.webUiUrl, 5_000);
        const w = m.workers.find((x) => x.host === spark.address && x.state === "ALIVE");
        return w ? { id: w.id, lastHeartbeat: w.lastHeartbeat } : undefined;
    } catch {
        return undefined; // nothing registered that could pass for the new daemon
    }
}

/** Polls the master until sparkVerdict holds, at most timeoutSeconds; returns the last verdict. */
async function waitForSpark(spark: SparkCheck, baseline: SparkBaseline | undefined, timeoutSeconds: number, log: (m: string) => void): Promise<SparkVerdict> {
    const started = Date.now();
    const deadline = started + timeoutSeconds * 1000;
    let last: SparkVerdict = { ok: false, said: "not asked yet" };
    let lastLogged = "";
    for (;;) {
        let master: MasterState | undefined;
        let error: string | undefined;
        try {
            master = await fetchMasterState(spark.webUiUrl, Math.max(500, Math.min(5_000, deadline - Date.now())));
        } catch (e) {
            error = (e as Error).message;
        }
        last = sparkVerdict(spark, master, error, baseline);
        if (last.ok || Date.now() + 1_000 > deadline) return last;
        if (last.said !== lastLogged) {
            log(`Spark: ${Math.round((Date.now() - started) / 1000)} s: ${last.said}`);
            lastLogged = last.said;
        }
        await new Promise((r) => setTimeout(r, 1_000));
    }
}

/** The last 20 lines of the daemon's journal on the node, for the error message; never throws. */
async function daemonJournal(inp: NixosDeploymentInputs, unit: string): Promise<string> {
    try {
        const out = await remoteCommand(targetOf(inp), [...(inp.useSudo ? ["sudo", "-n"] : []), "journalctl", "-u", unit, "-n", "20", "--no-pager"], 30_000);
        return lastLines(out, 20) || "(empty)";
    } catch (e) {
        return `(could not read it: ${(e as Error).message.split("\n")[0]})`;
    }
}

/** Executors a worker runs, from its own web UI (/json/ of the address the master lists); 0 when it does not answer (gone). */
function workerExecutors(webUiAddress: string, timeoutMs: number): Promise<number> {
    const http = require("node:http") as typeof import("node:http");
    return new Promise((resolve) => {
        if (!/^http:\/\//.test(webUiAddress)) return resolve(0);
        const req = http.get(`${webUiAddress.replace(/\/+$/, "")}/json/`, { timeout: timeoutMs }, (res) => {
            let body = "";
            res.setEncoding("utf8");
            res.on("data", (c: string) => (body += c));
            res.on("end", () => {
                try {
                    const j = JSON.parse(body) as { executors?: unknown[] };
                    resolve(Array.isArray(j.executors) ? j.executors.length : 0);
                } catch {
                    resolve(0);
                }
            });
            res.on("error", () => resolve(0));
        });
        req.on("timeout", () => req.destroy());
        req.on("error", () => resolve(0));
    });
}

/**
 * Decommissions a worker through Spark before its VM stops: SIGPWR to the
 * worker daemon (Spark 3.1+ with spark.decommission.enabled: the worker tells
 * the master, which stops placing executors there and tells the drivers; the
 * executors finish their tasks, hand over their blocks and exit), then waits
 * until the master lists no ALIVE worker at the address and the worker runs
 * no executor, at most decommissionTimeoutSeconds. Only the daemon's main
 * process gets the signal (--kill-whom=main): SIGPWR ends a process that does
 * not handle it, such as an executor's Python workers. Never throws: an
 * unreachable node or master is logged and the delete goes on.
 */
export async function decommissionWorker(inp: NixosDeploymentInputs, spark: SparkCheck, log: (m: string) => void): Promise<void> {
    const timeoutSeconds = spark.decommissionTimeoutSeconds ?? 120;
    let master: MasterState | undefined;
    try {
        master = await fetchMasterState(spark.webUiUrl, 5_000);
    } catch (e) {
        log(`decommission: the master does not answer (${(e as Error).message.split("\n")[0]}); signalling the worker anyway, nobody can confirm it`);
    }
    if (master && !master.workers.some((w) => w.host === spark.address && w.state === "ALIVE")) {
        log(`decommission: the master lists no ALIVE worker at ${spark.address}; nothing to decommission`);
        return;
    }
    const argv = [...(inp.useSudo ? ["sudo", "-n"] : []), "systemctl", "kill", "--kill-whom=main", "--signal=SIGPWR", spark.unit];
    try {
        await remoteCommand(targetOf(inp), argv, 30_000);
    } catch (e) {
        log(`decommission: could not signal the worker (${(e as Error).message.split("\n")[0]}); going on without it`);
        return;
    }
    if (!master) return;
    log(`decommission: sent SIGPWR to ${spark.unit}; waiting up to ${timeoutSeconds} s (deploy.decommissionTimeoutSeconds) until the master no longer lists it ALIVE and its executors are gone`);
    const started = Date.now();
    const deadline = started + timeoutSeconds * 1000;
    let said = "";
    for (;;) {
        let state = "";
        try {
            const m = await fetchMasterState(spark.webUiUrl, 5_000);
            const regs = m.workers.filter((w) => w.host === spark.address).sort((a, b) => b.lastHeartbeat - a.lastHeartbeat);
            const alive = regs.filter((w) => w.state === "ALIVE");
            if (alive.length > 0) state = `the master still lists it ALIVE (${alive.map((w) => w.id).join(", ")})`;
            else {
                const executors = regs.length > 0 ? await workerExecutors(regs[0].webUiAddress, 5_000) : 0;
                if (executors === 0) {
                    log(`decommission: done after ${Math.round((Date.now() - started) / 1000)} s: the master lists the worker as ${regs[0]?.state ?? "gone"} and it runs no executor`);
                    return;
                }
                state = `${regs[0].state} at the master, still running ${executors} executor(s)`;
            }
        } catch (e) {
            state = `the master does not answer: ${(e as Error).message.split("\n")[0]}`;
        }
        if (Date.now() + 1_000 > deadline) {
            log(`decommission did not finish within ${timeoutSeconds} s (deploy.decommissionTimeoutSeconds): ${state}; going on, the VM is stopped now`);
            return;
        }
        if (state !== said) {
            log(`decommission: ${Math.round((Date.now() - started) / 1000)} s: ${state}`);
            said = state;
        }
        await new Promise((r) => setTimeout(r, 1_000));
    }
}

/**
 * `nix store diff-closures BEFORE AFTER` on this host, one line per package
 * whose version or size moved ("python3.11-numpy: 1.26.4 → 2.0.2, +1.2 MiB").
 * Both systems must be in this host's store (the old one from the last
 * deploy, unless collected; the new one from the build). Throws with Nix's
 * last words otherwise.
 */
export async function closureDiff(before: string, after: string, env?: Record<string, string | undefined>): Promise<string[]> {
    const r = await run(["nix", "--extra-experimental-features", "nix-command", "store", "diff-closures", before, after], { env, timeoutMs: 120_000, allowFailure: true });
    // eslint-disable-next-line no-control-regex
    const plain = (t: string) => t.replace(/\x1b\[[0-9;]*m/g, "");
    if (r.code !== 0) throw new Error(plain(lastLines(r.stderr, 3)).trim() || `exit code ${r.code}`);
    return plain(r.stdout).split("\n").map((l) => l.trimEnd()).filter((l) => l.trim() !== "");
}

/** Logs what moved between two systems of a role, or why that cannot be said here. Never throws. */
async function logClosureDiff(inp: NixosDeploymentInputs, before: string, after: string, log: (m: string) => void): Promise<void> {
    try {
        const lines = await closureDiff(before, after);
        log(`what moved in ${inp.configuration} (nix store diff-closures ${before} ${after}; shown once per role):`);
        for (const l of lines.length > 0 ? lines : ["(no package changed version or size)"]) log(`  ${l}`);
    } catch (e) {
        log(`no closure diff for ${inp.configuration}: ${(e as Error).message.split("\n").pop()} (the previous system is not in this host's store, or was built elsewhere)`);
    }
}

/**
 * refresh: what the running VM lacks of the definition `vm` records (libvirt's
 * live definition against it), as the `vmPending` output; the next diff
 * restarts it before the switch. Nothing when there is no `vm`; a libvirt
 * that cannot be asked is logged and keeps the recorded value.
 */
/**
 * Whether the VM this deployment switched (its Domain's UUID, machineId) is
 * gone from libvirt, or another VM now has its name: recorded by refresh as
 * vmGone, so that preview shows the deployment replaced with the VM that
 * `up` creates again. Undefined when unknown (no vm, libvirt unreachable).
 */
export async function vmGoneOf(inp: NixosDeploymentInputs, log: (m: string) => void): Promise<{ vmGone?: boolean }> {
    if (!inp.vm || typeof inp.vm !== "object" || typeof inp.machineId !== "string" || inp.machineId === "") return {};
    try {
        const uuid = (await lookup(inp.vm.uri, "domain", inp.vm.domain, ["domuuid", inp.vm.domain]))?.trim();
        if (uuid === inp.machineId) return { vmGone: false };
        log(`refresh: its VM ${inp.machineId} is ${uuid ? `replaced by ${uuid}` : "gone"}; the next \`pulumi up\` deploys the VM that replaces it from scratch`);
        return { vmGone: true };
    } catch (e) {
        log(`refresh: could not ask libvirt whether its VM is there: ${(e as Error).message.split("\n")[0]}`);
        return {};
    }
}

export async function vmPendingOf(inp: NixosDeploymentInputs, log: (m: string) => void): Promise<{ vmPending?: string[] }> {
    if (!inp.vm || typeof inp.vm !== "object") return {};
    try {
        const drift = (await vmDrift(inp.vm)).map((c) => c.text);
        if (drift.length > 0) log(`refresh: its VM runs an older definition (${drift.join(", ")}); the next \`pulumi up\` restarts it before the switch, in rollout order`);
        return { vmPending: drift };
    } catch (e) {
        log(`refresh: could not ask libvirt what its VM runs, keeping the recorded state: ${(e as Error).message.split("\n")[0]}`);
        return {};
    }
}

/**
 * create/update: wait for SSH, switch, verify, and on failure roll back and
 * throw an error naming the node with the last lines of nixos-rebuild's output.
 * `contact` says how to treat the host key: "first" for a VM this stack just
 * created (replace any stale entry), "new-address" for an update that moved
 * the deployment to another address (record an unknown key, refuse a changed
 * one), "known" otherwise (the key must be recorded and match).
 * An update first restarts the VM when it does not run the definition inp.vm
 * describes (a new size, console log, kernel command line, ...), and after a
 * verified switch prints the closure diff from previousSystem when asked
 * (inp.closureDiff).
 */
export async function deploy(inp: NixosDeploymentInputs, contact: "first" | "new-address" | "known", previousSecret?: string, previousSystem?: string, pinned?: unknown): Promise<NixosDeploymentOutputs> {
    const log = logger(inp.node);
    const t = targetOf(inp);
    const where = `${inp.node} (${destination(t)})`;
    ensureKnownHostsFile(inp.knownHostsFile);
    // The key and, for a node it knows, the host keys the state pinned (`pinned`: the old outputs' hostKeys).
    try {
        await prepareContact(inp, contact === "first" ? undefined : pinned, log);
    } catch (e) {
        throw new Error(`NixosDeployment ${where}: ${(e as Error).message}`);
    }

    try {
        // A new VM definition (size, console log, kernel, network, ...): the VM
        // restarts now, in this node's turn of the rollout, and the switch
        // below verifies it came back (Spark too, when asked).
        if (contact !== "first" && inp.vm) await restartForDefinition(inp.vm, log);
        if (contact === "first" && inp.consoleLog) {
            log(`waiting up to ${inp.sshWaitSeconds} s for the new VM to print its host keys to its console and answer on SSH`);
            await verifiedFirstContact(t, inp.consoleLog, { timeoutSeconds: inp.sshWaitSeconds, log });
        } else if (contact === "first") {
            log(`waiting up to ${inp.sshWaitSeconds} s for SSH on the new VM; its host key is trusted on first use (nixspark:ssh.hostKeys "first-use") and recorded in ${inp.knownHostsFile}`);
            await firstContact(t, { timeoutSeconds: inp.sshWaitSeconds, log });
        } else {
            try {
                await waitForSsh(t, { timeoutSeconds: inp.sshWaitSeconds, policy: "strict", log });
            } catch (e) {
                if (contact !== "new-address" || !/no SSH host key for .* is recorded/.test((e as Error).message)) throw e;
                log(`first contact with the new address ${inp.host}: recording its host key`);
                await firstContact(t, { timeoutSeconds: inp.sshWaitSeconds, log });
            }
        }
    } catch (e) {
        throw new Error(`NixosDeployment ${where}: ${(e as Error).message}`);
    }

    // The secret first: the new system's Spark reads it when it starts.
    if (inp.secretProperties) {
        log(`writing the cluster secret to the node (root only, outside /nix/store)`);
        try {
            await deliverSecretProperties(t, inp.secretProperties, { useSudo: inp.useSudo });
        } catch (e) {
            throw new Error(`NixosDeployment ${where}: ${(e as Error).message}`);
        }
    }

    const flavour = inp.flavour === "auto" ? await detectFlavour(inp.rebuildCommand, log) : inp.flavour;
    const before = await profileGeneration(t);
    const argv = rebuildArgv(inp, flavour);
    log(`switching to ${inp.flake}#${inp.configuration} (${flavour} nixos-rebuild): ${argv.join(" ")}`);

    let output = "";
    let failure: string | undefined;
    try {
        const r = await run(argv, {
            env: rebuildEnv(inp),
            timeoutMs: inp.switchTimeoutSeconds * 1000,
            allowFailure: true,
            onLine: (line) => {
                output += `${line}\n`;
                log(line);
            },
        });
        if (r.code !== 0) failure = `nixos-rebuild switch failed with exit code ${r.code}`;
    } catch (e) {
        failure = `nixos-rebuild switch did not complete: ${(e as Error).message.split("\n")[0]}`;
    }

    let current = "";
    if (!failure) {
        try {
            current = await readCurrentSystem(t);
            if (current !== inp.expectedSystem) {
                failure = `after the switch the node runs ${current || "(nothing)"}, but the program expected ${inp.expectedSystem} (the flake evaluates differently here than in the program?)`;
            }
        } catch (e) {
            failure = `could not verify the switch: ${(e as Error).message}`;
        }
    }

    if (failure) {
        const rolled = await rollBack(inp, flavour, before, log);
        const tail = lastLines(output, 20) || "(no output)";
        throw new Error(`NixosDeployment ${where}: ${failure}. ${rolled}\nLast lines of nixos-rebuild's output:\n${tail}`);
    }
    // A rotated secret on a running node: the switch alone restarts nothing
    // when the system did not change, so restart what reads the secret.
    if (previousSecret !== undefined && inp.secretProperties !== undefined && previousSecret !== inp.secretProperties && (inp.secretUnits ?? []).length > 0) {
        const units = inp.secretUnits as string[];
        log(`the cluster secret changed: restarting ${units.join(", ")}`);
        try {
            await remoteCommand(t, [...(inp.useSudo ? ["sudo", "-n"] : []), "systemctl", "restart", ...units], 300_000);
        } catch (e) {
            throw new Error(`NixosDeployment ${where}: the new cluster secret was written, but restarting ${units.join(", ")} failed: ${(e as Error).message}`);
        }
    }
    if (inp.spark) {
        const spark = inp.spark;
        log(`waiting up to ${spark.timeoutSeconds} s for Spark to report the ${spark.role} at ${spark.address} ALIVE`);
        // The worker's registration as the switch left it: the master must hear from it anew.
        const verdict = await waitForSpark(spark, await sparkBaseline(spark), spark.timeoutSeconds, log);
        if (!verdict.ok) {
            log(`Spark did not confirm the ${spark.role}: ${verdict.said}`);
            const journal = await daemonJournal(inp, spark.unit);
            const rolled = await rollBack(inp, flavour, before, log);
            let after = "";
            if (rolled.startsWith("The node was rolled back")) {
                const again = await waitForSpark(spark, await sparkBaseline(spark), spark.timeoutSeconds, log);
                after = ` After the rollback Spark reports: ${again.ok ? "" : "still not confirmed: "}${again.said}.`;
            }
            throw new Error(
                `NixosDeployment ${where}: Spark did not confirm the ${spark.role} within ${spark.timeoutSeconds} s after the switch ` +
                    `(deploy.rollout.verifyTimeoutSeconds): ${verdict.said}. ${rolled}${after} Later rollout batches do not start.\n` +
                    `Last lines of journalctl -u ${spark.unit} on the node:\n${journal}`,
            );
        }
        log(`Spark agrees: ${verdict.said}`);
    }
    if (inp.closureDiff && previousSystem && previousSystem !== UNKNOWN && previousSystem !== current) await logClosureDiff(inp, previousSystem, current, log);
    log(`now running ${current}`);
    return { ...inp, currentSystem: current, flavourUsed: flavour, ...recordedHostKeys(inp, pinned) };
}

/**
 * The provider object. Its methods only call module-level functions of this
 * file, ./run and ./ssh, which serialize with it; nothing here touches
 * @pulumi/pulumi (it is only used by the Resource class below).
 */
export const nixosDeploymentProvider: pulumi.dynamic.ResourceProvider = {
    async check(_olds: Record<string, unknown>, news: Record<string, unknown>) {
        const inputs = withDefaults(news);
        return { inputs, failures: checkInputs(inputs) };
    },

    async diff(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
        const d = deploymentDiff(olds, withDefaults(news));
        // The package-level preview: what the switch will move on this node,
        // by version, shown by `pulumi preview` (and `up`) before any build.
        if (d.changes && news.expectedSystem !== olds.expectedSystem) {
            const node = typeof news.node === "string" ? news.node : _id;
            for (const line of describePackageChanges(olds.packages as Record<string, unknown>, news.packages as Record<string, unknown>)) console.error(`[${node}] will switch: ${line}`);
        }
        if (d.replaces.length > 0) {
            const node = typeof news.node === "string" ? news.node : _id;
            const spark = olds.spark as SparkCheck | undefined;
            console.error(
                spark && spark.role === "worker"
                    ? `[${node}] its VM will be replaced: the worker is decommissioned through Spark first (its executors get up to ${spark.decommissionTimeoutSeconds ?? 120} s, deploy.decommissionTimeoutSeconds), then the new VM is deployed`
                    : `[${node}] its VM will be replaced: the new VM gets a first deployment`,
            );
        }
        // New provider code alone is an update too, one that keeps the outputs (see update).
        return { changes: d.changes || providerCodeChanged(olds, news), replaces: d.replaces, deleteBeforeReplace: d.deleteBeforeReplace };
    },

    async create(inputs: Record<string, unknown>) {
        const inp = inputsOf(inputs);
        const outs = await deploy(inp, "first");
        return { id: `${inp.node}@${inp.host}`, outs };
    },

    async update(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
        // Only the provider code changed: no switch, keep the outputs.
        // The `spark` input is taken over though: a delete decommissions with what the state holds.
        if (!deploymentDiff(olds, withDefaults(news)).changes) return { outs: { ...keptOutputs(olds), ...(news.spark ? { spark: news.spark } : {}), ...reachOf(news) } };
        const inp = inputsOf(news);
        // A different VM (same address, new machine) is a first contact: this
        // stack created it, so its new host key replaces the recorded one.
        // So is a new disk under the same VM: a fresh system with new host keys.
        const contact = (olds.machineId !== undefined && olds.machineId !== inp.machineId) || diskRecreated(olds, news) ? "first" : olds.host !== inp.host ? "new-address" : "known";
        const previousSecret = typeof olds.secretProperties === "string" ? olds.secretProperties : undefined;
        const previousSystem = typeof olds.currentSystem === "string" && olds.currentSystem !== "" ? olds.currentSystem : undefined;
        return { outs: await deploy(inp, contact, previousSecret, previousSystem, olds.hostKeys) };
    },

    async read(id: string, props: Record<string, unknown>) {
        const inp = inputsOf(props);
        const log = logger(inp.node ?? id);
        // Does the VM run the definition its deployment restarted it for? (Its Domain saved another one.)
        const vm = { ...(await vmPendingOf(inp, log)), ...(await vmGoneOf(inp, log)), ...(await diskGoneOf(inp, log)) };
        try {
            // From the state when this checkout lacks them: a refresh runs before the program.
            await prepareContact(inp, props.hostKeys, log);
            const current = await readCurrentSystem(targetOf(inp));
            props = { ...props, ...recordedHostKeys(inp, props.hostKeys) };
            if (current !== inp.expectedSystem) log(`refresh: the node runs ${current}, not the recorded ${inp.expectedSystem}; the next \`pulumi up\` switches it back`);
            return { id, props: { ...props, ...vm, currentSystem: current } };
        } catch (e) {
            log(`refresh: could not ask the node which system it runs, keeping the recorded state: ${(e as Error).message.split("\n")[0]}`);
            return { id, props: { ...props, ...vm } };
        }
    },

    async delete(id: string, props: Record<string, unknown>) {
        const node = typeof props.node === "string" ? props.node : id;
        // A worker leaves through Spark before its VM stops (the deployment
        // depends on the domain, so this runs before the domain's delete).
        const spark = props.spark as SparkCheck | undefined;
        if (spark && spark.role === "worker") {
            await prepareContact(inputsOf(props), props.hostKeys, logger(node)).catch((e: Error) => console.error(`[${node}] ${e.message.split("\n")[0]}`));
            await decommissionWorker(inputsOf(props), spark, logger(node));
            return;
        }
        console.error(`[${node}] nothing to do on the VM for its NixOS deployment: the VM is deleted with its domain`);
    },
};

export class NixosDeployment extends pulumi.dynamic.Resource {
    declare readonly node: pulumi.Output<string>;
    declare readonly host: pulumi.Output<string>;
    declare readonly expectedSystem: pulumi.Output<string>;
    /** What the node ran at the last deploy or refresh. */
    declare readonly currentSystem: pulumi.Output<string>;
    declare readonly flavourUsed: pulumi.Output<string>;
    /** The node's pinned SSH host keys (known_hosts lines). */
    declare readonly hostKeys: pulumi.Output<string[] | undefined>;

    constructor(name: string, args: NixosDeploymentArgs, opts?: pulumi.CustomResourceOptions) {
        super(
            nixosDeploymentProvider,
            name,
            {
                ...args,
                sshPort: args.sshPort ?? DEFAULTS.sshPort,
                useSudo: args.useSudo ?? DEFAULTS.useSudo,
                rebuildCommand: args.rebuildCommand ?? DEFAULTS.rebuildCommand,
                flavour: args.flavour ?? DEFAULTS.flavour,
                sshWaitSeconds: args.sshWaitSeconds ?? DEFAULTS.sshWaitSeconds,
                switchTimeoutSeconds: args.switchTimeoutSeconds ?? DEFAULTS.switchTimeoutSeconds,
                currentSystem: undefined,
                flavourUsed: undefined,
                hostKeys: undefined,
            },
            // Secret whatever the caller passed: the deploy key and the Spark secret properties.
            { ...opts, additionalSecretOutputs: [...(opts?.additionalSecretOutputs ?? []), "privateKey", "secretProperties"] },
            "nixspark",
            "NixosDeployment",
        );
    }
}
