// What moved between two systems of a role (`nix store diff-closures`), shown after a switch.
import { lastLines, run } from "../run";
import type { NixosDeploymentInputs } from "./types";

/**
 * `nix store diff-closures BEFORE AFTER` on this host, one line per package
 * whose version or size moved ("python3.11-numpy: 1.26.4 → 2.0.2, +1.2 MiB").
 * Both systems must be in this host's store (the old one from the last
 * deploy, unless collected; the new one from the build). Throws with Nix's
 * last words otherwise.
 */
export async function closureDiff(before: string, after: string, env?: Record<string, string | undefined>): Promise<string[]> {
    const r = await run(["nix", "--extra-experimental-features", "nix-command", "store", "diff-closures", before, after], { env, timeoutMs: 120_000, allowFailure: true });
    // eslint-disable-next-line no-control-regex
    const plain = (t: string) => t.replace(/\x1b\[[0-9;]*m/g, "");
    if (r.code !== 0) throw new Error(plain(lastLines(r.stderr, 3)).trim() || `exit code ${r.code}`);
    return plain(r.stdout).split("\n").map((l) => l.trimEnd()).filter((l) => l.trim() !== "");
}

/** Logs what moved between two systems of a role, or why that cannot be said here. Never throws. */
export async function logClosureDiff(inp: NixosDeploymentInputs, before: string, after: string, log: (m: string) => void): Promise<void> {
    try {
        const lines = await closureDiff(before, after);
        log(`what moved in ${inp.configuration} (nix store diff-closures ${before} ${after}; shown once per role):`);
        for (const l of lines.length > 0 ? lines : ["(no package changed version or size)"]) log(`  ${l}`);
    } catch (e) {
        log(`no closure diff for ${inp.configuration}: ${(e as Error).message.split("\n").pop()} (the previous system is not in this host's store, or was built elsewhere)`);
    }
}
