// Volume: a node's disk, a qcow2 copy-on-write overlay on the base volume
// that was current when it was created. A newer base image never replaces
// it (`basePath` is only where new overlays go; the backing a volume really
// has is `backingPath` in its outputs). A bigger capacity grows it in place
// (blockresize through the running VM that uses it, vol-resize otherwise); a
// smaller one is refused by check, before anything changes.
import * as pulumi from "@pulumi/pulumi";
import { removeBaseIfUnused, poolVolumes, retiredMarker } from "./baseVolume";
import { readVolume, volumeXml } from "./libvirtXml";
import { isUnknown, keptOutputs } from "./unknown";
import { diffByKeys, isNotFound, isPoolInactive, label, lookup, virsh, virshError, withXmlFile } from "./virsh";

export interface VolumeInputs {
    uri: string;
    pool: string;
    name: string;
    /** The base volume new overlays back onto (the current image). Not a replace trigger. */
    basePath: string;
    capacityBytes: number;
    /** The libvirt domain that uses this disk: a growing disk is resized through it while it runs. */
    domain?: string;
    /** The stack's state directory, where retired base volumes are noted (see baseVolume.ts). */
    stateDir?: string;
    /**
     * Where the file will be (<pool path>/<name>): the engine shows a dynamic
     * resource's inputs as its outputs in preview, so this keeps `path` known
     * there. The outputs hold what libvirt says (vol-path).
     */
    path?: string;
}

export interface VolumeOutputs extends VolumeInputs {
    path: string;
    /** The base this overlay actually backs onto (recorded at create, read back on refresh). */
    backingPath: string;
    /**
     * This disk's identity: new whenever the Volume is created (also when
     * `up` re-creates a disk deleted behind the stack's back), kept by
     * updates (state from before it has none until a re-create: its
     * deployment then sees a disk found gone by refresh, see
     * nixosDeployment.ts diskRecreated). The node's deployment re-applies
     * its role when it changes.
     */
    diskId: string;
}

const GiB = 1024 ** 3;
const gib = (b: number) => `${Number((b / GiB).toFixed(2))} GiB`;

/** check: a disk never shrinks (qcow2 would cut off the guest's filesystem); one failure naming both sizes. */
export function checkVolumeInputs(olds: Record<string, unknown> | undefined, news: Record<string, unknown>): { property: string; reason: string }[] {
    const failures: { property: string; reason: string }[] = [];
    const cap = news.capacityBytes;
    if (typeof cap === "number" && cap <= 0) failures.push({ property: "capacityBytes", reason: "capacity must be positive" });
    const was = olds?.capacityBytes;
    if (typeof cap === "number" && typeof was === "number" && !isUnknown(cap) && cap < was) {
        failures.push({
            property: "capacityBytes",
            reason:
                `the disk of ${String(news.name)} cannot shrink from ${gib(was)} to ${gib(cap)}: disks only grow in place ` +
                `(shrinking would cut off the guest's filesystem); set diskGiB back to ${Math.ceil(was / GiB)} or more. Nothing was changed`,
        });
    }
    return failures;
}

/**
 * The volume's XML, undefined when libvirt says the volume does not exist.
 * A pool that is not running (a host reboot) is started first when `start`
 * is set, and otherwise reported as "inactive".
 */
async function volumeXmlOf(p: VolumeInputs, start: boolean): Promise<string | undefined | "inactive"> {
    const args = ["vol-dumpxml", "--pool", p.pool, p.name];
    const what = label("volume", `${p.pool}/${p.name}`);
    for (let attempt = 1; ; attempt++) {
        const r = await virsh(p.uri, args, { allowFailure: true, what });
        if (r.code === 0) return r.stdout;
        if (isNotFound("volume", r.stderr)) return undefined;
        if (!isPoolInactive(r.stderr)) throw virshError(args, r, what);
        if (!start || attempt > 1) return "inactive";
        console.error(`${what}: ${label("pool", p.pool)} is not running; starting it`);
        await virsh(p.uri, ["pool-start", p.pool], { what: label("pool", p.pool) });
    }
}

/** A fresh disk identity (see VolumeOutputs.diskId). */
function newDiskId(): string {
    return (require("node:crypto") as typeof import("node:crypto")).randomUUID();
}

export const volumeProvider: pulumi.dynamic.ResourceProvider = {
    async check(olds: any, news: any) {
        return { inputs: news, failures: checkVolumeInputs(olds, news) };
    },

    // basePath (a newer image) and the state directory never change an
    // existing disk; a different capacity is an update (check refuses less).
    async diff(_id: string, olds: VolumeOutputs, news: VolumeInputs) {
        const d = diffByKeys(olds as any, news as any, ["uri", "pool", "name"], ["capacityBytes"]);
        // An update keeps the file: its path stays known in preview, so the Domain on it sees no change.
        return d.replaces.length === 0 ? { ...d, stables: ["path", "backingPath", "uri", "pool", "name"] } : d;
    },

    async create(inputs: VolumeInputs) {
        const fs = require("node:fs") as typeof import("node:fs");
        const backingPath = inputs.basePath;
        if (!fs.existsSync(backingPath)) {
            throw new Error(`base image ${backingPath} does not exist; build it (see README) or set nixspark:image.path`);
        }
        const existing = await volumeXmlOf(inputs, true);
        if (existing === "inactive") throw new Error(`${label("pool", inputs.pool)} is not running and did not start`);
        let actual = backingPath;
        if (existing !== undefined) {
            const f = readVolume(existing);
            if (f.backingPath === undefined) {
                throw new Error(
                    `volume "${inputs.name}" already exists in pool "${inputs.pool}" and backs onto nothing, not ${backingPath}; ` +
                        `delete it (virsh vol-delete --pool ${inputs.pool} ${inputs.name}) and run again`,
                );
            }
            actual = f.backingPath; // adopted (a re-run after a lost state file): it keeps the base it has
        } else {
            await withXmlFile(volumeXml({ name: inputs.name, capacityBytes: inputs.capacityBytes, backingPath }), (f) =>
                virsh(inputs.uri, ["vol-create", inputs.pool, f], { what: label("volume", `${inputs.pool}/${inputs.name}`) }),
            );
        }
        const path = (await virsh(inputs.uri, ["vol-path", "--pool", inputs.pool, inputs.name], { what: label("volume", `${inputs.pool}/${inputs.name}`) })).stdout.trim();
        const outs: VolumeOutputs = { ...inputs, path, backingPath: actual, diskId: newDiskId() };
        return { id: `${inputs.pool}/${inputs.name}`, outs };
    },

    // Grows the disk in place: through the VM when it runs (qemu holds the
    // image; the guest sees the new size at once), else in the file. Also
    // the update that only stores new provider code or a new basePath: the
    // disk and its recorded backing stay.
    async update(_id: string, olds: VolumeOutputs, news: VolumeInputs) {
        const what = label("volume", `${news.pool}/${news.name}`);
        const kept = keptOutputs(olds as any) as unknown as VolumeOutputs;
        if (news.capacityBytes < olds.capacityBytes) throw new Error(checkVolumeInputs(olds as any, news as any)[0]?.reason ?? `${what}: cannot shrink`);
        if (news.capacityBytes > olds.capacityBytes) {
            const bytes = String(Math.floor(news.capacityBytes));
            let viaDomain = false;
            if (news.domain) {
                const state = await lookup(news.uri, "domain", news.domain, ["domstate", news.domain]);
                if (state !== undefined && ["running", "paused"].includes(state.trim())) {
                    console.error(`${what}: growing from ${gib(olds.capacityBytes)} to ${gib(news.capacityBytes)} through the running ${label("domain", news.domain)}`);
                    await virsh(news.uri, ["blockresize", news.domain, olds.path, `${bytes}B`], { what: label("domain", news.domain) });
                    viaDomain = true;
                }
            }
            if (!viaDomain) {
                console.error(`${what}: growing from ${gib(olds.capacityBytes)} to ${gib(news.capacityBytes)}`);
                await virsh(news.uri, ["vol-resize", "--pool", news.pool, news.name, bytes], { what });
            }
        }
        return { outs: { ...kept, ...keptOutputs(news as any), path: olds.path, backingPath: olds.backingPath ?? (olds as any).basePath } };
    },

    async read(id: string, props: VolumeOutputs) {
        const xml = await volumeXmlOf(props, false);
        if (xml === undefined) return { id: undefined as unknown as string, props: {} };
        if (xml === "inactive") {
            // A stopped pool (host reboot) says nothing about its volumes: keep what is recorded.
            console.error(`${label("volume", `${props.pool}/${props.name}`)}: ${label("pool", props.pool)} is not running, keeping the recorded state; the next \`pulumi up\` starts the pool`);
            return { id, props };
        }
        const f = readVolume(xml);
        return { id, props: { ...props, path: f.path ?? props.path, backingPath: f.backingPath ?? props.backingPath, capacityBytes: f.capacityBytes ?? props.capacityBytes } };
    },

    // After a host reboot the pool may be stopped: it is started, then the
    // volume deleted. A retired base volume (see baseVolume.ts) that this
    // overlay was the last user of goes with it.
    async delete(_id: string, props: VolumeOutputs) {
        const xml = await volumeXmlOf(props, true);
        if (xml === undefined) return;
        if (xml === "inactive") throw new Error(`${label("volume", `${props.pool}/${props.name}`)}: ${label("pool", props.pool)} is not running and did not start`);
        const backing = readVolume(xml).backingPath;
        await virsh(props.uri, ["vol-delete", "--pool", props.pool, props.name], { what: label("volume", `${props.pool}/${props.name}`) });
        if (!backing || !props.stateDir) return;
        const fs = require("node:fs") as typeof import("node:fs");
        const path = require("node:path") as typeof import("node:path");
        const base = path.basename(backing);
        if (!fs.existsSync(retiredMarker(props.stateDir, base))) return;
        const volumes = await poolVolumes(props.uri, props.pool);
        if (volumes.get(base)?.path !== backing) return; // not a volume of this pool
        await removeBaseIfUnused(props.uri, props.pool, base, volumes, props.stateDir);
    },
};

export class Volume extends pulumi.dynamic.Resource {
    declare readonly path: pulumi.Output<string>;
    declare readonly backingPath: pulumi.Output<string>;
    declare readonly diskId: pulumi.Output<string>;
    constructor(name: string, args: { [K in keyof VolumeInputs]: pulumi.Input<VolumeInputs[K]> }, opts?: pulumi.CustomResourceOptions) {
        super(volumeProvider, name, { path: undefined, ...args, backingPath: undefined, diskId: undefined }, { deleteBeforeReplace: true, ...opts }, "nixspark", "Volume");
    }
}
