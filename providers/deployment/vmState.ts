// What a refresh learns from libvirt about a deployment's VM: gone (or
// replaced), or running an older definition than its Domain saved.
import { lookup } from "../virsh";
import { vmDrift } from "../vmPower";
import type { NixosDeploymentInputs } from "./types";

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

/**
 * refresh: what the running VM lacks of the definition `vm` records (libvirt's
 * live definition against it), as the `vmPending` output; the next diff
 * restarts it before the switch. Nothing when there is no `vm`; a libvirt
 * that cannot be asked is logged and keeps the recorded value.
 */
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
