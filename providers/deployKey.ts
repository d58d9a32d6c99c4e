// DeployKey: the SSH key a stack deploys with, held in the Pulumi state.
//
// The state is the truth (docs/design.md, Resource model): the private half is a Pulumi secret
// (additionalSecretOutputs, as pulumi-tls's PrivateKey keeps its key), and
// .nixspark/<stack>/deploy_ed25519 is only its cache, written back from the
// state when missing (cluster/deployKey.ts). A second checkout, a CI runner
// or `git clean -xdf` therefore deploys with the same key, and the image and
// role systems, which carry its public half, stay what they were.
//
// The key is made (or read from an existing cache file) by the program, not
// here: the program needs the public key before its Nix evaluation, also in
// the preview of a fresh stack, where a resource's outputs are its inputs.
// So the inputs carry a candidate key, and `check` puts the key the state
// already holds in its place: the state's key always wins, a candidate never
// replaces it, and the engine's "same" step hands the program the state's
// outputs. A stack from before per-stack keys that deploys with
// ~/.ssh/id_ed25519 records that (`source: "legacy-default"`, no key), so the
// decision no longer depends on which files a checkout happens to have.
//
// Provider rules: nothing here touches a file or runs a command; check and
// diff are pure. Deleting the resource deletes no key file (nothing ever
// deletes a private key).
import * as pulumi from "@pulumi/pulumi";
import { keptOutputs, providerCodeChanged, UNKNOWN } from "./unknown";
import { providerRef } from "./codeRef";

export type DeployKeySource = "stack" | "legacy-default";

export interface DeployKeyInputs {
    /** "stack": the stack's own key, held here; "legacy-default": the user's ~/.ssh/id_ed25519, which the state does not hold. */
    source: DeployKeySource;
    /** OpenSSH public key line ("ssh-ed25519 AAAA... comment"); absent for legacy-default. */
    publicKey?: string;
    /** The private key, OpenSSH format; a Pulumi secret. Absent for legacy-default. */
    privateKey?: string;
    /** Where the key came from when it entered the state: an existing cache file ("cache") or made by the program ("new"). */
    origin: "cache" | "new";
    /** When the key entered the state (ISO time of that run); a run that finds its own stamp in the outputs stored the key. */
    storedAt: string;
}

export interface DeployKeyOutputs extends DeployKeyInputs {
    /** SHA256 fingerprint of the public key, as ssh-keygen -l prints it. */
    fingerprint?: string;
}

/**
 * The public key blob an unencrypted OpenSSH private key file carries in its
 * header ("openssh-key-v1": cipher, kdf, kdf options, key count, then the
 * first public key), base64; undefined for another format.
 */
export function openSshPublicBlob(privateKey: string): string | undefined {
    const m = /-----BEGIN OPENSSH PRIVATE KEY-----([\s\S]*?)-----END OPENSSH PRIVATE KEY-----/.exec(privateKey);
    if (!m) return undefined;
    const b = Buffer.from(m[1].replace(/\s+/g, ""), "base64");
    const magic = "openssh-key-v1\0";
    if (b.subarray(0, magic.length).toString("latin1") !== magic) return undefined;
    let at = magic.length;
    const next = (): Buffer | undefined => {
        if (at + 4 > b.length) return undefined;
        const n = b.readUInt32BE(at);
        if (at + 4 + n > b.length) return undefined;
        const s = b.subarray(at + 4, at + 4 + n);
        at += 4 + n;
        return s;
    };
    for (let i = 0; i < 3; i++) if (next() === undefined) return undefined; // cipher, kdf, kdf options
    if (at + 4 > b.length || b.readUInt32BE(at) < 1) return undefined;
    at += 4;
    return next()?.toString("base64");
}

/** SHA256 fingerprint of an OpenSSH public key line ("SHA256:..." as ssh-keygen -l prints it); undefined for a line without a key. */
export function publicKeyFingerprint(line: string): string | undefined {
    const crypto = require("node:crypto") as typeof import("node:crypto");
    const blob = line.trim().split(/\s+/)[1];
    if (!blob || !/^[A-Za-z0-9+/]+=*$/.test(blob)) return undefined;
    return `SHA256:${crypto.createHash("sha256").update(Buffer.from(blob, "base64")).digest("base64").replace(/=+$/, "")}`;
}

/** check: one failure per bad input; unknown values pass. A key pair whose halves do not match is refused. */
export function checkDeployKey(news: Record<string, unknown>): { property: string; reason: string }[] {
    const failures: { property: string; reason: string }[] = [];
    const known = (k: string) => news[k] !== UNKNOWN && news[k] !== undefined && news[k] !== null;
    if (known("source") && news.source !== "stack" && news.source !== "legacy-default") failures.push({ property: "source", reason: 'source must be "stack" or "legacy-default"' });
    if (news.source === "stack") {
        if (known("publicKey") && (typeof news.publicKey !== "string" || publicKeyFingerprint(news.publicKey) === undefined)) {
            failures.push({ property: "publicKey", reason: "publicKey must be an OpenSSH public key line (type, base64 key, comment)" });
        }
        if (known("privateKey") && (typeof news.privateKey !== "string" || !/^-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(news.privateKey.trim()))) {
            failures.push({ property: "privateKey", reason: "privateKey must be a private key file's text (-----BEGIN ... PRIVATE KEY-----)" });
        }
        if (!known("publicKey") && news.publicKey !== UNKNOWN) failures.push({ property: "publicKey", reason: "the stack's own key needs its public half" });
        if (!known("privateKey") && news.privateKey !== UNKNOWN) failures.push({ property: "privateKey", reason: "the stack's own key needs its private half" });
        if (failures.length === 0 && typeof news.publicKey === "string" && typeof news.privateKey === "string") {
            const blob = openSshPublicBlob(news.privateKey);
            if (blob !== undefined && blob !== news.publicKey.trim().split(/\s+/)[1]) {
                failures.push({ property: "publicKey", reason: "publicKey is not the public half of privateKey" });
            }
        }
    }
    return failures;
}

/** True when these (old) inputs or outputs hold the stack's decision: its own key, or the legacy default. */
export function holdsDecision(o: Record<string, unknown> | undefined): boolean {
    if (!o) return false;
    return (o.source === "stack" && typeof o.privateKey === "string" && o.privateKey !== "") || o.source === "legacy-default";
}

/** What create records: the inputs, the public key trimmed, and its fingerprint. */
export function deployKeyOutputs(inputs: Record<string, unknown>): Record<string, unknown> {
    const publicKey = typeof inputs.publicKey === "string" ? inputs.publicKey.trim() : undefined;
    const fingerprint = publicKey ? publicKeyFingerprint(publicKey) : undefined;
    return { ...inputs, ...(publicKey ? { publicKey } : {}), ...(fingerprint ? { fingerprint } : {}) };
}

/**
 * check's inputs: the key the state already holds (old inputs) in place of
 * the program's candidate. The state's decision stands until the resource is
 * deleted; only a state without a decision takes the candidate.
 */
export function keepStateKey(olds: Record<string, unknown> | undefined, news: Record<string, unknown>): Record<string, unknown> {
    const o = olds ?? {};
    if (!holdsDecision(o)) return news;
    const out: Record<string, unknown> = { ...news };
    for (const k of ["source", "publicKey", "privateKey", "origin", "storedAt"]) out[k] = o[k];
    return out;
}

export const deployKeyProvider: pulumi.dynamic.ResourceProvider = {
    async check(olds: Record<string, unknown>, news: Record<string, unknown>) {
        const inputs = keepStateKey(olds, news);
        return { inputs, failures: checkDeployKey(inputs) };
    },

    // Never a replacement: a new key would lock every node out (the image and
    // role systems carry the old one). After check, news differ from olds only
    // in a state that held no decision, or in the provider code.
    async diff(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
        const changed = ["source", "publicKey", "privateKey"].some((k) => news[k] === UNKNOWN || (olds[k] ?? undefined) !== (news[k] ?? undefined));
        return { changes: changed || providerCodeChanged(olds, news), replaces: [], deleteBeforeReplace: false };
    },

    async create(inputs: Record<string, unknown>) {
        const outs = deployKeyOutputs(inputs);
        return { id: inputs.source === "stack" ? `deploy-key-${String(outs.fingerprint ?? "unknown")}` : "deploy-key-legacy-default", outs };
    },

    // New provider code (keep what the state holds), or a state that held no
    // decision taking the candidate.
    async update(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
        return { outs: holdsDecision(olds) ? keptOutputs(olds) : deployKeyOutputs(news) };
    },

    // Nothing outside the state to read: the key is what the state holds.
    async read(id: string, props: Record<string, unknown>) {
        return { id, props };
    },

    async delete(_id: string, props: Record<string, unknown>) {
        if (props.source === "stack") {
            console.error(
                `the stack's deploy key ${String(props.fingerprint ?? "")} leaves the Pulumi state; no key file is deleted (a cache copy stays in .nixspark/<stack>/deploy_ed25519 where there was one)`,
            );
        }
    },
};

export interface DeployKeyArgs {
    source: pulumi.Input<DeployKeySource>;
    publicKey?: pulumi.Input<string>;
    /** Pass it as a Pulumi secret; the output is a secret in any case. */
    privateKey?: pulumi.Input<string>;
    origin: pulumi.Input<"cache" | "new">;
    storedAt: pulumi.Input<string>;
}

export class DeployKey extends pulumi.dynamic.Resource {
    declare readonly source: pulumi.Output<DeployKeySource>;
    declare readonly publicKey: pulumi.Output<string | undefined>;
    /** A Pulumi secret. */
    declare readonly privateKey: pulumi.Output<string | undefined>;
    declare readonly origin: pulumi.Output<"cache" | "new">;
    declare readonly storedAt: pulumi.Output<string>;
    declare readonly fingerprint: pulumi.Output<string | undefined>;

    constructor(name: string, args: DeployKeyArgs, opts?: pulumi.CustomResourceOptions) {
        super(
            providerRef("DeployKey", deployKeyProvider),
            name,
            { ...args, fingerprint: undefined },
            { ...opts, additionalSecretOutputs: [...(opts?.additionalSecretOutputs ?? []), "privateKey"] },
            "nixspark",
            "DeployKey",
        );
    }
}
