// The TypeScript side of "stack settings reach a pure flake evaluation".
//
// The program writes the stack's settings to nix/stacks/<stack>.json; the
// flake reads every file there (nix/lib/stacks.nix) and turns each into node
// parameters (nix/lib/params.nix). One file per stack, so two stacks on one
// host never see each other's settings. The flake is referenced as
// `path:./nix`: a git flake would only see tracked files, and these files are
// untracked on purpose (nix/.gitignore).
//
// Then the program asks Nix, before registering any resource, for what the
// resources will need: the base image's derivation path (so that preview can
// tell "image will be rebuilt" from "no change") and the role systems' out
// paths (what NixosDeployment expects each node to run).
import * as fs from "node:fs";
import * as path from "node:path";
import type { ClusterConfig } from "./config";
import type { Topology } from "./topology";
import { run } from "../providers/run";

/** The version of the JSON format; nix/lib/params.nix refuses others. */
export const NIX_PARAMS_VERSION = 1;

/** The system every output of the flake is built for. */
export const NIX_SYSTEM = "x86_64-linux";

/** Flags every `nix` call here passes: flakes are experimental in Nix 2.8 and still off by default. */
export const NIX_FEATURE_ARGS = ["--extra-experimental-features", "nix-command flakes"];

/** What nix/stacks/<stack>.json holds (read by nix/lib/params.nix). */
export interface NixStackParams {
    version: number;
    stack: string;
    sshUser: string;
    sshPublicKey: string;
    cidr: string;
    prefix: number;
    masterIp: string;
    masterHostname: string;
    master: { vcpus: number; memoryMiB: number };
    worker: { vcpus: number; memoryMiB: number };
    /** spark-defaults.conf entries, every value a string. */
    sparkSettings: Record<string, string>;
    /** python3Packages attribute names. */
    pythonPackages: string[];
}

export class NixParamsError extends Error {
    constructor(message: string) {
        super(message);
        this.name = "NixParamsError";
    }
}

/** The settings the flake needs for one stack, from the validated config and its topology. Pure. */
export function nixStackParams(cfg: ClusterConfig, topo: Topology): NixStackParams {
    const key = cfg.ssh.publicKey;
    if (!key) {
        throw new NixParamsError(
            "nixspark:ssh.publicKey: required to build the base image (the image lets only this key in); " +
                "set it with `pulumi config set nixspark:ssh.publicKey \"$(cat ~/.ssh/id_ed25519.pub)\"`, or set nixspark:image.path to use an image of your own",
        );
    }
    const sparkSettings: Record<string, string> = {};
    for (const k of Object.keys(cfg.spark.settings).sort()) sparkSettings[k] = String(cfg.spark.settings[k]);
    return {
        version: NIX_PARAMS_VERSION,
        stack: topo.stack,
        sshUser: cfg.ssh.user,
        sshPublicKey: key,
        cidr: topo.cidr,
        prefix: topo.prefix,
        masterIp: topo.master.ip,
        masterHostname: topo.master.hostname,
        master: { vcpus: cfg.master.vcpus, memoryMiB: cfg.master.memoryMiB },
        worker: { vcpus: cfg.workers.vcpus, memoryMiB: cfg.workers.memoryMiB },
        sparkSettings,
        pythonPackages: [...new Set(cfg.spark.pythonPackages)].sort(),
    };
}

/** The file's text: stable (fixed key order, trailing newline), so an unchanged config rewrites nothing. */
export function renderNixStackParams(p: NixStackParams): string {
    return JSON.stringify(p, null, 2) + "\n";
}

/**
 * The local directory of a `path:` (or plain path) flake reference, absolute;
 * undefined for references that are not a local directory (github:, git+https:, ...),
 * which cannot receive per-stack settings files.
 */
export function localFlakeDir(flakeRef: string, cwd: string = process.cwd()): string | undefined {
    let p: string;
    if (flakeRef.startsWith("path:")) p = flakeRef.slice("path:".length).split("?")[0];
    else if (flakeRef.startsWith("/") || flakeRef.startsWith("./") || flakeRef.startsWith("../") || flakeRef === ".") p = flakeRef;
    else return undefined;
    return path.resolve(cwd, p);
}

/**
 * The flake reference with its directory made absolute (`path:/abs/nix`), so
 * that the providers' commands do not depend on the directory they run in.
 */
export function absoluteFlakeRef(flakeRef: string, cwd: string = process.cwd()): string {
    const dir = localFlakeDir(flakeRef, cwd);
    if (dir === undefined) return flakeRef;
    const query = flakeRef.startsWith("path:") && flakeRef.includes("?") ? flakeRef.slice(flakeRef.indexOf("?")) : "";
    return `path:${dir}${query}`;
}

/** Where a stack's settings go inside a local flake. */
export function stackParamsPath(flakeDir: string, stack: string): string {
    return path.join(flakeDir, "stacks", `${stack}.json`);
}

/**
 * Writes nix/stacks/<stack>.json (atomically, and only when its content
 * changes, so an unchanged stack leaves the file and its mtime alone).
 * Returns the path and whether it was (re)written.
 */
export function writeNixStackParams(flakeDir: string, params: NixStackParams): { path: string; changed: boolean } {
    const file = stackParamsPath(flakeDir, params.stack);
    if (!fs.existsSync(path.join(flakeDir, "flake.nix"))) {
        throw new NixParamsError(`${flakeDir} holds no flake.nix; nixspark:image.flake / nixspark:deploy.flake must name the project's nix directory (default path:./nix)`);
    }
    const text = renderNixStackParams(params);
    let current: string | undefined;
    try {
        current = fs.readFileSync(file, "utf8");
    } catch {
        current = undefined;
    }
    if (current === text) return { path: file, changed: false };
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, file);
    return { path: file, changed: true };
}

/** Removes a stack's settings file (after `pulumi destroy`); true when there was one. */
export function removeNixStackParams(flakeDir: string, stack: string): boolean {
    try {
        fs.unlinkSync(stackParamsPath(flakeDir, stack));
        return true;
    } catch {
        return false;
    }
}

/** A flake attribute path segment, quoted when it holds anything but plain name characters. */
export function attrSegment(name: string): string {
    return /^[A-Za-z_][A-Za-z0-9_'-]*$/.test(name) ? name : JSON.stringify(name);
}

/**
 * The flake attribute of the stack's base image. The default attribute
 * "base-image" means the stack's own image (`<stack>-base-image`, which
 * carries the stack's SSH key); any other value is used as given.
 */
export function imageAttribute(stack: string, attribute = "base-image"): string {
    if (attribute === "base-image") return `packages.${NIX_SYSTEM}.${attrSegment(`${stack}-base-image`)}`;
    return attribute;
}

/** The nixosConfigurations name of a role: "<stack>-master", "<stack>-worker" (all workers share it). */
export function roleConfiguration(stack: string, role: "master" | "worker"): string {
    return `${stack}-${role}`;
}

export interface NixEvalOptions {
    /** Environment of the nix command; default this process's. */
    env?: Record<string, string | undefined>;
    timeoutMs?: number;
    /** More arguments for `nix eval`, e.g. ["--override-input", "nixpkgs", "path:/src/nixpkgs"]. */
    extraArgs?: string[];
}

/** `nix eval --raw <flake>#<attrPath>`: a string attribute of the flake. */
export async function nixEvalRaw(flakeRef: string, attrPath: string, opts: NixEvalOptions = {}): Promise<string> {
    const r = await run(["nix", ...NIX_FEATURE_ARGS, "eval", "--raw", ...(opts.extraArgs ?? []), `${flakeRef}#${attrPath}`], {
        env: opts.env,
        timeoutMs: opts.timeoutMs ?? 600_000,
    });
    const out = r.stdout.trim();
    if (!out.startsWith("/")) throw new NixParamsError(`nix eval ${flakeRef}#${attrPath} gave ${JSON.stringify(out)}, not a store path`);
    return out;
}

/**
 * The derivation path of a flake attribute (`nix eval --raw <flake>#<attr>.drvPath`).
 * Evaluates only; builds nothing. What NixImage compares to decide whether
 * the image must be rebuilt.
 */
export function evalDrvPath(flakeRef: string, attribute: string, opts: NixEvalOptions = {}): Promise<string> {
    return nixEvalRaw(flakeRef, `${attribute}.drvPath`, opts);
}

/**
 * The out path of a role's system (`...config.system.build.toplevel.outPath`):
 * what NixosDeployment expects the node to run after a switch.
 */
export function evalSystemPath(flakeRef: string, configuration: string, opts: NixEvalOptions = {}): Promise<string> {
    return nixEvalRaw(flakeRef, `nixosConfigurations.${attrSegment(configuration)}.config.system.build.toplevel.outPath`, opts);
}

/** The per-stack directory of GC roots for images: `<base>/.nixspark/<stack>/gcroots`, absolute. */
export function gcRootDir(stack: string, base: string = process.cwd()): string {
    return path.resolve(base, ".nixspark", stack, "gcroots");
}

/** Everything SparkCluster needs before it registers the image resource. */
export interface PreparedNixImage {
    flake: string;
    attribute: string;
    drvPath: string;
    gcRootDir: string;
    paramsFile: string;
}

/**
 * Writes the stack's settings file and evaluates the image's derivation path.
 * Call it in the program before creating NixImage (and before registering
 * anything else), so that a bad setting stops the program early.
 */
export async function prepareNixImage(
    stack: string,
    cfg: ClusterConfig,
    topo: Topology,
    opts: NixEvalOptions & { cwd?: string } = {},
): Promise<PreparedNixImage> {
    const cwd = opts.cwd ?? process.cwd();
    const dir = localFlakeDir(cfg.image.flake, cwd);
    if (dir === undefined) {
        throw new NixParamsError(
            `nixspark:image.flake: "${cfg.image.flake}" is not a local directory; the stack's settings are written into the flake's stacks/ directory, so use a path: reference such as path:./nix`,
        );
    }
    const written = writeNixStackParams(dir, nixStackParams(cfg, topo));
    const flake = absoluteFlakeRef(cfg.image.flake, cwd);
    const attribute = imageAttribute(stack, cfg.image.attribute);
    const drvPath = await evalDrvPath(flake, attribute, opts);
    return { flake, attribute, drvPath, gcRootDir: gcRootDir(stack, cwd), paramsFile: written.path };
}

/** What NixosDeployment needs per role: the flake, the configuration name and the system it will run. */
export interface PreparedNixSystems {
    flake: string;
    master: { configuration: string; expectedSystem: string };
    worker: { configuration: string; expectedSystem: string };
}

/**
 * Writes the stack's settings into the deploy flake (when it is a local
 * directory; a remote flake must carry its own stacks/<stack>.json) and
 * evaluates the out paths of the stack's master and worker systems.
 */
export async function prepareNixSystems(
    stack: string,
    cfg: ClusterConfig,
    topo: Topology,
    opts: NixEvalOptions & { cwd?: string } = {},
): Promise<PreparedNixSystems> {
    const cwd = opts.cwd ?? process.cwd();
    const dir = localFlakeDir(cfg.deploy.flake, cwd);
    if (dir !== undefined) writeNixStackParams(dir, nixStackParams(cfg, topo));
    const flake = absoluteFlakeRef(cfg.deploy.flake, cwd);
    const master = roleConfiguration(stack, "master");
    const worker = roleConfiguration(stack, "worker");
    const [masterSystem, workerSystem] = await Promise.all([evalSystemPath(flake, master, opts), evalSystemPath(flake, worker, opts)]);
    return {
        flake,
        master: { configuration: master, expectedSystem: masterSystem },
        worker: { configuration: worker, expectedSystem: workerSystem },
    };
}
