// The one lock of the providers: a file created exclusively (O_EXCL), holding
// its owner's token. Used for the stack's VM restart lock (providers/domain.ts)
// and around the known-hosts and deploy key files (withFileLock).
//
// The owner token is one line: "<pid> <start> <boot id> <nonce> <what>", where
// <start> is the process's start time (field 22 of /proc/<pid>/stat, clock
// ticks since boot) and <boot id> the kernel's (/proc/sys/kernel/random/boot_id).
// A lock is stale only when its owner is provably gone: another boot, no
// process with that pid, or a process with that pid that started at another
// time (the pid was recycled, as happens after a container restarts). An owner
// that still runs is waited for, however old the lock. A lock is removed only
// by the owner whose token it still holds.
//
// A lock is the one thing under .nixspark/ that is not a cache of the state,
// and it may stay a local file: it only orders processes on this host during
// one run, means nothing once they are gone, and two checkouts never share it.
//
// Modules are required inside the functions, so that a dynamic provider that
// captures these serializes to a self-contained closure.

/** Owner token of this process for one acquisition (a new nonce each time). */
function ownerToken(what: string): string {
    const crypto = require("node:crypto") as typeof import("node:crypto");
    return `${process.pid} ${processStart(process.pid) ?? "-"} ${bootId() ?? "-"} ${crypto.randomBytes(8).toString("hex")} ${what.replace(/\n/g, " ")}\n`;
}

function bootId(): string | undefined {
    const fs = require("node:fs") as typeof import("node:fs");
    try {
        return fs.readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim() || undefined;
    } catch {
        return undefined;
    }
}

/** The start time of process `pid` (clock ticks since boot), or undefined when there is none or /proc cannot say. */
function processStart(pid: number): string | undefined {
    const fs = require("node:fs") as typeof import("node:fs");
    try {
        const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
        // The command name (field 2) is in parentheses and may hold spaces: fields 3.. follow the last ")".
        return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
    } catch {
        return undefined;
    }
}

function pidExists(pid: number): boolean {
    try {
        process.kill(pid, 0);
        return true;
    } catch (e) {
        return (e as NodeJS.ErrnoException).code === "EPERM";
    }
}

/**
 * Whether the owner named by a lock's content is provably gone. A lock in the
 * older "<pid> <what>" form (written by an earlier release) is stale when no
 * process has that pid.
 */
export function ownerGone(holder: string): boolean {
    const [pidWord, start, boot] = holder.trim().split(" ");
    const pid = Number(pidWord);
    if (!Number.isInteger(pid) || pid <= 0) return true; // unreadable: nobody can be waited for
    const tokenForm = /^\d+$/.test(start ?? "") && /^[0-9a-f-]{8,}$/.test(boot ?? "");
    if (tokenForm) {
        const ours = bootId();
        if (ours !== undefined && boot !== ours) return true; // written before the host rebooted
    }
    if (!pidExists(pid)) return true;
    if (!tokenForm) return false;
    const now = processStart(pid);
    return now !== undefined && now !== start; // the pid belongs to another process now
}

/** The part of a holder's line that says what it does (for messages). */
export function holderWhat(holder: string): string {
    const words = holder.trim().split(" ");
    return (/^\d+$/.test(words[1] ?? "") ? words.slice(4) : words.slice(1)).join(" ");
}

export interface LockOptions {
    /** What the caller does, recorded in the lock for whoever waits. */
    what: string;
    timeoutMs: number;
    /** Called once, when the lock is found held by a live owner. */
    onWait?: (holder: string) => void;
    /** The error when timeoutMs passes; default "timed out ... waiting for the lock". */
    timeoutError?: (holder: string) => Error;
}

/**
 * Runs fn while holding the lock file `lock`. Waits up to timeoutMs for a
 * live owner; takes over a lock whose owner is gone (ownerGone); removes the
 * lock afterwards only if it still holds this acquisition's token.
 */
export async function withLock<T>(lock: string, opts: LockOptions, fn: () => Promise<T>): Promise<T> {
    const fs = require("node:fs") as typeof import("node:fs");
    const crypto = require("node:crypto") as typeof import("node:crypto");
    const token = ownerToken(opts.what);
    const deadline = Date.now() + opts.timeoutMs;
    let waited = false;
    for (;;) {
        try {
            fs.writeFileSync(lock, token, { flag: "wx", mode: 0o600 });
            break;
        } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
        }
        let holder: string | undefined;
        try {
            holder = fs.readFileSync(lock, "utf8");
        } catch (e) {
            const code = (e as NodeJS.ErrnoException).code;
            if (code === "ENOENT") continue; // released meanwhile
            // EISDIR: a directory lock of an earlier release; its owner is gone once it is two minutes old.
            if (code !== "EISDIR") throw e;
            try {
                if (Date.now() - fs.statSync(lock).mtimeMs > 120_000) fs.rmSync(lock, { recursive: true, force: true });
            } catch {
                /* it went away meanwhile */
            }
        }
        if (holder !== undefined && ownerGone(holder)) {
            // Take it over: move it aside (only one taker can), then check that what
            // was moved is the stale lock judged here and not a new owner's; if it is
            // a new owner's, put it back (link fails if yet another owner holds it).
            const aside = `${lock}.stale-${crypto.randomBytes(6).toString("hex")}`;
            try {
                fs.renameSync(lock, aside);
                const moved = fs.readFileSync(aside, "utf8");
                if (moved !== holder) fs.linkSync(aside, lock);
            } catch {
                /* released or taken meanwhile: try again */
            } finally {
                fs.rmSync(aside, { force: true });
            }
            continue;
        }
        if (Date.now() > deadline) {
            throw opts.timeoutError
                ? opts.timeoutError(holder ?? "")
                : new Error(`timed out after ${Math.round(opts.timeoutMs / 1000)} s waiting for the lock ${lock} (held by ${holder ? `pid ${holder.split(" ")[0]}: ${holderWhat(holder)}` : "an earlier release"}); remove it if no other pulumi run is active`);
        }
        if (!waited && holder !== undefined) opts.onWait?.(holder);
        waited = true;
        await new Promise((r) => setTimeout(r, 50 + Math.floor(Math.random() * 100)));
    }
    try {
        return await fn();
    } finally {
        try {
            if (fs.readFileSync(lock, "utf8") === token) fs.rmSync(lock, { force: true });
        } catch {
            /* already gone */
        }
    }
}

/**
 * Runs fn while holding the lock `${file}.lock`. The per-stack known-hosts
 * file is shared by every node, and nodes are deployed in parallel.
 */
export async function withFileLock<T>(file: string, fn: () => Promise<T>, timeoutMs = 60_000): Promise<T> {
    return withLock(`${file}.lock`, { what: `updating ${file}`, timeoutMs }, fn);
}
