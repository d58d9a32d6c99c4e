// The stack's SSH key, program side: which key the stack deploys with, read
// back from the Pulumi state before the Nix evaluation (the image and the
// role systems carry its public half), and the cache file written from it.
//
// How the program learns the state's key, in preview and in up alike: it
// registers the DeployKey resource (providers/deployKey.ts) first, with a
// candidate (the cache file's key, or a new one made in memory), and awaits
// its outputs. The provider's check puts the key the state holds in the
// candidate's place, so an existing stack is a "same" step and the engine
// answers with the state's outputs; a stack without a key is a create, whose
// outputs (in preview: its inputs) are the candidate. Only then is the cache
// file written, so a checkout without it never makes a key file that the
// state would contradict. A fresh stack's preview writes its candidate to the
// cache file, and the `up` after it imports that same key: what was previewed
// (image, systems, base volume name) is what up creates.
import * as pulumi from "@pulumi/pulumi";
import type { ClusterConfig } from "./config";
import { DeployKey, DeployKeySource, publicKeyFingerprint } from "../providers/deployKey";
import { ensureKeyFile } from "../providers/keyFile";
import { expandHome } from "../providers/paths";

export interface KeyPair {
    /** OpenSSH private key file text. */
    privateKey: string;
    /** OpenSSH public key line. */
    publicKey: string;
}

export interface ResolvedSsh {
    /** The private key file (absolute). */
    identityFile: string;
    /** What the image and role systems authorize (nixspark:ssh.publicKey, else the key's public half). */
    publicKey?: string;
    /** The stack's known-hosts file (absolute; a cache of the deployments' pinned host keys). */
    knownHostsFile: string;
    keySource: "configured" | "stack" | "legacy-default";
    /** keySource "stack": the cache file's key, when there is one (the candidate a state without a key imports). */
    cached?: KeyPair;
}


/** The stack's own deploy key's cache file, used when nixspark:ssh.privateKeyPath names none. */
export function stackDeployKey(stateDir: string): string {
    const path = require("node:path") as typeof import("node:path");
    return path.join(stateDir, "deploy_ed25519");
}

/**
 * A new ed25519 key pair in OpenSSH's formats, made in memory (no file, no
 * ssh-keygen): the private key as `openssh-key-v1` without passphrase
 * (deployments run unattended, BatchMode), as OpenSSH's PROTOCOL.key
 * describes it and ssh-keygen writes it.
 */
export function generateDeployKey(comment: string): KeyPair {
    const crypto = require("node:crypto") as typeof import("node:crypto");
    const { publicKey, privateKey } = crypto.generateKeyPairSync("ed25519");
    const pub = (publicKey.export({ format: "der", type: "spki" }) as Buffer).subarray(-32);
    const seed = (privateKey.export({ format: "der", type: "pkcs8" }) as Buffer).subarray(-32);
    const u32 = (n: number) => {
        const b = Buffer.alloc(4);
        b.writeUInt32BE(n);
        return b;
    };
    const str = (b: Buffer | string) => {
        const buf = typeof b === "string" ? Buffer.from(b, "utf8") : b;
        return Buffer.concat([u32(buf.length), buf]);
    };
    const blob = Buffer.concat([str("ssh-ed25519"), str(pub)]);
    const check = crypto.randomBytes(4);
    let secret = Buffer.concat([check, check, str("ssh-ed25519"), str(pub), str(Buffer.concat([seed, pub])), str(comment)]);
    const pad = (8 - (secret.length % 8)) % 8;
    secret = Buffer.concat([secret, Buffer.from(Array.from({ length: pad }, (_, i) => i + 1))]);
    const body = Buffer.concat([Buffer.from("openssh-key-v1\0", "latin1"), str("none"), str("none"), str(Buffer.alloc(0)), u32(1), str(blob), str(secret)]);
    const lines = body.toString("base64").match(/.{1,70}/g) ?? [];
    return {
        privateKey: `-----BEGIN OPENSSH PRIVATE KEY-----\n${lines.join("\n")}\n-----END OPENSSH PRIVATE KEY-----\n`,
        publicKey: `ssh-ed25519 ${blob.toString("base64")} ${comment}`,
    };
}

/**
 * The key in a key file, or undefined when there is no file. A missing .pub
 * is derived from the private key (`ssh-keygen -y`) and written; nothing is
 * ever deleted, and a private key is never made or replaced here.
 */
export function readKeyFile(file: string): KeyPair | undefined {
    const fs = require("node:fs") as typeof import("node:fs");
    const { execFileSync } = require("node:child_process") as typeof import("node:child_process");
    let privateKey: string;
    try {
        privateKey = fs.readFileSync(file, "utf8");
    } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
        throw e;
    }
    const pubFile = `${file}.pub`;
    if (fs.existsSync(pubFile)) return { privateKey, publicKey: fs.readFileSync(pubFile, "utf8").trim() };
    let publicKey: string;
    try {
        publicKey = execFileSync("ssh-keygen", ["-y", "-P", "", "-f", file], { encoding: "utf8", timeout: 30_000, stdio: ["ignore", "pipe", "pipe"] }).trim();
    } catch (e) {
        const err = e as { stderr?: Buffer | string; message: string };
        throw new Error(`${file} has no ${pubFile} and ssh-keygen -y could not derive it (install OpenSSH; the key is left as it is): ${String(err.stderr ?? "").trim() || err.message}`);
    }
    fs.writeFileSync(pubFile, `${publicKey}\n`, { mode: 0o644 });
    return { privateKey, publicKey };
}

/**
 * The SSH material of a stack, as far as the files of this checkout tell:
 * the private key (absolute), its public key (nixspark:ssh.publicKey, else
 * the key's .pub, derived when missing) and the stack's known-hosts file.
 *
 * Without nixspark:ssh.privateKeyPath the stack uses its own deploy key
 * (.nixspark/<stack>/deploy_ed25519), so a fresh stack needs no key of the
 * user's and the nodes trust nothing else; `cached` is the cache file's key.
 * A stack deployed before there were per-stack keys (it has a known-hosts
 * file but no deploy key) keeps the old default ~/.ssh/id_ed25519 while
 * that exists: its running nodes only let that key in. This is only the
 * candidate: for "stack" and "legacy-default", settleDeployKey asks the
 * state, whose decision wins. Nothing is made or deleted here.
 */
export function resolveSsh(
    cfg: ClusterConfig,
    stateDir: string,
    _stack = "nixspark",
    home: string = (require("node:os") as typeof import("node:os")).homedir(),
): ResolvedSsh {
    const fs = require("node:fs") as typeof import("node:fs");
    const path = require("node:path") as typeof import("node:path");
    const knownHostsFile = path.join(stateDir, "known_hosts");
    const legacy = path.join(home, ".ssh", "id_ed25519");
    const stackKey = stackDeployKey(stateDir);
    if (cfg.ssh.privateKeyPath) {
        const identityFile = path.resolve(expandHome(cfg.ssh.privateKeyPath, home));
        let publicKey = cfg.ssh.publicKey;
        if (!publicKey && fs.existsSync(`${identityFile}.pub`)) publicKey = fs.readFileSync(`${identityFile}.pub`, "utf8").trim();
        return { identityFile, publicKey, knownHostsFile, keySource: "configured" };
    }
    if (!fs.existsSync(stackKey) && fs.existsSync(knownHostsFile) && fs.statSync(knownHostsFile).size > 0 && fs.existsSync(legacy)) {
        let publicKey = cfg.ssh.publicKey;
        if (!publicKey && fs.existsSync(`${legacy}.pub`)) publicKey = fs.readFileSync(`${legacy}.pub`, "utf8").trim();
        return { identityFile: legacy, publicKey, knownHostsFile, keySource: "legacy-default" };
    }
    const cached = readKeyFile(stackKey);
    return { identityFile: stackKey, publicKey: cfg.ssh.publicKey ?? cached?.publicKey, knownHostsFile, keySource: "stack", cached };
}

/** The value of an output, known now; refuses (instead of waiting forever) when the engine leaves it unknown. */
async function known<T>(o: pulumi.Output<T>, what: string): Promise<T> {
    const impl = o as unknown as { isKnown: Promise<boolean>; promise(): Promise<T> };
    if (!(await impl.isKnown)) throw new Error(`${what} is not known in this preview`);
    return impl.promise();
}

export interface SettledSsh extends ResolvedSsh {
    keySource: "stack" | "legacy-default";
    /** The stack's own key's private half, a Pulumi secret (keySource "stack"): deployments reach their nodes with it from the state alone. */
    privateKey?: pulumi.Output<string>;
    /** The DeployKey resource. */
    resource: DeployKey;
}

export interface SettleLog {
    info: (m: string) => void;
    warn: (m: string) => void;
}

/**
 * Registers the stack's DeployKey with this checkout's candidate, waits for
 * what the state holds, and makes the cache file hold the state's key (it is
 * written when missing; a file with another key is moved aside, never
 * deleted). Says when a key enters the state (imported from the cache file,
 * or new) and when the cache was written from the state.
 */
export async function settleDeployKey(
    stack: string,
    resolved: ResolvedSsh,
    cfg: ClusterConfig,
    o: { stateDir: string; home?: string; dryRun: boolean; log: SettleLog; opts?: pulumi.CustomResourceOptions },
): Promise<SettledSsh> {
    const path = require("node:path") as typeof import("node:path");
    const home = o.home ?? (require("node:os") as typeof import("node:os")).homedir();
    const cacheFile = stackDeployKey(o.stateDir);
    const shown = path.relative(process.cwd(), cacheFile) || cacheFile;
    const stamp = new Date().toISOString();
    let candidate: { source: DeployKeySource; key?: KeyPair; origin: "cache" | "new" };
    if (resolved.keySource === "legacy-default") candidate = { source: "legacy-default", origin: "cache" };
    else if (resolved.cached) candidate = { source: "stack", key: resolved.cached, origin: "cache" };
    else candidate = { source: "stack", key: generateDeployKey(`nixspark-${stack}`), origin: "new" };

    const resource = new DeployKey(
        `${stack}-deploy-key`,
        {
            source: candidate.source,
            publicKey: candidate.key?.publicKey.trim(),
            privateKey: candidate.key ? pulumi.secret(candidate.key.privateKey) : undefined,
            origin: candidate.origin,
            storedAt: stamp,
        },
        o.opts,
    );
    const state = await known(
        pulumi.all([resource.source, resource.publicKey, resource.privateKey, resource.origin, resource.storedAt]).apply(([source, publicKey, privateKey, origin, storedAt]) => ({ source, publicKey, privateKey, origin, storedAt })),
        "the stack's deploy key",
    );
    const storedNow = state.storedAt === stamp;
    const knownHostsFile = resolved.knownHostsFile;

    if (state.source === "legacy-default") {
        const identityFile = path.join(home, ".ssh", "id_ed25519");
        if (storedNow) o.log.info(`${o.dryRun ? "will record" : "recorded"} in the stack's state that it deploys with ~/.ssh/id_ed25519, the key its running nodes let in`);
        const fs = require("node:fs") as typeof import("node:fs");
        let publicKey = cfg.ssh.publicKey;
        if (!publicKey && fs.existsSync(`${identityFile}.pub`)) publicKey = fs.readFileSync(`${identityFile}.pub`, "utf8").trim();
        return { identityFile, publicKey, knownHostsFile, keySource: "legacy-default", resource };
    }

    if (typeof state.privateKey !== "string" || typeof state.publicKey !== "string") throw new Error(`the stack's state holds a deploy key resource without its key (${stack}-deploy-key)`);
    const fp = publicKeyFingerprint(state.publicKey) ?? "?";
    const written = ensureKeyFile(cacheFile, state.privateKey, state.publicKey);
    if (storedNow && state.origin === "cache") {
        o.log.info(
            `${o.dryRun ? "will import" : "imported"} the deploy key ${shown} (${fp}) into the stack's state, once: ` +
                `from now on the state holds it (a secret) and ${shown} is only its cache`,
        );
    } else if (storedNow) {
        o.log.info(
            o.dryRun
                ? `a new deploy key for this stack (${fp}), written to ${shown} so that \`pulumi up\` stores this same key in the stack's state`
                : `stored the stack's new deploy key (${fp}) in its state (a secret); ${shown} is its cache`,
        );
    } else if (written.action === "written") {
        o.log.info(`wrote the stack's deploy key (${fp}) from its state to ${shown}`);
    }
    if (written.action === "moved-aside") {
        o.log.warn(
            `${shown} held another key than the one in the stack's state; the state's key (${fp}) is the stack's, so ${shown} now holds it. ` +
                `The other key was kept as ${written.movedTo}`,
        );
    }
    return {
        identityFile: cacheFile,
        publicKey: cfg.ssh.publicKey ?? state.publicKey,
        knownHostsFile,
        keySource: "stack",
        privateKey: resource.privateKey as pulumi.Output<string>,
        resource,
    };
}
