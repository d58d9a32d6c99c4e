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
// paths (what NixosDeployment expects each node to run). prepareNix does it
// with one `nix eval --json` of lib.stackEvaluations.<stack>, and remembers
// the answer under a hash of everything the evaluation reads, so that an
// unchanged preview starts no nix process at all.
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
    /** Spark authentication and encryption (nix/lib/params.nix; the secret itself never comes here). */
    security: { authenticate: boolean; ioEncryption: boolean };
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
        security: { authenticate: cfg.security.authenticate, ioEncryption: cfg.security.ioEncryption },
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
    // Owner-only: the file names the stack's network and key (no secrets:
    // those never enter it, see providers/clusterSecret.ts).
    if (current === text) {
        if ((fs.statSync(file).mode & 0o077) !== 0) fs.chmodSync(file, 0o600);
        return { path: file, changed: false };
    }
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, text, { mode: 0o600 });
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

/** What NixosDeployment needs per role: the flake, the configuration name and the system it will run. */
export interface PreparedNixSystems {
    /** The flake reference deployments switch from: the immutable store copy the evaluation read (`path:/nix/store/...-source`) when the flake gives it. */
    flake: string;
    /** The flake as configured (nixspark:deploy.flake, made absolute). */
    evaluatedFlake?: string;
    master: { configuration: string; expectedSystem: string; packages?: PackageSummary };
    worker: { configuration: string; expectedSystem: string; packages?: PackageSummary };
}

// ------------------------------------------------ one evaluation per program run
//
// A NixOS evaluation of the real nixpkgs takes seconds, and the image and the
// two roles share most of it (nixpkgs, the module system). So the program
// asks for everything in ONE `nix eval --json` of the flake's
// lib.stackEvaluations.<stack>, and keeps the answer in
// .nixspark/<stack>/nix-eval.json under a key that hashes everything the
// evaluation reads: an unchanged preview then starts no nix process at all.

/**
 * One `nix eval --json` the program will run: a flake (absolute reference),
 * an attribute, and where in the JSON answer the image's drvPath and the
 * role systems are (a list of keys; [] means the answer itself).
 */
export interface PlannedEval {
    flake: string;
    attrPath: string;
    imageAt?: string[];
    systemsAt?: string[];
    /** Where the roles' package summaries are in the answer (versions, for a package-level preview). */
    packagesAt?: string[];
    /** Where the store copy of the flake that gave the role systems is (nix/flake.nix: `source`). */
    sourceAt?: string[];
}

/** The flake attribute that gives everything about one stack (nix/flake.nix: lib.stackEvaluations). */
export function stackEvaluationsAttribute(stack: string): string {
    return `lib.stackEvaluations.${attrSegment(stack)}`;
}

/**
 * The evaluations the program needs, as few as possible. Pure.
 * - image and roles from one flake, the stack's own image: one evaluation;
 * - another image attribute (nixspark:image.attribute): its drvPath is
 *   evaluated on its own, since lib.stackEvaluations only knows the stack's image;
 * - image and roles from different flakes: each flake for its part only;
 * - image.path set / deploy.enabled false: that part is not evaluated at all.
 */
export function planNixEvaluations(stack: string, cfg: ClusterConfig, cwd: string = process.cwd()): PlannedEval[] {
    const stackAttr = stackEvaluationsAttribute(stack);
    const imageFlake = cfg.image.path ? undefined : absoluteFlakeRef(cfg.image.flake, cwd);
    const deployFlake = cfg.deploy.enabled ? absoluteFlakeRef(cfg.deploy.flake, cwd) : undefined;
    const ownImage = cfg.image.attribute === "base-image";
    if (imageFlake !== undefined && ownImage && imageFlake === deployFlake) {
        return [{ flake: imageFlake, attrPath: stackAttr, imageAt: ["baseImage", "drvPath"], systemsAt: ["systems"], packagesAt: ["packages"], sourceAt: ["source"] }];
    }
    const plan: PlannedEval[] = [];
    if (imageFlake !== undefined) {
        const attrPath = ownImage ? `${stackAttr}.baseImage.drvPath` : `${cfg.image.attribute}.drvPath`;
        plan.push({ flake: imageFlake, attrPath, imageAt: [] });
    }
    if (deployFlake !== undefined) plan.push({ flake: deployFlake, attrPath: `${stackAttr}.roles`, systemsAt: ["systems"], packagesAt: ["packages"], sourceAt: ["source"] });
    return plan;
}

/** What the evaluations give (and what the cache holds). */
export interface NixEvalValues {
    imageDrvPath?: string;
    systems?: { master: string; worker: string };
    /** What each role runs, by version (nix/flake.nix: packageSummary); absent from flakes without it. */
    packages?: { master: PackageSummary; worker: PackageSummary };
    /**
     * The store copy of the deploy flake that this evaluation read (its
     * `self.outPath`): immutable, so deployments switch from exactly what the
     * program evaluated. Absent from flakes that do not give it.
     */
    source?: string;
}

/** Versions of what a node runs: Spark, its JDK, the job Python and each of its packages, the kernel. */
export type PackageSummary = Record<string, string | Record<string, string>>;

/** The value at `keys` inside a JSON answer; undefined when a step is missing. */
function valueAt(answer: unknown, keys: string[]): unknown {
    let v: unknown = answer;
    for (const k of keys) v = v !== null && typeof v === "object" ? (v as Record<string, unknown>)[k] : undefined;
    return v;
}

function packagesAt(answer: unknown, keys: string[]): { master: PackageSummary; worker: PackageSummary } | undefined {
    const v = valueAt(answer, keys);
    const o = v as { master?: unknown; worker?: unknown } | undefined;
    if (!o || typeof o !== "object" || typeof o.master !== "object" || typeof o.worker !== "object" || !o.master || !o.worker) return undefined;
    return { master: o.master as PackageSummary, worker: o.worker as PackageSummary };
}

/** `nix eval --json <flake>#<attrPath>`, parsed. Nix's own message (run's error) when it fails. */
export async function nixEvalJson(flakeRef: string, attrPath: string, opts: NixEvalOptions = {}): Promise<unknown> {
    const r = await run(["nix", ...NIX_FEATURE_ARGS, "eval", "--json", ...(opts.extraArgs ?? []), `${flakeRef}#${attrPath}`], {
        env: opts.env,
        timeoutMs: opts.timeoutMs ?? 600_000,
    });
    try {
        return JSON.parse(r.stdout);
    } catch {
        throw new NixParamsError(`nix eval --json ${flakeRef}#${attrPath} gave ${JSON.stringify(r.stdout.slice(0, 200))}, not JSON`);
    }
}

/** The store path at `keys` inside an answer; a NixParamsError naming the attribute when it is not one. */
function storePathAt(answer: unknown, keys: string[], e: PlannedEval): string {
    const v = valueAt(answer, keys);
    if (typeof v !== "string" || !v.startsWith("/")) {
        const where = [e.attrPath, ...keys].join(".");
        throw new NixParamsError(`nix eval ${e.flake}#${where} gave ${JSON.stringify(v)}, not a store path`);
    }
    return v;
}

/** Runs the plan (its evaluations in parallel: they read different flakes or attributes) and picks the values out. */
async function evaluatePlan(plan: PlannedEval[], opts: NixEvalOptions): Promise<NixEvalValues> {
    const answers = await Promise.all(plan.map((e) => nixEvalJson(e.flake, e.attrPath, opts)));
    const values: NixEvalValues = {};
    plan.forEach((e, i) => {
        if (e.imageAt) values.imageDrvPath = storePathAt(answers[i], e.imageAt, e);
        if (e.systemsAt) {
            values.systems = { master: storePathAt(answers[i], [...e.systemsAt, "master"], e), worker: storePathAt(answers[i], [...e.systemsAt, "worker"], e) };
        }
        if (e.packagesAt) {
            const p = packagesAt(answers[i], e.packagesAt);
            if (p) values.packages = p;
        }
        if (e.sourceAt) {
            const v = valueAt(answers[i], e.sourceAt);
            if (typeof v === "string" && /^\/nix\/store\/[^/]+$/.test(v)) values.source = v;
        }
    });
    return values;
}

// --------------------------------------------------------------------- the key

/** Bumped whenever the key's recipe or the cache file's format changes: old files then simply miss. */
export const NIX_EVAL_CACHE_VERSION = 3;

type Hash = ReturnType<typeof import("node:crypto").createHash>;

/**
 * Whether a path under a flake directory stays out of the key, because the
 * evaluation of this stack does not depend on it:
 * - hidden directories (.git, .direnv): nothing in the flake reads them;
 * - `result`/`result-*` symlinks that `nix build` leaves behind;
 * - other stacks' settings (stacks/<other>.json: each stack's attributes
 *   read only its own file; otherStacks false) and half-written settings
 *   files (stacks/*.tmp, which stacks.nix never reads).
 */
function outOfKey(rel: string, entry: fs.Dirent, stack: string | undefined): boolean {
    if (entry.isDirectory() && entry.name.startsWith(".")) return true;
    if (entry.isSymbolicLink() && (entry.name === "result" || entry.name.startsWith("result-"))) return true;
    if (/^stacks\/[^/]+\.tmp$/.test(rel)) return true;
    return stack !== undefined && /^stacks\/[^/]+\.json$/.test(rel) && rel !== `stacks/${stack}.json`;
}

/**
 * Feeds a directory's content into the hash: every file's relative path,
 * executable bit and bytes, every symlink's target, in sorted order (so the
 * key does not depend on readdir's order). Pure Node fs: a few ms for nix/.
 * With `stack`, other stacks' settings files are left out (see outOfKey).
 */
function hashTree(h: Hash, root: string, stack?: string): void {
    const feed = (...parts: unknown[]) => h.update(JSON.stringify(parts) + "\n");
    let top: fs.Stats;
    try {
        top = fs.statSync(root);
    } catch {
        feed("missing", root);
        return;
    }
    if (!top.isDirectory()) {
        feed("file", (top.mode & 0o111) !== 0);
        h.update(fs.readFileSync(root));
        return;
    }
    const walk = (rel: string): void => {
        const entries = fs.readdirSync(path.join(root, rel), { withFileTypes: true });
        entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
        for (const e of entries) {
            const r = rel === "" ? e.name : `${rel}/${e.name}`;
            if (outOfKey(r, e, stack)) continue;
            const abs = path.join(root, r);
            if (e.isDirectory()) {
                feed("d", r);
                walk(r);
            } else if (e.isSymbolicLink()) {
                feed("l", r, fs.readlinkSync(abs));
            } else if (e.isFile()) {
                const bytes = fs.readFileSync(abs);
                feed("f", r, (fs.statSync(abs).mode & 0o111) !== 0, bytes.length);
                h.update(bytes);
            } else {
                feed("other", r);
            }
        }
    };
    walk("");
}

/**
 * The local directories among the extra nix arguments: the flake of every
 * `--override-input NAME REF` and any other `path:` argument. Undefined when
 * an override input is not local (github:...): its content cannot be hashed.
 */
function localInputDirs(extraArgs: string[], cwd: string): string[] | undefined {
    const dirs: string[] = [];
    for (let i = 0; i < extraArgs.length; i++) {
        const a = extraArgs[i];
        if (a === "--override-input" && i + 2 < extraArgs.length) {
            const dir = localFlakeDir(extraArgs[i + 2], cwd);
            if (dir === undefined) return undefined;
            dirs.push(dir);
            i += 2;
        } else if (a.startsWith("path:")) {
            dirs.push(localFlakeDir(a, cwd)!);
        }
    }
    return dirs;
}

/** Whether the environment turns the cache off (NIXSPARK_NIX_EVAL_CACHE=0, off or false). */
export function evalCacheDisabled(env: Record<string, string | undefined> = process.env): boolean {
    return /^(0|off|false|no)$/i.test(env.NIXSPARK_NIX_EVAL_CACHE ?? "");
}

/**
 * The cache key of a plan: sha256 over everything its evaluation reads —
 * the flake references and attributes asked, the extra nix arguments and the
 * content of any local override input, NIX_CONFIG, and the content of each
 * local flake directory (this stack's settings file included, other stacks'
 * left out; all of stacks/ counts when a custom image attribute is asked,
 * since it may read any of them). Undefined when a flake or input is not a
 * local directory: a remote reference may move without anything here changing.
 */
export function nixEvalCacheKey(stack: string, plan: PlannedEval[], opts: NixEvalOptions & { cwd?: string } = {}): string | undefined {
    const { createHash } = require("node:crypto") as typeof import("node:crypto");
    const cwd = opts.cwd ?? process.cwd();
    const extraArgs = opts.extraArgs ?? [];
    const inputs = localInputDirs(extraArgs, cwd);
    if (inputs === undefined) return undefined;
    // Flake directory -> whether every stack's settings count (a custom image attribute).
    const flakes = new Map<string, boolean>();
    for (const e of plan) {
        const dir = localFlakeDir(e.flake, cwd);
        if (dir === undefined) return undefined;
        const custom = !e.attrPath.startsWith("lib.stackEvaluations.");
        flakes.set(dir, (flakes.get(dir) ?? false) || custom);
    }
    const h = createHash("sha256");
    const feed = (...parts: unknown[]) => h.update(JSON.stringify(parts) + "\n");
    feed("nixspark nix-eval", NIX_EVAL_CACHE_VERSION, stack, NIX_SYSTEM);
    for (const e of plan) feed("eval", e.flake, e.attrPath, e.imageAt ?? null, e.systemsAt ?? null);
    feed("args", extraArgs);
    feed("NIX_CONFIG", (opts.env ?? process.env).NIX_CONFIG ?? null);
    for (const [dir, allStacks] of [...flakes].sort(([a], [b]) => (a < b ? -1 : 1))) {
        feed("flake", dir);
        hashTree(h, dir, allStacks ? undefined : stack);
    }
    for (const dir of inputs) {
        feed("input", dir);
        hashTree(h, dir);
    }
    return h.digest("hex");
}

// ------------------------------------------------------------------- the file

/** Where a stack's evaluation cache lives: `<base>/.nixspark/<stack>/nix-eval.json`. */
export function nixEvalCacheFile(stack: string, base: string = process.cwd()): string {
    return path.resolve(base, ".nixspark", stack, "nix-eval.json");
}

function isStorePath(v: unknown): v is string {
    return typeof v === "string" && v.startsWith("/");
}

/**
 * The cached values for `key`, or undefined (with the reason) when the file
 * is missing, unreadable, of another version or key, or lacks a value the
 * plan needs: anything but an exact hit is a miss, never an error.
 */
export function readEvalCache(file: string, key: string, plan: PlannedEval[]): { values?: NixEvalValues; miss?: string } {
    let entry: { version?: unknown; key?: unknown; values?: NixEvalValues };
    try {
        entry = JSON.parse(fs.readFileSync(file, "utf8"));
    } catch (e) {
        return { miss: (e as NodeJS.ErrnoException).code === "ENOENT" ? "no cache file" : `unreadable cache file (${(e as Error).message})` };
    }
    if (entry === null || typeof entry !== "object") return { miss: "not a cache entry" };
    if (entry.version !== NIX_EVAL_CACHE_VERSION) return { miss: `cache version ${JSON.stringify(entry.version)}` };
    if (entry.key !== key) return { miss: "inputs changed" };
    const v = entry.values;
    const needImage = plan.some((e) => e.imageAt);
    const needSystems = plan.some((e) => e.systemsAt);
    if (!v || typeof v !== "object") return { miss: "no values" };
    if (needImage && !isStorePath(v.imageDrvPath)) return { miss: "no image drvPath" };
    if (needSystems && !(v.systems && isStorePath(v.systems.master) && isStorePath(v.systems.worker))) return { miss: "no role systems" };
    const packages = needSystems ? packagesAt(v, ["packages"]) : undefined;
    // The flake snapshot deployments switch from must still be in the store
    // (a garbage collection since): evaluating again copies it back.
    const source = needSystems && typeof v.source === "string" ? v.source : undefined;
    if (source !== undefined && !fs.existsSync(source)) return { miss: `the flake snapshot ${source} is gone from the store` };
    return {
        values: {
            imageDrvPath: needImage ? v.imageDrvPath : undefined,
            systems: needSystems ? { master: v.systems!.master, worker: v.systems!.worker } : undefined,
            ...(packages ? { packages } : {}),
            ...(source ? { source } : {}),
        },
    };
}

/**
 * Stores a successful evaluation: written to a temporary file (mode 0600, in
 * a 0700 directory) and renamed over the old one, so that a concurrent or
 * interrupted run never reads half a file.
 */
export function writeEvalCache(file: string, key: string, values: NixEvalValues): void {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    const tmp = `${file}.${process.pid}.${Date.now()}.tmp`;
    try {
        fs.writeFileSync(tmp, JSON.stringify({ version: NIX_EVAL_CACHE_VERSION, key, values }, null, 2) + "\n", { mode: 0o600 });
        fs.renameSync(tmp, file);
    } catch (e) {
        fs.rmSync(tmp, { force: true });
        throw e;
    }
}

// -------------------------------------------------------------------- prepare

export interface PrepareNixOptions extends NixEvalOptions {
    /** The project directory (relative flake references, .nixspark/); default process.cwd(). */
    cwd?: string;
    /** Use and fill the evaluation cache; default on unless NIXSPARK_NIX_EVAL_CACHE=0 in the environment. */
    cache?: boolean;
    /** Debug messages (cache hit, and why it missed); the user sees nothing by default. */
    log?: (message: string) => void;
}

/** What the program needs from Nix before it registers anything. */
export interface PreparedNix {
    /** Unless nixspark:image.path is set. */
    image?: PreparedNixImage;
    /** Unless nixspark:deploy.enabled is false. */
    systems?: PreparedNixSystems;
    /** True when the values came from the cache and no nix process ran. */
    cached: boolean;
    /** How many `nix eval` processes ran (0 on a cache hit). */
    evaluations: number;
}

/**
 * Writes the stack's settings into the flakes that need them: the image
 * flake must be a local directory (the image carries the stack's key); a
 * remote deploy flake must carry its own stacks/<stack>.json. Returns the
 * image flake's settings file.
 */
function writeStackSettings(cfg: ClusterConfig, topo: Topology, cwd: string): string | undefined {
    let paramsFile: string | undefined;
    if (!cfg.image.path) {
        const dir = localFlakeDir(cfg.image.flake, cwd);
        if (dir === undefined) {
            throw new NixParamsError(
                `nixspark:image.flake: "${cfg.image.flake}" is not a local directory; the stack's settings are written into the flake's stacks/ directory, so use a path: reference such as path:./nix`,
            );
        }
        paramsFile = writeNixStackParams(dir, nixStackParams(cfg, topo)).path;
    }
    if (cfg.deploy.enabled) {
        const dir = localFlakeDir(cfg.deploy.flake, cwd);
        if (dir !== undefined) writeNixStackParams(dir, nixStackParams(cfg, topo));
    }
    return paramsFile;
}

/**
 * The plan's values from the cache when its key matches, else from Nix (then
 * cached, but only if the inputs did not change while Nix read them: a value
 * must never be stored under a key of content it was not computed from).
 */
async function evaluateWithCache(stack: string, plan: PlannedEval[], opts: PrepareNixOptions, cwd: string): Promise<{ values: NixEvalValues; cached: boolean }> {
    const log = opts.log ?? (() => undefined);
    const useCache = opts.cache ?? !evalCacheDisabled(opts.env ?? process.env);
    const key = useCache ? nixEvalCacheKey(stack, plan, { ...opts, cwd }) : undefined;
    const file = nixEvalCacheFile(stack, cwd);
    if (key !== undefined) {
        const hit = readEvalCache(file, key, plan);
        if (hit.values) {
            log(`nix eval: cached (${file})`);
            return { values: hit.values, cached: true };
        }
        log(`nix eval: ${hit.miss}; evaluating`);
    } else {
        log(useCache ? "nix eval: a flake or input is not a local directory; not cached" : "nix eval: cache disabled");
    }
    const values = await evaluatePlan(plan, opts);
    if (key !== undefined) {
        if (nixEvalCacheKey(stack, plan, { ...opts, cwd }) !== key) log("nix eval: inputs changed during the evaluation; not cached");
        else {
            try {
                writeEvalCache(file, key, values);
            } catch (e) {
                // Only a speed-up: a read-only project directory must not fail the program.
                log(`nix eval: could not write ${file}: ${(e as Error).message}`);
            }
        }
    }
    return { values, cached: false };
}

/**
 * Keeps the flake snapshot that deployments switch from (a store path the
 * evaluation made) from a garbage collection between this run's evaluation
 * and its switches: an indirect GC root `<gcroots>/flake-source-<pid>`,
 * removed when the program exits (it lives until the engine has run every
 * step). So nothing outlives the run (a destroyed stack leaves no root), and
 * a later run whose snapshot was collected evaluates again (readEvalCache).
 */
const pinned = new Set<string>();
export async function pinFlakeSnapshot(source: string, rootDir: string, log: (m: string) => void = () => undefined): Promise<void> {
    const root = path.join(rootDir, `flake-source-${process.pid}`);
    try {
        if (fs.readlinkSync(root) === source) return;
    } catch {
        /* no root yet */
    }
    try {
        fs.mkdirSync(rootDir, { recursive: true, mode: 0o700 });
        fs.rmSync(root, { force: true });
        await run(["nix-store", "--add-root", root, "--indirect", "--realise", source], { timeoutMs: 60_000 });
        if (!pinned.has(root)) {
            pinned.add(root);
            if (pinned.size === 1) process.once("exit", () => pinned.forEach((r) => fs.rmSync(r, { force: true })));
        }
    } catch (e) {
        // Only a guard against a collection in the next minutes: never fail the program for it.
        log(`nix: could not register a GC root for the flake snapshot ${source}: ${(e as Error).message}`);
    }
}

/**
 * Writes the stack's settings file(s) and gets, with at most one `nix eval`
 * per flake (and none when nothing changed since the last run), the image's
 * derivation path and the role systems' out paths. Call it in the program
 * before registering anything, so that a bad setting stops the program early.
 */
export async function prepareNix(stack: string, cfg: ClusterConfig, topo: Topology, opts: PrepareNixOptions = {}): Promise<PreparedNix> {
    const cwd = opts.cwd ?? process.cwd();
    const paramsFile = writeStackSettings(cfg, topo, cwd);
    const plan = planNixEvaluations(stack, cfg, cwd);
    if (plan.length === 0) return { cached: false, evaluations: 0 };
    const { values, cached } = await evaluateWithCache(stack, plan, opts, cwd);
    if (cfg.deploy.enabled && values.source) await pinFlakeSnapshot(values.source, gcRootDir(stack, cwd), opts.log);
    const result: PreparedNix = { cached, evaluations: cached ? 0 : plan.length };
    if (!cfg.image.path) {
        result.image = {
            flake: absoluteFlakeRef(cfg.image.flake, cwd),
            attribute: imageAttribute(stack, cfg.image.attribute),
            drvPath: values.imageDrvPath!,
            gcRootDir: gcRootDir(stack, cwd),
            paramsFile: paramsFile!,
        };
    }
    if (cfg.deploy.enabled) {
        const master = roleConfiguration(stack, "master");
        const worker = roleConfiguration(stack, "worker");
        const evaluated = absoluteFlakeRef(cfg.deploy.flake, cwd);
        result.systems = {
            // What is applied is what was evaluated: the store copy this
            // evaluation read, not the mutable directory (an edit under nix/,
            // or another run rewriting stacks/<stack>.json, changes nothing
            // for this run's deployments).
            flake: values.source ? `path:${values.source}` : evaluated,
            evaluatedFlake: evaluated,
            master: { configuration: master, expectedSystem: values.systems!.master, packages: values.packages?.master },
            worker: { configuration: worker, expectedSystem: values.systems!.worker, packages: values.packages?.worker },
        };
    }
    return result;
}
