// ClusterSecret: the per-stack secret Spark authenticates with
// (spark.authenticate.secret), generated once by the stack and kept as a
// Pulumi secret: its `value` output is encrypted in the state
// (additionalSecretOutputs) and never printed. Rotating it is one config
// change: a new `generation` replaces the resource, which makes a new value,
// and every NixosDeployment delivers it and restarts Spark.
//
// Delivery (deliverSecretProperties, providers/secretDelivery.ts) writes the Spark properties that must
// not enter /nix/store (the secret, Spark settings set with
// `pulumi config set --secret`, and the S3 keys as the S3A settings
// spark.hadoop.fs.s3a.access.key/secret.key: s3SecretSettings,
// cluster/configSchema.ts) to a root-only file on the node over SSH,
// on stdin, never on a command line; nix/modules/spark.nix appends it
// unchanged to the daemons' configuration at boot (root:spark-users, 0440,
// under /run). The file's format is written down once, in
// nix/modules/options.nix (nixspark.security.secretFile), and
// tests/integration/secretContract.test.ts runs the node's unit on it.
import * as pulumi from "@pulumi/pulumi";
import { keptOutputs, providerCodeChanged, UNKNOWN } from "./unknown";
import { providerRef } from "./codeRef";

/** Where the node keeps the secret properties (nix/modules/options.nix: nixspark.security.secretFile). */
export const SECRET_FILE = "/var/lib/nixspark/spark-secret";

/** 256 random bits, URL-safe base64: one line, no characters a properties file would misread. */
export function newSecret(): string {
    const crypto = require("node:crypto") as typeof import("node:crypto");
    return crypto.randomBytes(32).toString("base64url");
}

/**
 * The properties file the node appends to spark-defaults.conf at boot: the
 * cluster secret and the secret Spark settings (the S3 keys among them),
 * one `key value` line each, sorted.
 * Values are single lines (Spark's properties format would read on).
 */
export function secretProperties(secret: string, secretSettings: Record<string, string> = {}): string {
    const lines = [`spark.authenticate.secret ${secret}`];
    for (const k of Object.keys(secretSettings).sort()) {
        const v = secretSettings[k];
        if (/[\r\n]/.test(v)) throw new Error(`secret Spark setting ${k}: the value must be one line`);
        lines.push(`${k} ${v}`);
    }
    for (const l of lines) if (/[\r\n]/.test(l)) throw new Error("the cluster secret must be one line");
    return lines.join("\n") + "\n";
}

/** Inputs: the generation; outputs add the value. */
export interface ClusterSecretOutputs {
    generation: number;
    value: string;
}

export const clusterSecretProvider: pulumi.dynamic.ResourceProvider = {
    async check(_olds: Record<string, unknown>, news: Record<string, unknown>) {
        const g = news.generation;
        const failures = g === UNKNOWN || (typeof g === "number" && Number.isInteger(g) && g >= 1) ? [] : [{ property: "generation", reason: "generation must be a whole number of at least 1" }];
        return { inputs: news, failures };
    },

    async diff(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
        if (news.generation === UNKNOWN || olds.generation !== news.generation) {
            return { changes: true, replaces: ["generation"], deleteBeforeReplace: false };
        }
        return { changes: providerCodeChanged(olds, news), replaces: [], deleteBeforeReplace: false };
    },

    async create(inputs: Record<string, unknown>) {
        const outs: ClusterSecretOutputs = { generation: inputs.generation as number, value: newSecret() };
        return { id: `cluster-secret-${outs.generation}`, outs };
    },

    // Only new provider code arrives here (diff replaces for anything else): keep the secret.
    async update(_id: string, olds: Record<string, unknown>) {
        return { outs: keptOutputs(olds) };
    },

    async read(id: string, props: Record<string, unknown>) {
        return { id, props };
    },
};

export interface ClusterSecretArgs {
    /** Bump to rotate (nixspark:security.secretGeneration). */
    generation: pulumi.Input<number>;
}

export class ClusterSecret extends pulumi.dynamic.Resource {
    /** The secret; a Pulumi secret output. */
    declare readonly value: pulumi.Output<string>;
    declare readonly generation: pulumi.Output<number>;

    constructor(name: string, args: ClusterSecretArgs, opts?: pulumi.CustomResourceOptions) {
        super(providerRef("ClusterSecret", clusterSecretProvider), name, { ...args, value: undefined }, { ...opts, additionalSecretOutputs: ["value"] }, "nixspark", "ClusterSecret");
    }
}
