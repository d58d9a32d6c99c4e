// Reads and validates the whole stack configuration before any resource is
// registered, so a bad config stops `pulumi preview` with one clear line per
// problem and leaves the stack empty.
import * as pulumi from "@pulumi/pulumi";
import { ClusterConfig, ConfigError, parseConfig, rawFromPulumiConfig } from "./config";
import { buildTopology, Topology, TopologyError } from "./topology";

export function loadStackConfig(stack: string, all: Record<string, string>): { config: ClusterConfig; topology: Topology } {
    try {
        const config = parseConfig(rawFromPulumiConfig(all));
        return { config, topology: buildTopology(stack, config) };
    } catch (e) {
        if (e instanceof ConfigError || e instanceof TopologyError) {
            const message = e instanceof TopologyError ? `invalid stack configuration:\n  ${e.message}` : e.message;
            // RunError: Pulumi prints the message alone, without a stack trace.
            throw new pulumi.RunError(message);
        }
        throw e;
    }
}

/** Where the program keeps per-stack files (known hosts, GC roots): <project>/.nixspark/<stack>. */
export function stackStateDir(stack: string, base: string = process.cwd()): string {
    const path = require("node:path") as typeof import("node:path");
    return path.resolve(base, ".nixspark", stack);
}

function expandHome(p: string): string {
    const os = require("node:os") as typeof import("node:os");
    return p === "~" ? os.homedir() : p.startsWith("~/") ? `${os.homedir()}/${p.slice(2)}` : p;
}

/**
 * The SSH material of a stack: the private key (absolute), its public key
 * (nixspark:ssh.publicKey, else the key file's .pub next to it; needed only
 * to build the image) and the stack's known-hosts file.
 */
export function resolveSsh(cfg: ClusterConfig, stateDir: string): { identityFile: string; publicKey?: string; knownHostsFile: string } {
    const fs = require("node:fs") as typeof import("node:fs");
    const path = require("node:path") as typeof import("node:path");
    const identityFile = path.resolve(expandHome(cfg.ssh.privateKeyPath));
    let publicKey = cfg.ssh.publicKey;
    if (!publicKey && fs.existsSync(`${identityFile}.pub`)) publicKey = fs.readFileSync(`${identityFile}.pub`, "utf8").trim();
    return { identityFile, publicKey, knownHostsFile: path.join(stateDir, "known_hosts") };
}
