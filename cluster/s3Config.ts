// S3-compatible storage, for s3a:// paths (docs/operations.md, "S3"):
// nixspark:s3, s3AccessKeyId and s3SecretAccessKey, a section of
// cluster/configSchema.ts.
// The endpoint, path-style access and region reach every node's
// spark-defaults.conf through Nix (s3SparkSettings, cluster/nixParams.ts);
// the two keys are Pulumi secrets (`pulumi config set --secret
// nixspark:s3SecretAccessKey ...`, refused in plain text by
// plainSecretProblems, cluster/configKeys.ts) and reach the nodes with
// the cluster secret (s3SecretSettings), never the store.
import { z } from "zod";
import { bool, oneLine, str } from "./configPrimitives";
import type { AddIssue, configObject, Section } from "./configSchema";

export const s3Schema = z
    .object({
        endpoint: str("the S3 endpoint URL, such as http://10.77.0.1:9000")
            .regex(/^https?:\/\/[^\s/]+(\/\S*)?$/, "expected an http:// or https:// URL such as http://10.77.0.1:9000")
            .optional(),
        pathStyleAccess: bool("whether buckets are addressed by path (http://host/bucket, as most S3-compatible servers want) rather than by host name").optional(),
        region: str("an S3 region such as us-east-1").regex(/^[A-Za-z0-9-]+$/, "expected a region name such as us-east-1").optional(),
    })
    .strict()
    .default({});

/**
 * One of the two keys: a Pulumi secret, set or not. "" is not set: it is the
 * key's default in Pulumi.yaml, which must declare one (Pulumi refuses a
 * stack that sets no value for a declared key without a default).
 */
export const s3KeySchema = (what: string) => z.preprocess((v) => (v === "" ? undefined : v), oneLine(str(what)).optional());

/** The Hadoop S3A properties nixspark:s3 sets, as Spark settings (spark.hadoop.* reach Hadoop's configuration). */
export const S3_SETTINGS = {
    endpoint: "spark.hadoop.fs.s3a.endpoint",
    pathStyleAccess: "spark.hadoop.fs.s3a.path.style.access",
    region: "spark.hadoop.fs.s3a.endpoint.region",
    credentialsProvider: "spark.hadoop.fs.s3a.aws.credentials.provider",
} as const;
/** The secret ones: delivered with the cluster secret (providers/clusterSecret.ts), never in the store. */
export const S3_SECRET_SETTINGS = { accessKeyId: "spark.hadoop.fs.s3a.access.key", secretAccessKey: "spark.hadoop.fs.s3a.secret.key" } as const;
const S3_SECRET_KEYS = { accessKeyId: "s3AccessKeyId", secretAccessKey: "s3SecretAccessKey" } as const;

/**
 * The non-secret S3A settings for spark-defaults.conf (through Nix). With
 * keys configured, S3A takes them and only them (SimpleAWSCredentialsProvider):
 * a wrong key then fails with its own error instead of S3A going on to ask
 * the cloud's instance metadata service.
 */
export function s3SparkSettings(c: Pick<z.infer<typeof configObject>, "s3" | "s3AccessKeyId">): Record<string, string> {
    const out: Record<string, string> = {};
    if (c.s3.endpoint !== undefined) out[S3_SETTINGS.endpoint] = c.s3.endpoint;
    if (c.s3.pathStyleAccess !== undefined) out[S3_SETTINGS.pathStyleAccess] = String(c.s3.pathStyleAccess);
    if (c.s3.region !== undefined) out[S3_SETTINGS.region] = c.s3.region;
    if (c.s3AccessKeyId !== undefined) out[S3_SETTINGS.credentialsProvider] = "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider";
    return out;
}

/** The secret S3A settings, for the properties file the nodes get with the cluster secret (secretProperties). */
export function s3SecretSettings(c: Pick<z.infer<typeof configObject>, "s3AccessKeyId" | "s3SecretAccessKey">): Record<string, string> {
    if (c.s3AccessKeyId === undefined || c.s3SecretAccessKey === undefined) return {};
    return { [S3_SECRET_SETTINGS.accessKeyId]: c.s3AccessKeyId, [S3_SECRET_SETTINGS.secretAccessKey]: c.s3SecretAccessKey };
}

export function s3CrossChecks(): { needs: Section[]; check: (c: z.infer<typeof configObject>, add: AddIssue) => void }[] {
    const setSecret = (k: string) => `pulumi config set --secret nixspark:${k} VALUE`;
    return [
        {
            needs: ["s3AccessKeyId", "s3SecretAccessKey"],
            check: (c, add) => {
                if ((c.s3AccessKeyId === undefined) === (c.s3SecretAccessKey === undefined)) return;
                const missing = c.s3AccessKeyId === undefined ? S3_SECRET_KEYS.accessKeyId : S3_SECRET_KEYS.secretAccessKey;
                add([missing], `required with nixspark:${missing === S3_SECRET_KEYS.accessKeyId ? S3_SECRET_KEYS.secretAccessKey : S3_SECRET_KEYS.accessKeyId}: S3 takes the two keys together; ${setSecret(missing)}`);
            },
        },
        {
            needs: ["s3AccessKeyId", "security"],
            check: (c, add) => {
                if (c.s3AccessKeyId === undefined || c.security.authenticate) return;
                add(
                    [S3_SECRET_KEYS.accessKeyId],
                    "the S3 keys reach the nodes with the cluster secret, outside the Nix store: they need nixspark:security.authenticate (on by default): pulumi config set --path security.authenticate true",
                );
            },
        },
        {
            // One place for each S3A setting; and never a key in plain Spark settings.
            needs: ["spark", "sparkSecrets", "s3", "s3AccessKeyId"],
            check: (c, add) => {
                const ours = s3SparkSettings(c);
                for (const [field, name] of Object.entries(S3_SETTINGS)) {
                    if (!(name in ours)) continue;
                    const where = field === "credentialsProvider" ? "nixspark:s3AccessKeyId (which sets it)" : `nixspark:s3.${field}`;
                    if (name in c.spark.settings) add(["spark", "settings", name], `also set by ${where}; keep it in one place`);
                    if (name in c.sparkSecrets) add(["sparkSecrets", name], `also set by ${where}; keep it in one place`);
                }
                for (const [field, name] of Object.entries(S3_SECRET_SETTINGS) as [keyof typeof S3_SECRET_KEYS, string][]) {
                    const key = S3_SECRET_KEYS[field];
                    if (name in c.spark.settings) {
                        add(
                            ["spark", "settings", name],
                            `an S3 key in plain Spark settings goes to the Pulumi stack file and the Nix store in plain text; move it to the secret nixspark:${key} (and rotate the key, it has been stored in plain text): ` +
                                `pulumi config rm --path 'spark.settings["${name}"]' && ${setSecret(key)}`,
                        );
                    }
                    if (name in c.sparkSecrets && c[key] !== undefined) add(["sparkSecrets", name], `also set by nixspark:${key}; keep it in one place`);
                }
            },
        },
    ];
}
