// nixspark:s3 and the S3 keys: what reaches Nix (and so the store), what
// reaches the nodes only with the cluster secret, what the config check
// refuses and how it says the fix, and that a new key redeploys every node.
// (tests/integration/s3Contract.test.ts runs a job with them.)
import { checkConfig, parseConfig } from "../../cluster/config";
import { s3SecretSettings, s3SparkSettings } from "../../cluster/configSchema";
import { nixStackParams, renderNixStackParams } from "../../cluster/nixParams";
import { buildTopology } from "../../cluster/topology";
import { secretProperties } from "../../providers/clusterSecret";
import { deploymentDiff } from "../../providers/deployment/diff";

const KEY_ID = "AKIAEXAMPLEKEYID0001";
const SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIContractContractContractContractContract00 contract";
const S3 = { s3: { endpoint: "http://10.77.0.1:9000", pathStyleAccess: true, region: "eu-west-1" }, s3AccessKeyId: KEY_ID, s3SecretAccessKey: SECRET };
const problems = (raw: Record<string, unknown>, isSecret?: (k: string) => boolean) => checkConfig(raw, isSecret ? { isSecret } : {}).problems;

test("by default nothing of S3 is set: Hadoop's own defaults, no keys", () => {
    const c = parseConfig({});
    expect(c.s3).toEqual({});
    expect(s3SparkSettings(c)).toEqual({});
    expect(s3SecretSettings(c)).toEqual({});
    // Pulumi.yaml's default for the keys, "" (Pulumi needs one), is no key, and no plain-text secret either.
    const empty = { s3AccessKeyId: "", s3SecretAccessKey: "" };
    expect(problems(empty, () => false)).toEqual([]);
    expect(s3SecretSettings(parseConfig(empty))).toEqual({});
    expect(s3SparkSettings(parseConfig(empty))).toEqual({});
});

test("endpoint, path style and region go to Nix's Spark settings; the keys do not", () => {
    const c = parseConfig({ ...S3, ssh: { publicKey: PUBLIC_KEY } });
    expect(s3SparkSettings(c)).toEqual({
        "spark.hadoop.fs.s3a.endpoint": "http://10.77.0.1:9000",
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.endpoint.region": "eu-west-1",
        "spark.hadoop.fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
    });
    const params = nixStackParams(c, buildTopology("dev", c));
    expect(params.sparkSettings).toMatchObject(s3SparkSettings(c));
    const text = renderNixStackParams(params);
    expect(text).not.toContain(SECRET);
    expect(text).not.toContain(KEY_ID);
    expect(s3SecretSettings(c)).toEqual({ "spark.hadoop.fs.s3a.access.key": KEY_ID, "spark.hadoop.fs.s3a.secret.key": SECRET });
});

test.each([
    ["one key without the other", { s3AccessKeyId: KEY_ID }, /^nixspark:s3SecretAccessKey: required with nixspark:s3AccessKeyId: .*pulumi config set --secret nixspark:s3SecretAccessKey VALUE$/],
    [
        "keys without authentication (no cluster secret to travel with)",
        { ...S3, security: { authenticate: false }, health: { enabled: false } },
        /^nixspark:s3AccessKeyId: .*need nixspark:security\.authenticate .*pulumi config set --path security\.authenticate true$/,
    ],
    [
        "a key in plain Spark settings",
        { spark: { settings: { "spark.hadoop.fs.s3a.secret.key": SECRET } } },
        /^nixspark:spark\.settings\.spark\.hadoop\.fs\.s3a\.secret\.key: .*plain text.*pulumi config rm --path 'spark\.settings\["spark\.hadoop\.fs\.s3a\.secret\.key"\]' && pulumi config set --secret nixspark:s3SecretAccessKey VALUE$/,
    ],
    ["an S3A setting in two places", { s3: { endpoint: "http://10.77.0.1:9000" }, spark: { settings: { "spark.hadoop.fs.s3a.endpoint": "http://x" } } }, /^nixspark:spark\.settings\.spark\.hadoop\.fs\.s3a\.endpoint: also set by nixspark:s3\.endpoint; keep it in one place$/],
    ["an endpoint that is not a URL", { s3: { endpoint: "10.77.0.1:9000" } }, /^nixspark:s3\.endpoint: expected an http:\/\/ or https:\/\/ URL/],
    ["a key of two lines", { s3AccessKeyId: "a\nb", s3SecretAccessKey: SECRET }, /^nixspark:s3AccessKeyId: expected a one-line value/],
])("refused: %s", (_what, raw, message) => {
    const found = problems(raw, () => true);
    expect(found).toEqual([expect.stringMatching(message)]);
    for (const p of found) expect(p).not.toContain(SECRET);
});

test("keys set in plain text (not with --secret) are refused with the commands that make them secrets, never their values", () => {
    const plain = problems(S3, () => false);
    expect(plain).toEqual([
        "nixspark:s3AccessKeyId: set in plain text, so Pulumi keeps it unencrypted in the stack file; set it as a secret (and rotate the key if the file was shared): pulumi config rm nixspark:s3AccessKeyId && pulumi config set --secret nixspark:s3AccessKeyId VALUE",
        "nixspark:s3SecretAccessKey: set in plain text, so Pulumi keeps it unencrypted in the stack file; set it as a secret (and rotate the key if the file was shared): pulumi config rm nixspark:s3SecretAccessKey && pulumi config set --secret nixspark:s3SecretAccessKey VALUE",
    ]);
    expect(problems(S3, (k) => k === "s3AccessKeyId" || k === "s3SecretAccessKey")).toEqual([]);
});

test("a new key is new secret properties: every node's deployment changes (and restarts Spark), without naming the key", () => {
    const props = (secret: string) => secretProperties("cluster-secret", s3SecretSettings(parseConfig({ ...S3, s3SecretAccessKey: secret })));
    const before = props(SECRET);
    expect(before).toBe(`spark.authenticate.secret cluster-secret\nspark.hadoop.fs.s3a.access.key ${KEY_ID}\nspark.hadoop.fs.s3a.secret.key ${SECRET}\n`);
    const after = props("a-rotated-secret-key");
    const d = deploymentDiff({ expectedSystem: "/nix/store/s", secretProperties: before }, { expectedSystem: "/nix/store/s", secretProperties: after });
    expect(d).toMatchObject({ changes: true, replaces: [], reasons: ["the secret Spark properties changed"] });
    expect(JSON.stringify(d)).not.toContain("rotated");
    expect(deploymentDiff({ expectedSystem: "/nix/store/s", secretProperties: before }, { expectedSystem: "/nix/store/s", secretProperties: props(SECRET) }).changes).toBe(false);
});
