// Volume: a node's disk, a qcow2 copy-on-write overlay on the base volume
// that was current when it was created. A newer base image never replaces
// it (`basePath` is only where new overlays go; the backing a volume really
// has is `backingPath` in its outputs). A bigger capacity grows it in place
// (blockresize through the running VM that uses it, vol-resize otherwise); a
// smaller one is refused by check, before anything changes.
//
// A disk from before base volumes (a legacy overlay: it backs onto the image
// file itself, in /nix/store, outside the pool) is moved onto the pool's
// base volume by its first update: the two must have the same content
// (`qemu-img compare`, else the update is refused and nothing changes), and
// the overlay's qcow2 header then names the base volume (what `qemu-img
// rebase -u` writes, done through libvirt's vol-download/vol-upload). qemu
// holds the disk while the VM runs, so the VM is shut down for it and started
// again, one VM of the stack at a time (the stack's restart lock). check
// says so in preview (`moveRequired`).
import * as pulumi from "@pulumi/pulumi";
import { removeBaseIfUnused, poolVolumes, retiredMarker } from "./baseVolume";
import { withRestartLock } from "./domain";
import { readVolume, volumeXml } from "./libvirtXml";
import { addGcRoot, removeGcRoot } from "./nixImage";
import { run } from "./run";
import { isUnknown, keptOutputs } from "./unknown";
import { diffByKeys, isNotFound, isPoolInactive, label, lookup, virsh, virshError, withXmlFile } from "./virsh";
import { bringUp, domState, powerOff } from "./vmPower";
import { providerRef } from "./codeRef";

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
    /** Seconds the VM gets to shut down before a move onto the base volume (legacy disks); default 60. */
    shutdownTimeoutSeconds?: number;
    /**
     * Set by check, for preview: the disk backs onto a file outside the pool
     * (a stack from before base volumes) and this update moves it onto the
     * base volume, restarting its VM ("" when nothing moves). Not compared by diff.
     */
    moveRequired?: string;
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
 * The file a disk from before base volumes backs onto (outside the pool's
 * directory, e.g. the image in /nix/store) when the base volume new overlays
 * go onto is another file; undefined for an overlay on a base volume of the
 * pool (current or retired) or when nothing is known. Pure: paths only.
 * `olds` are the recorded outputs (backingPath) or, in check, the old inputs
 * (the previous release's Volume had its backing file as an input).
 */
export function legacyBacking(olds: Record<string, unknown> | undefined, news: Record<string, unknown>): string | undefined {
    const path = require("node:path") as typeof import("node:path");
    const backing = olds?.backingPath;
    const file = [olds?.path, news.path].find((p): p is string => typeof p === "string" && p !== "" && !isUnknown(p));
    if (typeof backing !== "string" || backing === "" || file === undefined) return undefined;
    if (path.dirname(backing) === path.dirname(file)) return undefined; // a base volume of the pool
    if (!isUnknown(news.basePath) && (typeof news.basePath !== "string" || news.basePath === backing || path.dirname(news.basePath) !== path.dirname(file))) return undefined;
    return backing;
}

/** check's line for preview: what the update does to a legacy disk and its VM. */
export function moveReason(olds: Record<string, unknown> | undefined, news: Record<string, unknown>): string {
    const from = legacyBacking(olds, news);
    if (from === undefined) return "";
    const base = isUnknown(news.basePath) ? "the pool's base volume" : `the pool's base volume ${String(news.basePath)}`;
    const vm = typeof news.domain === "string" && news.domain !== "" ? `its VM ${news.domain} restarts for it (shutdown, then start; one VM of the stack at a time)` : "no VM uses it";
    return `backs onto ${from}, outside the pool (a disk from before base volumes): moved onto ${base} after checking both have the same content; ${vm}`;
}

/**
 * The first cluster of a qcow2 image (at least its header, header extensions
 * and backing file name) with the backing file name replaced: what `qemu-img
 * rebase -u` changes (qcow2 spec: backing_file_offset at byte 8,
 * backing_file_size at 16, cluster_bits at 20; the name sits in the first
 * cluster after the header extensions). The backing format extension is kept.
 */
export function qcow2WithBacking(head: Buffer, backing: string): Buffer {
    if (head.length < 72 || head.readUInt32BE(0) !== 0x514649fb) throw new Error("not a qcow2 image (no QFI\\xfb magic)");
    const version = head.readUInt32BE(4);
    const clusterSize = 2 ** head.readUInt32BE(20);
    const offset = Number(head.readBigUInt64BE(8));
    const oldSize = head.readUInt32BE(16);
    if (offset === 0) throw new Error("the image has no backing file");
    // Where the header and its extensions end: the name must not overlap them.
    let ext = version >= 3 ? head.readUInt32BE(100) : 72;
    for (;;) {
        if (ext + 8 > head.length) throw new Error("qcow2 header extensions run past the first cluster");
        const type = head.readUInt32BE(ext);
        const len = head.readUInt32BE(ext + 4);
        ext += 8;
        if (type === 0) break;
        ext += Math.ceil(len / 8) * 8;
    }
    const name = Buffer.from(backing, "utf8");
    if (offset < ext || offset + Math.max(name.length, oldSize) > Math.min(clusterSize, head.length)) {
        throw new Error(`the backing file name (${name.length} bytes at ${offset}) does not fit in the image's first cluster`);
    }
    const out = Buffer.from(head);
    out.fill(0, offset, offset + oldSize);
    name.copy(out, offset);
    out.writeUInt32BE(name.length, 16);
    return out;
}

/** The store path (/nix/store/<hash>-<name>) a file lies in; undefined outside the store. */
export function storePathOf(file: string): string | undefined {
    return /^(\/nix\/store\/[0-9a-z]{32}-[^/]+)/.exec(file)?.[1];
}

/**
 * Where a disk from before base volumes keeps the image it backs onto alive
 * until it is moved: an indirect GC root of its own,
 * <stateDir>/gcroots/legacy-<volume>/<store path's name>. So an image change
 * (NixImage's delete drops its root, also as a pending delete at the start of
 * the next `up` after a refused move) never lets go of a file a disk still
 * backs onto.
 */
export function legacyRootDir(stateDir: string, volume: string): string {
    const path = require("node:path") as typeof import("node:path");
    return path.join(stateDir, "gcroots", `legacy-${volume}`);
}

/** Drops the legacy disk's GC roots (after its move, or with the disk): only symlinks into /nix/store, then the directory. */
function releaseLegacyRoots(stateDir: string | undefined, volume: string): void {
    if (!stateDir) return;
    const fs = require("node:fs") as typeof import("node:fs");
    const path = require("node:path") as typeof import("node:path");
    const dir = legacyRootDir(stateDir, volume);
    if (!fs.existsSync(dir)) return;
    for (const e of fs.readdirSync(dir)) {
        const root = path.join(dir, e);
        let target = "";
        try {
            target = fs.readlinkSync(root);
        } catch {
            continue;
        }
        if (storePathOf(target) === target) removeGcRoot(root, target);
    }
    if (fs.readdirSync(dir).length === 0) fs.rmdirSync(dir);
}

/**
 * Moves a legacy overlay onto the base volume `base`: refuses unless the old
 * backing file and the base have the same content (`qemu-img compare`),
 * then, with its VM shut down (one VM of the stack at a time) or off,
 * rewrites the overlay's backing file name through libvirt and starts the VM
 * again. Checks that libvirt then reads `base` as its backing store.
 */
async function moveOntoBase(olds: VolumeOutputs, news: VolumeInputs, from: string): Promise<void> {
    const fs = require("node:fs") as typeof import("node:fs");
    const os = require("node:os") as typeof import("node:os");
    const path = require("node:path") as typeof import("node:path");
    const what = label("volume", `${news.pool}/${news.name}`);
    const base = news.basePath;
    const fix =
        `recreate the disk from the current image instead (its data is lost: \`pulumi up --replace\` with the Volume's URN), ` +
        `or run \`pulumi up\` with the image the disk was created from (its base volume is then that image)`;
    if (!fs.existsSync(from)) throw new Error(`${what} backs onto ${from}, which does not exist any more, so it cannot be moved onto ${base}: ${fix}`);
    // Kept alive until the move is done, whatever happens to the NixImage meanwhile.
    const storePath = storePathOf(from);
    if (storePath && news.stateDir) await addGcRoot(legacyRootDir(news.stateDir, news.name), storePath);
    const cmp = await run(["qemu-img", "compare", "-U", "-q", from, base], { timeoutMs: 30 * 60_000, allowFailure: true });
    if (cmp.code === 1) throw new Error(`${what} backs onto ${from}, whose content differs from the pool's base volume ${base} (the image changed since the disk was made), so it was not moved: ${fix}`);
    if (cmp.code !== 0) throw new Error(`${what}: could not compare ${from} with ${base} (qemu-img compare: ${cmp.stderr.trim() || `exit ${cmp.code}`}); nothing was changed`);

    const rewrite = async () => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-rebase-"));
        try {
            const headFile = path.join(dir, "head");
            const download = (length: number) => virsh(news.uri, ["vol-download", "--pool", news.pool, news.name, headFile, "--offset", "0", "--length", String(length)], { what });
            // The header's first bytes say the cluster size; the first cluster holds the name.
            await download(512);
            const start = fs.readFileSync(headFile);
            const bits = start.length >= 24 ? start.readUInt32BE(20) : 0;
            if (bits < 9 || bits > 21) throw new Error(`${what} is not a qcow2 image libvirt can move (cluster bits ${bits})`);
            await download(2 ** bits);
            const patched = qcow2WithBacking(fs.readFileSync(headFile), base);
            fs.writeFileSync(headFile, patched);
            await virsh(news.uri, ["vol-upload", "--pool", news.pool, news.name, headFile, "--offset", "0", "--length", String(patched.length)], { what });
        } finally {
            fs.rmSync(dir, { recursive: true, force: true });
        }
        await virsh(news.uri, ["pool-refresh", news.pool], { what: label("pool", news.pool) });
        const now = readVolume((await virsh(news.uri, ["vol-dumpxml", "--pool", news.pool, news.name], { what })).stdout).backingPath;
        if (now !== base) throw new Error(`${what}: after rewriting its backing file libvirt reads ${now ?? "none"}, not ${base}`);
        console.error(`${what}: moved from ${from} onto the pool's base volume ${base} (same content)`);
        releaseLegacyRoots(news.stateDir, news.name);
    };

    const dom = news.domain;
    const state = dom ? await domState(news.uri, dom) : undefined;
    if (!dom || state === undefined || state === "shut off") return rewrite();
    const timeout = news.shutdownTimeoutSeconds ?? 60;
    const domWhat = label("domain", dom);
    const restart = async () => {
        console.error(`${domWhat}: restarting to move its disk onto the pool's base volume (shutdown, up to ${timeout} s, then start)`);
        await powerOff(news.uri, dom, timeout);
        try {
            await rewrite();
        } finally {
            // Started again whether or not the move worked: a failed move leaves the disk as it was.
            const s = await bringUp(news.uri, dom, await domState(news.uri, dom), false);
            if (s !== "running") throw new Error(`${domWhat} did not start again after its disk was moved onto ${base}: state is "${s}"`);
        }
        console.error(`${domWhat}: running again, its disk on ${base}`);
    };
    await (news.stateDir ? withRestartLock(news.stateDir, domWhat, 30 * 60_000, restart) : restart());
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
        return { inputs: { ...news, moveRequired: moveReason(olds, news) }, failures: checkVolumeInputs(olds, news) };
    },

    // basePath (a newer image) and the state directory never change an
    // existing disk; a different capacity is an update (check refuses less).
    // A disk from before base volumes (backing outside the pool) is an update
    // that moves it onto the base volume.
    async diff(_id: string, olds: VolumeOutputs, news: VolumeInputs) {
        const d = diffByKeys(olds as any, news as any, ["uri", "pool", "name"], ["capacityBytes"]);
        if (d.replaces.length > 0) return d;
        // An update keeps the file: its path stays known in preview, so the Domain on it sees no change.
        // (Its backing too, unless this update moves it.)
        if (legacyBacking(olds as any, news as any) !== undefined) return { ...d, changes: true, stables: ["path", "uri", "pool", "name"] };
        return { ...d, stables: ["path", "backingPath", "uri", "pool", "name"] };
    },

    async create(inputs: VolumeInputs) {
        const backingPath = inputs.basePath;
        // Asked of libvirt first: the base volume is in a pool of the host that
        // runs the VM, which may be another machine (or mount namespace). A
        // backing file outside any pool is looked for here.
        const fs = require("node:fs") as typeof import("node:fs");
        if ((await lookup(inputs.uri, "volume", backingPath, ["vol-info", backingPath])) === undefined && !fs.existsSync(backingPath)) {
            throw new Error(`base image ${backingPath} does not exist on ${inputs.uri}; build it (see README) or set nixspark:image.path`);
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
        const legacy = legacyBacking(olds as any, news as any);
        if (legacy !== undefined) await moveOntoBase(olds, news, legacy);
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
        const backingPath = legacy !== undefined ? news.basePath : (olds.backingPath ?? (olds as any).basePath);
        return { outs: { ...kept, ...keptOutputs(news as any), path: olds.path, backingPath, ...(news.moveRequired ? { moveRequired: "" } : {}) } };
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
        releaseLegacyRoots(props.stateDir, props.name);
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
        super(providerRef("Volume", volumeProvider), name, { path: undefined, ...args, backingPath: undefined, diskId: undefined }, { deleteBeforeReplace: true, ...opts }, "nixspark", "Volume");
    }
}
