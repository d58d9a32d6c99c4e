// Delivering the cluster secret's properties file (ClusterSecret,
// providers/clusterSecret.ts) to a node: what a NixosDeployment does before
// it switches, so that the new system's Spark reads it when it starts.
import { SECRET_FILE } from "./clusterSecret";
import { run } from "./run";
import { destination, privileged, sshArgv, SshTarget } from "./ssh";

/**
 * Writes the secret properties to the node: root-owned, mode 0400, through
 * `install` reading its stdin as /proc/self/fd/0 (there on every Linux with
 * /proc, unlike /dev/stdin on a bare devtmpfs); the content is never an
 * argument, so no process list on either side shows it. With useSudo the
 * deploy user escalates without a password (nix/modules/common.nix).
 */
export async function deliverSecretProperties(t: SshTarget, content: string, opts: { useSudo: boolean; file?: string; timeoutMs?: number }): Promise<void> {
    const file = opts.file ?? SECRET_FILE;
    const words = privileged(["install", "-D", "-m", "0400", "-o", "root", "-g", "root", "/proc/self/fd/0", file], { useSudo: opts.useSudo });
    const r = await run(sshArgv(t, "strict", words), { input: content, timeoutMs: opts.timeoutMs ?? 60_000, allowFailure: true });
    if (r.code !== 0) {
        // Never echo the content; ssh's and install's own words are safe.
        const why = (r.stderr || r.stdout).trim().split("\n").pop() ?? "";
        throw new Error(`writing the cluster secret to ${destination(t)}:${file} failed with exit code ${r.code}: ${why}`);
    }
}
