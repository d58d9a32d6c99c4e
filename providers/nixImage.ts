// NixImage: the `nix build` of the stack's base image, with a GC root so that
// `nix-collect-garbage` can never delete a backing file under running VMs.
//
// The program evaluates the image's derivation path before registering this
// resource (cluster/nixFlake.ts: evalDrvPath), so diff compares two strings
// and preview says "replace" exactly when the image would be rebuilt, without
// running Nix. create builds (`nix build --no-link --json`; Nix 2.8 has no
// --print-out-paths) and registers the root; delete removes that root; read
// notices a store path that vanished and reports the resource gone.
//
// Provider rules (docs/design.md, Provider rules): modules are required inside functions, the
// provider object captures neither zod nor @pulumi/pulumi, outs carry every
// input, diff always answers `changes`. Build progress goes to console.error:
// the Pulumi engine shows a dynamic provider's stderr to the user line by
// line (pulumi.log does not reach the user from inside a provider).
import * as pulumi from "@pulumi/pulumi";
import { lastLines, run } from "./run";
import { keptOutputs, providerCodeChanged, UNKNOWN } from "./unknown";
import { providerRef } from "./codeRef";

/** Resolved inputs, as the provider sees them (every one is also in the outputs). */
export interface NixImageInputs {
    /** Flake reference, absolute for local flakes: "path:/home/me/nixspark/nix". */
    flake: string;
    /** Attribute path inside the flake: 'packages.x86_64-linux."dev-base-image"'. */
    attribute: string;
    /** What the program evaluated: `nix eval --raw <flake>#<attribute>.drvPath`. */
    drvPath: string;
    /** The stack's directory of GC roots (absolute), e.g. <project>/.nixspark/dev/gcroots. */
    gcRootDir: string;
    /** Seconds one build may take. */
    buildTimeoutSeconds: number;
}

export interface NixImageOutputs extends NixImageInputs {
    /** The build's output path in the Nix store. */
    storePath: string;
    /** The .qcow2 file (the store path itself when the output is a file). */
    imagePath: string;
    sizeBytes: number;
    /** The indirect GC root: a symlink <gcRootDir>/<store path's name> -> storePath. */
    gcRoot: string;
}

/** The resource's arguments. */
export interface NixImageArgs {
    flake: pulumi.Input<string>;
    attribute: pulumi.Input<string>;
    drvPath: pulumi.Input<string>;
    gcRootDir: pulumi.Input<string>;
    /** Default 10800 (3 hours). */
    buildTimeoutSeconds?: pulumi.Input<number>;
}


/** Defaults of optional inputs. */
export function nixImageDefaults(): { buildTimeoutSeconds: number } {
    return { buildTimeoutSeconds: 10800 };
}

/** check: one failure per bad input; unknown (preview) values pass. */
export function checkNixImageInputs(inputs: object): { property: string; reason: string }[] {
    const news = inputs as Record<string, unknown>;
    const failures: { property: string; reason: string }[] = [];
    const str = (k: string) => news[k] !== UNKNOWN && news[k] !== undefined;
    for (const k of ["flake", "attribute", "drvPath", "gcRootDir"]) {
        if (news[k] === UNKNOWN) continue;
        if (typeof news[k] !== "string" || news[k] === "") failures.push({ property: k, reason: `${k} must be a non-empty string` });
    }
    if (str("flake") && typeof news.flake === "string" && news.flake.includes("#")) {
        failures.push({ property: "flake", reason: "flake must not contain '#': the attribute goes in `attribute`" });
    }
    if (str("drvPath") && typeof news.drvPath === "string" && news.drvPath !== "" && !(news.drvPath.startsWith("/") && news.drvPath.endsWith(".drv"))) {
        failures.push({ property: "drvPath", reason: "drvPath must be a derivation path (nix eval --raw <flake>#<attribute>.drvPath), such as /nix/store/...-nixos-disk-image.drv" });
    }
    if (str("gcRootDir") && typeof news.gcRootDir === "string" && news.gcRootDir !== "" && !news.gcRootDir.startsWith("/")) {
        failures.push({ property: "gcRootDir", reason: "gcRootDir must be an absolute directory" });
    }
    const t = news.buildTimeoutSeconds;
    if (t !== undefined && t !== UNKNOWN && (typeof t !== "number" || !Number.isInteger(t) || t < 1)) {
        failures.push({ property: "buildTimeoutSeconds", reason: "buildTimeoutSeconds must be a whole number of seconds, at least 1" });
    }
    return failures;
}

/**
 * diff: replace when the derivation changed (or is unknown until apply); an
 * in-place update when only where it comes from or where its root lives
 * changed (same derivation: nothing is rebuilt); no change otherwise.
 * Keys not listed here are ignored; new provider code (`__provider`) is
 * answered by the provider's diff, not here.
 */
export function nixImageDiff(
    oldOutputs: object,
    newInputs: object,
): { changes: boolean; replaces: string[]; deleteBeforeReplace: boolean; stables: string[]; reasons: string[] } {
    const olds = oldOutputs as Record<string, unknown>;
    const news = newInputs as Record<string, unknown>;
    const reasons: string[] = [];
    const replaces: string[] = [];
    if (news.drvPath === UNKNOWN) {
        replaces.push("drvPath");
        reasons.push("drvPath is not known until apply");
    } else if (olds.drvPath !== news.drvPath) {
        replaces.push("drvPath");
        reasons.push(`the image derivation changed: ${String(olds.drvPath)} -> ${String(news.drvPath)}`);
    }
    for (const k of ["flake", "attribute", "gcRootDir"]) {
        if (news[k] === UNKNOWN) reasons.push(`${k} is not known until apply`);
        else if (olds[k] !== news[k]) reasons.push(`${k} changed`);
    }
    const stables = replaces.length > 0 ? [] : ["storePath", "imagePath", "sizeBytes"];
    return { changes: reasons.length > 0, replaces, deleteBeforeReplace: false, stables, reasons };
}

/** The GC root of a store path inside a root directory: <dir>/<store path's base name>. */
export function gcRootFor(gcRootDir: string, storePath: string): string {
    const path = require("node:path") as typeof import("node:path");
    return path.join(gcRootDir, path.basename(storePath));
}

/** The image file of a build output: the output itself when it is a file, else the one *.qcow2 at its top. */
export function findImage(storePath: string): string {
    const fs = require("node:fs") as typeof import("node:fs");
    const path = require("node:path") as typeof import("node:path");
    const st = fs.statSync(storePath);
    if (st.isFile()) return storePath;
    const images = fs
        .readdirSync(storePath)
        .filter((f) => f.endsWith(".qcow2"))
        .sort();
    if (images.length === 0) throw new Error(`${storePath} holds no .qcow2 image (found: ${fs.readdirSync(storePath).join(", ") || "nothing"})`);
    return path.join(storePath, images[0]);
}

/** `nix` with the flake features on (Nix 2.8 has them off by default). */
function nixArgv(args: string[]): string[] {
    return ["nix", "--extra-experimental-features", "nix-command flakes", ...args];
}

/** Registers (or renews) the indirect GC root <gcRootDir>/<name> -> storePath. */
export async function addGcRoot(gcRootDir: string, storePath: string): Promise<string> {
    const fs = require("node:fs") as typeof import("node:fs");
    fs.mkdirSync(gcRootDir, { recursive: true });
    const root = gcRootFor(gcRootDir, storePath);
    await run(["nix-store", "--add-root", root, "--indirect", "--realise", storePath], { timeoutMs: 120_000 });
    return root;
}

/** Removes a GC root, but only when it is a symlink to the given store path (never anything else). */
export function removeGcRoot(root: string, storePath: string): boolean {
    const fs = require("node:fs") as typeof import("node:fs");
    let target: string;
    try {
        target = fs.readlinkSync(root);
    } catch {
        return false;
    }
    if (target !== storePath) return false;
    fs.unlinkSync(root);
    return true;
}

/** Builds the image, streaming Nix's progress to stderr; returns the outputs. */
export async function buildNixImage(inp: NixImageInputs): Promise<NixImageOutputs> {
    const fs = require("node:fs") as typeof import("node:fs");
    const installable = `${inp.flake}#${inp.attribute}`;
    const timeoutMs = (inp.buildTimeoutSeconds ?? 10800) * 1000;
    console.error(`nixspark: building the base image ${installable}`);
    const r = await run(nixArgv(["build", "--no-link", "--json", "--print-build-logs", installable]), {
        timeoutMs,
        allowFailure: true,
        onLine: (line, stream) => {
            if (stream === "stderr" && line.trim() !== "") console.error(`nix build: ${line}`);
        },
    });
    if (r.code !== 0) {
        throw new Error(`nix build ${installable} failed (exit code ${r.code}):\n${lastLines(r.stderr, 40)}`);
    }
    let built: { drvPath?: string; outputs?: Record<string, string> }[];
    try {
        built = JSON.parse(r.stdout);
    } catch {
        throw new Error(`nix build ${installable} printed no JSON result:\n${lastLines(r.stdout || r.stderr)}`);
    }
    const first = built[0];
    const storePath = first?.outputs?.out;
    if (!storePath) throw new Error(`nix build ${installable} reported no "out" output: ${r.stdout.trim()}`);
    if (inp.drvPath && first.drvPath && first.drvPath !== inp.drvPath) {
        throw new Error(
            `${installable} now evaluates to ${first.drvPath}, but the program evaluated ${inp.drvPath}: ` +
                `the flake's files changed during this update; run it again`,
        );
    }
    const gcRoot = await addGcRoot(inp.gcRootDir, storePath);
    const imagePath = findImage(storePath);
    const sizeBytes = fs.statSync(imagePath).size;
    console.error(`nixspark: base image ${imagePath} (${sizeBytes} bytes), GC root ${gcRoot}`);
    return { ...inp, storePath, imagePath, sizeBytes, gcRoot };
}

/**
 * read: the store path vanished -> the resource is gone (empty id); otherwise
 * the current size, and the GC root renewed if someone removed it (the root
 * is what keeps the VMs' backing file alive, so refresh restores it rather
 * than only reporting it).
 */
export async function readNixImage(id: string, props: NixImageOutputs): Promise<{ id: string; props: Record<string, unknown> }> {
    const fs = require("node:fs") as typeof import("node:fs");
    if (!props.storePath || !fs.existsSync(props.storePath)) return { id: "", props: {} };
    let gcRoot = props.gcRoot;
    let target: string | undefined;
    try {
        target = fs.readlinkSync(gcRoot);
    } catch {
        target = undefined;
    }
    if (target !== props.storePath) {
        console.error(`nixspark: GC root ${gcRoot} of ${props.storePath} is missing; registering it again`);
        gcRoot = await addGcRoot(props.gcRootDir, props.storePath);
    }
    const imagePath = findImage(props.storePath);
    return { id, props: { ...props, imagePath, sizeBytes: fs.statSync(imagePath).size, gcRoot } };
}

export const nixImageProvider: pulumi.dynamic.ResourceProvider = {
    async check(_olds: any, news: any) {
        return { inputs: { ...nixImageDefaults(), ...news }, failures: checkNixImageInputs(news) };
    },

    async diff(_id: string, olds: any, news: any) {
        const d = nixImageDiff(olds, news);
        // New provider code alone is an update too, one that keeps the outputs (see update).
        return { changes: d.changes || providerCodeChanged(olds, news), replaces: d.replaces, deleteBeforeReplace: d.deleteBeforeReplace, stables: d.stables };
    },

    async create(inputs: any) {
        const outs = await buildNixImage(inputs as NixImageInputs);
        return { id: outs.storePath, outs };
    },

    // Same derivation (diff replaces otherwise): the build is a no-op; the
    // root moves when gcRootDir changed.
    async update(_id: string, olds: any, news: any) {
        if (!nixImageDiff(olds, news).changes) return { outs: keptOutputs(olds) }; // only the provider code changed
        const outs = await buildNixImage(news as NixImageInputs);
        const old = olds as NixImageOutputs;
        if (old.gcRoot && old.gcRoot !== outs.gcRoot) removeGcRoot(old.gcRoot, old.storePath);
        return { outs };
    },

    async read(id: string, props: any) {
        return readNixImage(id, props as NixImageOutputs);
    },

    async delete(_id: string, props: any) {
        const p = props as NixImageOutputs;
        if (p.gcRoot && p.storePath) removeGcRoot(p.gcRoot, p.storePath);
    },
};

export class NixImage extends pulumi.dynamic.Resource {
    declare readonly flake: pulumi.Output<string>;
    declare readonly attribute: pulumi.Output<string>;
    declare readonly drvPath: pulumi.Output<string>;
    declare readonly gcRootDir: pulumi.Output<string>;
    declare readonly storePath: pulumi.Output<string>;
    declare readonly imagePath: pulumi.Output<string>;
    declare readonly sizeBytes: pulumi.Output<number>;
    declare readonly gcRoot: pulumi.Output<string>;

    constructor(name: string, args: NixImageArgs, opts?: pulumi.CustomResourceOptions) {
        super(providerRef("NixImage", nixImageProvider), name, { ...args, storePath: undefined, imagePath: undefined, sizeBytes: undefined, gcRoot: undefined }, opts, "nixspark", "NixImage");
    }
}
