// Flake references, attribute names and `nix eval`, as the program asks Nix
// about the stack's flake (cluster/nixParams.ts plans and runs the
// evaluations; cluster/evalCache.ts remembers their answers).
import * as path from "node:path";
import { run } from "../providers/run";

/** The system every output of the flake is built for. */
export const NIX_SYSTEM = "x86_64-linux";

/** Flags every `nix` call here passes: flakes are experimental in Nix 2.8 and still off by default. */
export const NIX_FEATURE_ARGS = ["--extra-experimental-features", "nix-command flakes"];

export class NixParamsError extends Error {
    constructor(message: string) {
        super(message);
        this.name = "NixParamsError";
    }
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

/** The flake attribute that gives everything about one stack (nix/flake.nix: lib.stackEvaluations). */
export function stackEvaluationsAttribute(stack: string): string {
    return `lib.stackEvaluations.${attrSegment(stack)}`;
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

/** The per-stack directory of GC roots for images: `<base>/.nixspark/<stack>/gcroots`, absolute. */
export function gcRootDir(stack: string, base: string = process.cwd()): string {
    return path.resolve(base, ".nixspark", stack, "gcroots");
}

// ------------------------------------------------ what the evaluations answer

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
export function valueAt(answer: unknown, keys: string[]): unknown {
    let v: unknown = answer;
    for (const k of keys) v = v !== null && typeof v === "object" ? (v as Record<string, unknown>)[k] : undefined;
    return v;
}

export function packagesAt(answer: unknown, keys: string[]): { master: PackageSummary; worker: PackageSummary } | undefined {
    const v = valueAt(answer, keys);
    const o = v as { master?: unknown; worker?: unknown } | undefined;
    if (!o || typeof o !== "object" || typeof o.master !== "object" || typeof o.worker !== "object" || !o.master || !o.worker) return undefined;
    return { master: o.master as PackageSummary, worker: o.worker as PackageSummary };
}
