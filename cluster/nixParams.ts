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
import { s3SparkSettings } from "./configSchema";
import type { Topology } from "./topology";
import { run } from "../providers/run";
import { evalCacheDisabled, nixEvalCacheFile, nixEvalCacheKey, readEvalCache, writeEvalCache } from "./evalCache";
import { absoluteFlakeRef, gcRootDir, imageAttribute, localFlakeDir, nixEvalJson, NixParamsError, packagesAt, roleConfiguration, stackEvaluationsAttribute, valueAt } from "./nixFlake";
import type { NixEvalOptions, NixEvalValues, PackageSummary, PlannedEval } from "./nixFlake";

// For callers that imported these from here (index.ts, scripts/bench.d).
export { evalDrvPath, evalSystemPath, imageAttribute, NixParamsError } from "./nixFlake";

/** The version of the JSON format; nix/lib/params.nix refuses others. */
export const NIX_PARAMS_VERSION = 1;

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
    /**
     * "bridge" when nixspark:network.mode is bridge (no DHCP on the segment:
     * each node takes its static address from the nixspark.network
     * credential, nix/modules/guest.nix). Absent in nat mode, the default, so
     * a nat stack's file, evaluation cache key and systems stay as they were.
     */
    networkMode?: "bridge";
    /** The shared data directory as the nodes mount it (nixspark:data; absent without data.path). The host path stays on the host. */
    data?: { tag: string; mountPoint: string; readOnly: boolean };
}

/** The settings the flake needs for one stack, from the validated config and its topology. Pure. */
export function nixStackParams(cfg: ClusterConfig, topo: Pick<Topology, "stack" | "cidr" | "prefix"> & { master: Pick<Topology["master"], "ip" | "hostname"> }): NixStackParams {
    const key = cfg.ssh.publicKey;
    if (!key) {
        throw new NixParamsError(
            "nixspark:ssh.publicKey: required to build the base image (the image lets only this key in); " +
                "set it with `pulumi config set nixspark:ssh.publicKey \"$(cat ~/.ssh/id_ed25519.pub)\"`, or set nixspark:image.path to use an image of your own",
        );
    }
    const sparkSettings: Record<string, string> = {};
    for (const k of Object.keys(cfg.spark.settings).sort()) sparkSettings[k] = String(cfg.spark.settings[k]);
    // nixspark:s3's endpoint, path style and region (never its keys: those go with the cluster secret).
    Object.assign(sparkSettings, s3SparkSettings(cfg));
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
        ...(cfg.network.mode === "bridge" ? { networkMode: "bridge" as const } : {}),
        ...(cfg.data?.path ? { data: { tag: cfg.data.tag, mountPoint: cfg.data.mountPoint, readOnly: cfg.data.readOnly } } : {}),
    };
}

/** The file's text: stable (fixed key order, trailing newline), so an unchanged config rewrites nothing. */
export function renderNixStackParams(p: NixStackParams): string {
    return JSON.stringify(p, null, 2) + "\n";
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
