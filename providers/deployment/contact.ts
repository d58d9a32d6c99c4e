// Reaching a deployment's node: its SSH target, and what this checkout needs
// from the state to reach it (the deploy key, the pinned host keys).
import { withFileLock } from "../lock";
import { ensureKeyFile } from "../keyFile";
import { hostKeyLines, restoreHostKeys } from "../knownHosts";
import { localPath } from "../paths";
import type { SshTarget } from "../ssh";
import type { NixosDeploymentInputs } from "./types";

/** The SSH target of a deployment. */
export function targetOf(inp: NixosDeploymentInputs): SshTarget {
    return { host: inp.host, user: inp.sshUser, port: inp.sshPort, identityFile: inp.identityFile, knownHostsFile: inp.knownHostsFile };
}

/**
 * What this checkout needs to reach the node, from the state when its cache
 * (.nixspark/<stack>/) lacks it: the deploy key (inp.privateKey) written to
 * identityFile when missing, and the host keys the state pinned (`pinned`,
 * the outputs' hostKeys) put into the known-hosts file when it has no entry
 * for the node. A refresh or destroy runs before any program could write
 * them, so read and delete need this as much as update.
 */
export async function prepareContact(inp: NixosDeploymentInputs, pinned: unknown, log: (m: string) => void): Promise<void> {
    if (typeof inp.privateKey === "string" && inp.privateKey !== "") {
        const fs = require("node:fs") as typeof import("node:fs");
        const path = require("node:path") as typeof import("node:path");
        const file = localPath(inp.identityFile);
        fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
        const key = inp.privateKey;
        const r = await withFileLock(file, async () => ensureKeyFile(file, key));
        if (r.action === "written") log(`wrote the stack's deploy key from the Pulumi state to ${inp.identityFile}`);
        if (r.action === "moved-aside") log(`${inp.identityFile} held another key than the stack's state; it now holds the state's key, the other was kept as ${r.movedTo}`);
    }
    if (await restoreHostKeys(inp.knownHostsFile, inp.host, inp.sshPort, pinned)) log(`put its pinned host key from the Pulumi state back into ${inp.knownHostsFile}`);
}

/** The hostKeys output after the node answered: the known-hosts file's entries for it, else what the state had. */
export function recordedHostKeys(inp: NixosDeploymentInputs, previous: unknown): { hostKeys?: string[] } {
    const lines = hostKeyLines(inp.knownHostsFile, inp.host, inp.sshPort);
    if (lines.length > 0) return { hostKeys: lines };
    return Array.isArray(previous) ? { hostKeys: previous as string[] } : {};
}
