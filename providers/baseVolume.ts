// BaseVolume: the stack's base image imported into its storage pool, once per
// image, as a read-only (0444) qcow2 volume named after the image's identity
// (<stack>-base-<hash>.qcow2). Node volumes are overlays backing onto it, so
// the image belongs to libvirt: no GC root in a checkout keeps VMs' disks
// alive, and a new image never touches existing overlays.
//
// A new image is a new libvirt name, so the resource is replaced
// (create-before-delete). The old volume is removed only when no overlay in
// the pool backs onto it any more (`vol-dumpxml`'s backingStore says which
// do): Pulumi's delete of a base that is still in use keeps the file and
// marks it retired (a file under the stack's state directory, outside the
// pool: every file in a pool directory is a volume); the overlay delete that
// leaves it unused removes it, and so does the next BaseVolume create, which
// sweeps every unused base of the stack other than itself.
//
// The markers are a cache (.nixspark/ may be lost at any time): what is
// retired is in the state, as the current BaseVolume's `retiredBases` (every
// other base of the stack still in the pool when it was created or last
// refreshed), from which the program writes missing markers
// (markRetiredBases). A destroy needs no marker at all: once no overlay of
// the stack is left, nothing is current and every unused base goes.
//
// A base volume found in the pool at create is adopted only when it holds
// the image's bytes (an import is a byte copy): a half import (a retried
// vol-create, an interrupted vol-upload) is imported again, or refused while
// overlays back onto it.
import * as pulumi from "@pulumi/pulumi";
import { readVolume } from "./libvirtXml";
import { keptOutputs } from "./unknown";
import { diffByKeys, isNotFound, isPoolInactive, label, virsh, virshError, withXmlFile } from "./virsh";
import { providerRef } from "./codeRef";
import { consoleLogPlace, onHostArgv } from "./consoleLog";
import { run, RunResult } from "./run";

export interface BaseVolumeInputs {
    uri: string;
    pool: string;
    /** <stack>-base-<hash of the image's identity>.qcow2 */
    name: string;
    /** "<stack>-base-": every base volume of the stack starts with it (for the sweep). */
    namePrefix: string;
    /** The built image (NixImage's imagePath or nixspark:image.path); read once, at create. */
    sourcePath: string;
    /** The stack's state directory (absolute, or relative to the project directory the engine runs providers in), where retired bases are noted. */
    stateDir: string;
}

export interface BaseVolumeOutputs extends BaseVolumeInputs {
    /** The volume's file: what overlays back onto. */
    path: string;
    /** The image's virtual size. */
    capacityBytes: number;
    /** The stack's other base volumes in the pool (retired: only overlays made before this image use them), at create or the last refresh. */
    retiredBases?: string[];
}

/** The file that says a base volume is retired (its resource deleted, its file kept for overlays). */
export function retiredMarker(stateDir: string, name: string): string {
    const path = require("node:path") as typeof import("node:path");
    return path.join(stateDir, "retired-base-volumes", name);
}

/** Marks a base volume retired (its resource deleted or replaced, its file kept while overlays use it): a file under stateDir/retired-base-volumes. */
export function markRetired(stateDir: string, name: string, content = `${name}\n`): void {
    const fs = require("node:fs") as typeof import("node:fs");
    const path = require("node:path") as typeof import("node:path");
    const marker = retiredMarker(stateDir, name);
    fs.mkdirSync(path.dirname(marker), { recursive: true, mode: 0o700 });
    fs.writeFileSync(marker, content);
}

/**
 * The program's side of the cache: writes the marker of every base the
 * state calls retired (the current BaseVolume's retiredBases) that this
 * checkout lacks, never one for the current base. Returns the names marked.
 */
export function markRetiredBases(stateDir: string, retired: unknown, current: string): string[] {
    const fs = require("node:fs") as typeof import("node:fs");
    const names = (Array.isArray(retired) ? retired : []).filter((n): n is string => typeof n === "string" && /^[A-Za-z0-9._-]+$/.test(n) && n !== current);
    const marked = names.filter((n) => !fs.existsSync(retiredMarker(stateDir, n)));
    for (const n of marked) markRetired(stateDir, n);
    return marked;
}

/** The names of the stack's base volumes (namePrefix, .qcow2) among a pool's volumes. */
export function stackBases(names: Iterable<string>, namePrefix: string): string[] {
    return [...names].filter((n) => n.startsWith(namePrefix) && n.endsWith(".qcow2")).sort();
}

/** Every volume of the pool: name -> its facts (path, backing path). Starts an inactive pool. */
export async function poolVolumes(uri: string, pool: string): Promise<Map<string, { path?: string; backingPath?: string }>> {
    const what = label("pool", pool);
    // (virsh 9's vol-list has no --name: the table's first column, after its two header lines.)
    const args = ["vol-list", "--pool", pool];
    let list = await virsh(uri, ["pool-refresh", pool], { allowFailure: true, what });
    if (list.code !== 0 && isPoolInactive(list.stderr)) {
        console.error(`${what} is not running; starting it`);
        await virsh(uri, ["pool-start", pool], { what });
    } else if (list.code !== 0) {
        throw virshError(["pool-refresh", pool], list, what);
    }
    list = await virsh(uri, args, { what });
    const out = new Map<string, { path?: string; backingPath?: string }>();
    const names = list.stdout
        .split("\n")
        .filter((l) => !/^\s*Name\s+Path\s*$/.test(l) && !/^\s*-+\s*$/.test(l))
        .map((l) => l.trim().split(/\s+/)[0])
        .filter(Boolean);
    for (const name of names) {
        const r = await virsh(uri, ["vol-dumpxml", "--pool", pool, name], { allowFailure: true, what: label("volume", `${pool}/${name}`) });
        if (r.code !== 0) {
            if (isNotFound("volume", r.stderr)) continue; // removed meanwhile
            throw virshError(["vol-dumpxml", "--pool", pool, name], r, label("volume", `${pool}/${name}`));
        }
        const f = readVolume(r.stdout);
        out.set(name, { path: f.path, backingPath: f.backingPath });
    }
    return out;
}

/** The overlays in the pool that back onto `path`. */
export function usersOf(volumes: Map<string, { path?: string; backingPath?: string }>, path: string): string[] {
    return [...volumes.entries()].filter(([, v]) => v.backingPath === path).map(([n]) => n).sort();
}

/**
 * Removes the base volume `name` when no overlay backs onto it; returns the
 * overlays that still do (then it stays).
 */
export async function removeBaseIfUnused(
    uri: string,
    pool: string,
    name: string,
    volumes: Map<string, { path?: string; backingPath?: string }>,
    stateDir?: string,
): Promise<string[]> {
    const v = volumes.get(name);
    if (v === undefined) return [];
    const users = usersOf(volumes, v.path ?? "");
    if (users.length > 0) return users;
    const what = label("volume", `${pool}/${name}`);
    const r = await virsh(uri, ["vol-delete", "--pool", pool, name], { allowFailure: true, what });
    if (r.code !== 0 && !isNotFound("volume", r.stderr)) throw virshError(["vol-delete", "--pool", pool, name], r, what);
    console.error(`${what}: base volume removed (no overlay backs onto it any more)`);
    volumes.delete(name);
    if (stateDir) require("node:fs").rmSync(retiredMarker(stateDir, name), { force: true });
    return [];
}

/**
 * True when the pool's volume at `volumePath` on the libvirt host of `uri`
 * holds the image's bytes. On this machine the files are compared; on a host
 * reached over ssh its `sha256sum` of the volume is compared with the
 * image's (run with the URI's login, as console logs are read). Anything
 * that cannot be compared counts as different.
 */
export async function sameImage(uri: string, imagePath: string, volumePath: string, runner: (argv: string[], opts: { timeoutMs: number; allowFailure: boolean }) => Promise<RunResult> = run): Promise<boolean> {
    let place;
    try {
        place = consoleLogPlace(uri);
    } catch {
        return false; // a transport nixspark cannot reach the host's files over
    }
    if (place.local) return sameBytes(imagePath, volumePath);
    const crypto = require("node:crypto") as typeof import("node:crypto");
    const fs = require("node:fs") as typeof import("node:fs");
    let local: string;
    try {
        const h = crypto.createHash("sha256");
        for await (const chunk of fs.createReadStream(imagePath)) h.update(chunk); // an image is gigabytes
        local = h.digest("hex");
    } catch {
        return false;
    }
    const r = await runner(onHostArgv(place, ["sha256sum", "--", volumePath]), { timeoutMs: 30 * 60_000, allowFailure: true });
    return r.code === 0 && r.stdout.trim().split(/\s+/)[0] === local;
}

/**
 * True when both files hold the same bytes (an import is a byte copy of the
 * image: vol-upload). A file that cannot be read counts as different.
 */
export function sameBytes(a: string, b: string): boolean {
    const fs = require("node:fs") as typeof import("node:fs");
    let fa: number | undefined;
    let fb: number | undefined;
    try {
        if (fs.statSync(a).size !== fs.statSync(b).size) return false;
        fa = fs.openSync(a, "r");
        fb = fs.openSync(b, "r");
        const size = 4 * 1024 * 1024;
        const ba = Buffer.alloc(size);
        const bb = Buffer.alloc(size);
        for (let pos = 0; ; pos += size) {
            const na = fs.readSync(fa, ba, 0, size, pos);
            const nb = fs.readSync(fb, bb, 0, size, pos);
            if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
            if (na === 0) return true;
        }
    } catch {
        return false;
    } finally {
        if (fa !== undefined) fs.closeSync(fa);
        if (fb !== undefined) fs.closeSync(fb);
    }
}

/** The image's virtual size from the imported volume. */
async function importedFacts(uri: string, pool: string, name: string): Promise<{ path: string; capacityBytes: number; format?: string }> {
    const what = label("volume", `${pool}/${name}`);
    const f = readVolume((await virsh(uri, ["vol-dumpxml", "--pool", pool, name], { what })).stdout);
    return { path: f.path ?? "", capacityBytes: f.capacityBytes ?? 0, format: f.format };
}

/** Imports the image file into the pool: a 0444 volume of the file's size, the bytes uploaded, the pool re-read (libvirt then sees the qcow2 inside). */
async function importImage(inp: BaseVolumeInputs): Promise<void> {
    const fs = require("node:fs") as typeof import("node:fs");
    const what = label("volume", `${inp.pool}/${inp.name}`);
    const size = fs.statSync(inp.sourcePath).size;
    const xml = [
        `<volume type='file'>`,
        `  <name>${inp.name.replace(/[<>&'"]/g, "")}</name>`,
        `  <capacity unit='bytes'>${size}</capacity>`,
        `  <target>`,
        `    <format type='raw'/>`,
        `    <permissions><mode>0444</mode></permissions>`,
        `  </target>`,
        `</volume>`,
        ``,
    ].join("\n");
    console.error(`${what}: importing the base image ${inp.sourcePath} (${size} bytes)`);
    await withXmlFile(xml, (f) => virsh(inp.uri, ["vol-create", inp.pool, f], { what }));
    try {
        // Streams the file through libvirtd: about a minute per GiB is generous.
        await virsh(inp.uri, ["vol-upload", "--pool", inp.pool, inp.name, inp.sourcePath], { what, timeoutMs: 120_000 + Math.ceil(size / 2 ** 30) * 60_000, tries: 1 });
        await virsh(inp.uri, ["pool-refresh", inp.pool], { what: label("pool", inp.pool) });
        const f = await importedFacts(inp.uri, inp.pool, inp.name);
        if (f.format !== "qcow2") throw new Error(`${what}: ${inp.sourcePath} is not a qcow2 image (libvirt reads it as ${f.format ?? "unknown"})`);
    } catch (e) {
        await virsh(inp.uri, ["vol-delete", "--pool", inp.pool, inp.name], { allowFailure: true, what });
        throw e;
    }
}

export const baseVolumeProvider: pulumi.dynamic.ResourceProvider = {
    async check(_olds: any, news: any) {
        const failures = [];
        const v = news.sourcePath;
        if (typeof v === "string" && !v.startsWith("/") && v !== "04da6b54-80e4-46f7-96ec-b56ff0331ba9") failures.push({ property: "sourcePath", reason: "sourcePath must be an absolute path" });
        if (news.stateDir === "") failures.push({ property: "stateDir", reason: "stateDir must be a directory" });
        if (typeof news.name === "string" && typeof news.namePrefix === "string" && !news.name.startsWith(news.namePrefix)) {
            failures.push({ property: "name", reason: `name must start with ${news.namePrefix}` });
        }
        return { inputs: news, failures };
    },

    // A new image is a new name: replace (the old one goes only when unused,
    // see delete). The source file alone (same identity) changes nothing.
    async diff(_id: string, olds: BaseVolumeOutputs, news: BaseVolumeInputs) {
        const d = diffByKeys(olds as any, news as any, ["uri", "pool", "name"], []);
        return { ...d, deleteBeforeReplace: false };
    },

    async create(inputs: BaseVolumeInputs) {
        const fs = require("node:fs") as typeof import("node:fs");
        const volumes = await poolVolumes(inputs.uri, inputs.pool);
        // Current now, whatever a marker (maybe a stale one) said.
        fs.rmSync(retiredMarker(inputs.stateDir, inputs.name), { force: true });
        const what = label("volume", `${inputs.pool}/${inputs.name}`);
        const found = volumes.get(inputs.name);
        if (found !== undefined && !fs.existsSync(inputs.sourcePath)) {
            // (Nothing to compare with: a retired base that is current again whose image file is gone.)
            console.error(`${what}: this image is in the pool already; using it (${inputs.sourcePath} is not here to compare it with)`);
        } else if (found !== undefined && (await sameImage(inputs.uri, inputs.sourcePath, found.path ?? ""))) {
            // The same image imported before (a retired base that is current again, or a lost state file): adopt it.
            console.error(`${what}: this image is in the pool already (the same bytes as ${inputs.sourcePath}); using it`);
        } else if (found !== undefined) {
            // A half import (a retried vol-create, an interrupted vol-upload): never adopted. Imported again, unless overlays use it.
            const users = usersOf(volumes, found.path ?? "");
            if (users.length > 0) {
                throw new Error(
                    `${what} is in the pool but is not a whole copy of ${inputs.sourcePath}, and ${users.join(", ")} back onto it; ` +
                        `it was left as it is: check those disks, delete them and the volume (virsh vol-delete --pool ${inputs.pool} <name>), then run \`pulumi up\` again`,
                );
            }
            console.error(`${what} is in the pool but is not a whole copy of ${inputs.sourcePath} (an interrupted import); importing it again`);
            await virsh(inputs.uri, ["vol-delete", "--pool", inputs.pool, inputs.name], { what });
            await importImage(inputs);
        } else {
            if (!fs.existsSync(inputs.sourcePath)) {
                throw new Error(`base image ${inputs.sourcePath} does not exist; build it (see README) or set nixspark:image.path`);
            }
            await importImage(inputs);
        }
        // Sweep: older bases of this stack that no overlay uses any more.
        const after = await poolVolumes(inputs.uri, inputs.pool);
        for (const name of [...after.keys()]) {
            if (name !== inputs.name && name.startsWith(inputs.namePrefix) && name.endsWith(".qcow2")) await removeBaseIfUnused(inputs.uri, inputs.pool, name, after, inputs.stateDir);
        }
        const f = await importedFacts(inputs.uri, inputs.pool, inputs.name);
        // What the sweep kept is retired (overlays use it): noted in the state, and in this checkout's cache.
        const retiredBases = stackBases(after.keys(), inputs.namePrefix).filter((n) => n !== inputs.name);
        for (const n of retiredBases) markRetired(inputs.stateDir, n, `${after.get(n)?.path ?? n}\n`);
        const outs: BaseVolumeOutputs = { ...inputs, path: f.path, capacityBytes: f.capacityBytes, retiredBases };
        return { id: `${inputs.pool}/${inputs.name}`, outs };
    },

    // Only provider code or inputs that do not matter once imported (the source file, the state directory).
    async update(_id: string, olds: BaseVolumeOutputs, news: BaseVolumeInputs) {
        return { outs: { ...keptOutputs(olds as any), sourcePath: news.sourcePath, stateDir: news.stateDir } };
    },

    async read(id: string, props: BaseVolumeOutputs) {
        const what = label("volume", `${props.pool}/${props.name}`);
        const r = await virsh(props.uri, ["vol-dumpxml", "--pool", props.pool, props.name], { allowFailure: true, what });
        if (r.code === 0) {
            const f = readVolume(r.stdout);
            // The stack's other bases still in the pool (a listing only: a stopped pool keeps the recorded list).
            const list = await virsh(props.uri, ["vol-list", "--pool", props.pool], { allowFailure: true, what: label("pool", props.pool) });
            const names = list.code === 0 ? list.stdout.split("\n").slice(2).map((l) => l.trim().split(/\s+/)[0]).filter(Boolean) : undefined;
            const retired = names ? { retiredBases: stackBases(names, props.namePrefix).filter((n) => n !== props.name) } : {};
            return { id, props: { ...props, path: f.path ?? props.path, capacityBytes: f.capacityBytes ?? props.capacityBytes, ...retired } };
        }
        if (isNotFound("volume", r.stderr)) return { id: undefined as unknown as string, props: {} };
        if (isPoolInactive(r.stderr)) {
            console.error(`${what}: ${label("pool", props.pool)} is not running, keeping the recorded state; the next \`pulumi up\` starts the pool`);
            return { id, props };
        }
        throw virshError(["vol-dumpxml", "--pool", props.pool, props.name], r, what);
    },

    // Removed now when no overlay backs onto it; otherwise kept and marked
    // retired, for the overlay delete that leaves it unused.
    async delete(_id: string, props: BaseVolumeOutputs) {
        const fs = require("node:fs") as typeof import("node:fs");
        const volumes = await poolVolumes(props.uri, props.pool);
        const users = await removeBaseIfUnused(props.uri, props.pool, props.name, volumes, props.stateDir);
        if (users.length > 0) {
            markRetired(props.stateDir, props.name, `${props.path}\n`);
            console.error(
                `${label("volume", `${props.pool}/${props.name}`)}: kept, ${users.length} overlay(s) still back onto it (${users.join(", ")}); ` +
                    `it is removed when the last of them is`,
            );
            return;
        }
        // Nothing is current any more (a destroy): other retired bases nobody uses go too.
        // When no overlay of the stack is left in the pool, no base is current
        // (every node has its overlay, and a replacing base is only made while
        // they exist), so each unused base goes, marked or not: the markers are
        // a cache this checkout may lack. Otherwise only the marked ones.
        const bases = stackBases(volumes.keys(), props.namePrefix);
        const basePaths = new Set(bases.map((n) => volumes.get(n)?.path).filter((p): p is string => !!p));
        const overlays = [...volumes.values()].filter((v) => v.backingPath !== undefined && basePaths.has(v.backingPath));
        for (const name of bases) {
            if (overlays.length === 0 || fs.existsSync(retiredMarker(props.stateDir, name))) {
                await removeBaseIfUnused(props.uri, props.pool, name, volumes, props.stateDir);
            }
        }
        // The stack is gone: so are its markers, stale ones (a base already removed) too.
        if (overlays.length === 0) {
            const dir = require("node:path").dirname(retiredMarker(props.stateDir, props.name)) as string;
            for (const m of fs.existsSync(dir) ? fs.readdirSync(dir) : []) if (m.startsWith(props.namePrefix)) fs.rmSync(retiredMarker(props.stateDir, m), { force: true });
        }
    },
};

export class BaseVolume extends pulumi.dynamic.Resource {
    declare readonly name: pulumi.Output<string>;
    declare readonly path: pulumi.Output<string>;
    declare readonly capacityBytes: pulumi.Output<number>;
    /** The stack's retired base volumes (see markRetiredBases). */
    declare readonly retiredBases: pulumi.Output<string[] | undefined>;
    constructor(name: string, args: { [K in keyof BaseVolumeInputs]: pulumi.Input<BaseVolumeInputs[K]> }, opts?: pulumi.CustomResourceOptions) {
        super(providerRef("BaseVolume", baseVolumeProvider), name, { ...args, path: undefined, capacityBytes: undefined, retiredBases: undefined }, opts, "nixspark", "BaseVolume");
    }
}
