// The evaluation cache: the answer of the program's `nix eval` kept in
// .nixspark/<stack>/nix-eval.json under a key that hashes everything the
// evaluation reads, so an unchanged preview starts no nix process at all.
// Only a speed-up: a missing, stale or unreadable file is a miss.
import * as fs from "node:fs";
import * as path from "node:path";
import { localFlakeDir, NIX_SYSTEM, packagesAt } from "./nixFlake";
import type { NixEvalOptions, NixEvalValues, PlannedEval } from "./nixFlake";

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
