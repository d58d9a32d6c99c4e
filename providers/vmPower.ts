// Power and size of a running VM, shared by the Domain provider (start,
// stop, restart for a new size when no deployment does it) and the
// NixosDeployment provider (the restart a resize needs, taken in rollout
// order: see restartForSize). Import-free of @pulumi/pulumi, so both
// serialized providers can carry it.
import { readDomain } from "./libvirtXml";
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

/** Which VM a deployment runs on, and the size its Domain defines for it (SparkCluster passes it). */
export interface VmRef {
    uri: string;
    /** The libvirt domain name. */
    domain: string;
    vcpus: number;
    memoryMiB: number;
    /** Seconds the guest gets to shut down before it is destroyed. */
    shutdownTimeoutSeconds: number;
}

/** The size the running VM has now (its live definition); undefined when it is not running. */
export async function liveSize(uri: string, name: string): Promise<{ vcpus?: number; memoryMiB?: number } | undefined> {
    if ((await domState(uri, name)) !== "running") return undefined;
    const f = readDomain((await virsh(uri, ["dumpxml", name], { what: label("domain", name) })).stdout);
    return { vcpus: f.vcpus, memoryMiB: f.memoryMiB };
}

/**
 * Restarts the VM (shutdown within its timeout, then start) when it runs
 * with another size than `vm` says: its Domain's update saved the new size
 * in the definition and left the restart to the node's deployment, which
 * runs in rollout order (master, canary, batches; each after the one before
 * was verified). Returns whether it restarted; throws when the VM does not
 * come back.
 */
export async function restartForSize(vm: VmRef, log: (m: string) => void): Promise<boolean> {
    const what = label("domain", vm.domain);
    const live = await liveSize(vm.uri, vm.domain);
    if (live === undefined || (live.vcpus === vm.vcpus && live.memoryMiB === vm.memoryMiB)) return false;
    log(`${what}: restarting for ${vm.memoryMiB} MiB / ${vm.vcpus} vCPUs (runs ${live.memoryMiB} MiB / ${live.vcpus} vCPUs; shutdown, up to ${vm.shutdownTimeoutSeconds} s, then start)`);
    await powerOff(vm.uri, vm.domain, vm.shutdownTimeoutSeconds);
    const state = await bringUp(vm.uri, vm.domain, await domState(vm.uri, vm.domain), false);
    if (state !== "running") throw new Error(`${what} did not start again after its resize: state is "${state}"`);
    log(`${what}: running again with ${vm.memoryMiB} MiB / ${vm.vcpus} vCPUs`);
    return true;
}
