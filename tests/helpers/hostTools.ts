// Makes sure the Debian tools a test needs are installed, by running the
// project's own idempotent setup script (never a silent skip).
import { execFileSync } from "node:child_process";
import * as path from "node:path";

const ROOT = path.join(__dirname, "../..");

export function have(cmd: string): boolean {
    try {
        execFileSync("sh", ["-c", 'command -v "$1"', "sh", cmd], { stdio: "ignore" });
        return true;
    } catch {
        return false;
    }
}

/** Runs scripts/setup-host when any of `cmds` is missing. */
export function ensureHostTools(cmds: string[]): void {
    if (cmds.every(have)) return;
    execFileSync("bash", [path.join(ROOT, "scripts/setup-host")], { stdio: "inherit", timeout: 15 * 60_000 });
    const missing = cmds.filter((c) => !have(c));
    if (missing.length) throw new Error(`scripts/setup-host ran but these are still missing: ${missing.join(", ")}`);
}
