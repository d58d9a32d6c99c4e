// The stack's known-hosts file: created private, entries for one address
// replaced or removed under the file lock, and the host keys the state
// pinned put back when this checkout lacks them.
import { withFileLock } from "./lock";
import { localPath } from "./paths";
import { run } from "./run";
import { knownHostNames } from "./ssh";


/** Creates the known-hosts file (mode 600) and its directory (mode 700) if missing. */
export function ensureKnownHostsFile(file: string): string {
    const fs = require("node:fs") as typeof import("node:fs");
    const path = require("node:path") as typeof import("node:path");
    const f = localPath(file);
    fs.mkdirSync(path.dirname(f), { recursive: true, mode: 0o700 });
    if (!fs.existsSync(f)) fs.writeFileSync(f, "", { mode: 0o600 });
    return f;
}

/** Removes every entry for host:port from the known-hosts file (ssh-keygen -R). Call with the file lock held. */
export async function forgetHostKeys(file: string, host: string, port: number): Promise<void> {
    const f = localPath(file);
    for (const name of knownHostNames(host, port)) {
        // Exit 0 whether or not the name was present; non-zero only for real errors.
        await run(["ssh-keygen", "-R", name, "-f", f], { timeoutMs: 30_000 });
    }
    const fs = require("node:fs") as typeof import("node:fs");
    fs.rmSync(`${f}.old`, { force: true }); // ssh-keygen's backup copy
}

/**
 * Replaces the known-hosts entries of host:port with `lines` (a fresh VM's
 * key, learnt on first contact), under the file lock.
 */
export async function replaceHostKeys(file: string, host: string, port: number, lines: string[]): Promise<void> {
    const fs = require("node:fs") as typeof import("node:fs");
    const f = ensureKnownHostsFile(file);
    await withFileLock(f, async () => {
        await forgetHostKeys(f, host, port);
        const text = lines.map((l) => l.trim()).filter((l) => l !== "").join("\n");
        if (text) {
            const current = fs.readFileSync(f, "utf8");
            fs.appendFileSync(f, `${current === "" || current.endsWith("\n") ? "" : "\n"}${text}\n`);
        }
    });
}

/** Whether a known_hosts line is filed under one of host:port's names (its first field, comma-separated). */
function namesHost(line: string, host: string, port: number): boolean {
    const names = line.trim().split(/\s+/)[0]?.split(",") ?? [];
    const want = knownHostNames(host, port);
    return names.some((n) => want.includes(n));
}

/**
 * The entries the known-hosts file holds for host:port, as written (what a
 * deployment records as its pinned host keys). Empty when the file is missing.
 */
export function hostKeyLines(file: string, host: string, port: number): string[] {
    const fs = require("node:fs") as typeof import("node:fs");
    let text = "";
    try {
        text = fs.readFileSync(localPath(file), "utf8");
    } catch {
        return [];
    }
    return text.split("\n").map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#") && !l.startsWith("@") && namesHost(l, host, port));
}

/**
 * Puts the host keys the stack's state pinned for host:port back into the
 * known-hosts file when the file has no entry for that address (a new
 * checkout, `git clean`, rm -rf .nixspark). An entry the file has is kept as
 * it is, even another key: editing the file is how a user accepts a machine's
 * new key (see hostKeyError). Only lines naming host:port are written.
 * Returns true when it wrote some.
 */
export async function restoreHostKeys(file: string, host: string, port: number, pinned: unknown): Promise<boolean> {
    const fs = require("node:fs") as typeof import("node:fs");
    const lines = (Array.isArray(pinned) ? pinned : []).filter((l): l is string => typeof l === "string").map((l) => l.trim()).filter((l) => l !== "" && namesHost(l, host, port));
    if (lines.length === 0) return false;
    const f = ensureKnownHostsFile(file);
    if (hostKeyLines(f, host, port).length > 0) return false;
    return withFileLock(f, async () => {
        if (hostKeyLines(f, host, port).length > 0) return false;
        const current = fs.readFileSync(f, "utf8");
        fs.appendFileSync(f, `${current === "" || current.endsWith("\n") ? "" : "\n"}${lines.join("\n")}\n`);
        return true;
    });
}
