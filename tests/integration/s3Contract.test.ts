// S3 (issue 17, must-show 4), executed: a job reads and writes s3a:// data on
// an S3-compatible server on loopback with keys from the stack's secret
// settings, and the keys show up nowhere but the node's root-only files.
//
//   moto's S3 server (scripts/install-s3-test) on 127.0.0.1, behind a small
//   loopback proxy of the test's that checks every request's AWS Signature
//   V4 against the stack's keys and refuses any other with 403 (moto's own
//   check, INITIAL_NO_AUTH_ACTION_COUNT, refuses the Java SDK v1's valid
//   signatures), so the job works only with the keys the stack delivered;
//   -> the keys go into a real Pulumi stack with `pulumi config set --secret`,
//      and the program's own config check reads them back from the CLI;
//   -> the node's nixspark-spark-conf unit, from the real evaluation of the
//      master role (stand-in nixpkgs), assembles spark-defaults.conf from the
//      properties file the program writes (secretProperties);
//   -> a real PySpark driver (Spark local, one short job: the wall-time
//      budget) runs with that configuration (the node's classpath entries
//      swapped for the test Spark's own connector jars: pyspark 3.5.7 is
//      Hadoop 3.3.4);
//   -> the keys are in no output, log line, event log, stack file or store path.
import type { ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { checkConfig, rawFromPulumiConfig } from "../../cluster/config";
import { s3SecretSettings } from "../../cluster/configSchema";
import { buildTopology } from "../../cluster/topology";
import { nixStackParams } from "../../cluster/nixParams";
import { clusterSecretProvider, secretProperties, SECRET_FILE } from "../../providers/clusterSecret";
import { run } from "../../providers/run";
import { evalUnit, removeContractDirs, ScratchRoot, stackFlake } from "../helpers/nixContract";
import { installPulumi, PulumiCli } from "../helpers/pulumiCli";
import { ensureSpark, findJavaHome, freePort, REPO } from "../helpers/sparkLocal";

jest.setTimeout(420_000);

const STACK = "s3contract";
const CONF_DIR = "/run/nixspark/spark-conf";
const BUCKET = "nixspark-data";
const work = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-s3-"));

let s3dir: string;
let moto: ChildProcess | undefined;
let proxy: SigningProxy;
/** The S3 endpoint of the stack (the checking proxy). */
let endpoint: string;
let keys: { id: string; secret: string };
let cli: PulumiCli;
let pulumiConfigText: string;
let root: ScratchRoot;
let unit: ReturnType<typeof evalUnit>;
let flake: string;
let clusterSecret: string;

/** The moto venv's python with a script of ours; the keys reach it in its environment, never its argv. */
async function py(script: string, args: string[], env: Record<string, string> = {}) {
    const file = path.join(work, "script.py");
    fs.writeFileSync(file, script);
    return run([path.join(s3dir, "venv/bin/python"), file, ...args], { timeoutMs: 120_000, env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env } });
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const up = await new Promise<boolean>((r) => {
            const s = net.connect(port, "127.0.0.1", () => (s.destroy(), r(true)));
            s.on("error", () => r(false));
        });
        if (up) return;
        if (Date.now() > deadline) throw new Error(`moto_server did not listen on 127.0.0.1:${port} within ${timeoutMs} ms: ${fs.readFileSync(path.join(work, "moto.log"), "utf8").slice(-2000)}`);
        await new Promise((r) => setTimeout(r, 200));
    }
}

beforeAll(async () => {
    const installed = await run(["bash", path.join(REPO, "scripts/install-s3-test")], { timeoutMs: 900_000 });
    s3dir = installed.stdout.trim();
    await installPulumi();

    // The S3 server, and the checking proxy the job talks to.
    const { spawn } = require("node:child_process") as typeof import("node:child_process");
    const crypto = require("node:crypto") as typeof import("node:crypto");
    const motoPort = await freePort();
    const log = fs.openSync(path.join(work, "moto.log"), "a");
    moto = spawn(path.join(s3dir, "venv/bin/moto_server"), ["-H", "127.0.0.1", "-p", String(motoPort)], {
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
        detached: true,
        stdio: ["ignore", log, log],
    });
    fs.closeSync(log);
    await waitForPort(motoPort, 60_000);
    // Keys as AWS makes them: a 20-character id, a 40-character secret.
    keys = { id: `AKIA${crypto.randomBytes(8).toString("hex").toUpperCase()}`, secret: crypto.randomBytes(30).toString("base64").replace(/[+/]/g, "x") };
    proxy = await startSigningProxy(motoPort, keys);
    endpoint = proxy.endpoint;

    // The stack: S3 settings in plain config, the keys as Pulumi secrets
    // (read from stdin, so no process list shows them).
    const project = path.join(work, "project");
    fs.mkdirSync(project);
    fs.copyFileSync(path.join(REPO, "Pulumi.yaml"), path.join(project, "Pulumi.yaml"));
    cli = new PulumiCli({ cwd: project, stack: STACK, backendDir: path.join(work, "backend") });
    await cli.stackInit();
    cli.writeStackConfig({ s3: { endpoint, pathStyleAccess: true, region: "us-east-1" } });
    for (const [k, v] of [["s3AccessKeyId", keys.id], ["s3SecretAccessKey", keys.secret]]) {
        await run([cli.executable, "config", "set", "--secret", `nixspark:${k}`, "--stack", STACK, "--non-interactive"], { cwd: project, env: cli.env as Record<string, string>, input: v, timeoutMs: 60_000 });
    }
    pulumiConfigText = fs.readFileSync(path.join(project, `Pulumi.${STACK}.yaml`), "utf8");

    // What the program reads: Pulumi's config, decrypted, with which keys are secrets.
    const shown = JSON.parse((await cli.run(["config", "--show-secrets", "--json"], { timeoutMs: 60_000 })).stdout) as Record<string, { value: string; secret: boolean }>;
    const all: Record<string, string> = {};
    for (const [k, v] of Object.entries(shown)) all[k] = v.value;
    const raw = { ...rawFromPulumiConfig(all), workers: { count: 1 }, ssh: { publicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIContractContractContractContractContract00 contract" } };
    const checked = checkConfig(raw, { isSecret: (k) => shown[`nixspark:${k}`]?.secret ?? false });
    expect(checked.problems).toEqual([]);
    const cfg = checked.config;

    flake = stackFlake(nixStackParams(cfg, buildTopology(STACK, cfg)));
    unit = evalUnit(flake, `${STACK}-master`, "nixspark-spark-conf");
    clusterSecret = ((await clusterSecretProvider.create!({ generation: 1 })).outs as { value: string }).value;
    root = new ScratchRoot();
    root.withAccounts(["spark", "deploy"], { "spark-users": ["spark", "deploy"] });
    // The file the deployment writes (as SparkCluster composes it: the secret Spark settings, then the S3 keys).
    const file = root.at(SECRET_FILE);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, secretProperties(clusterSecret, { ...cfg.sparkSecrets, ...s3SecretSettings(cfg) }), { mode: 0o400 });
    const r = await root.runUnit(unit);
    expect(r.code).toBe(0);
}, 400_000);

afterAll(async () => {
    await proxy?.close();
    if (moto?.pid && moto.exitCode === null) {
        const gone = new Promise((r) => moto!.once("exit", r));
        process.kill(-moto.pid, "SIGTERM");
        await Promise.race([gone, new Promise((r) => setTimeout(r, 10_000).unref())]);
        if (moto.exitCode === null && moto.signalCode === null) process.kill(-moto.pid, "SIGKILL");
    }
    root?.remove();
    removeContractDirs();
    fs.rmSync(work, { recursive: true, force: true });
});

const assembled = () => fs.readFileSync(root.at(`${CONF_DIR}/spark-defaults.conf`), "utf8");

test("the keys are Pulumi secrets: the stack file holds them encrypted", () => {
    const stackFile = require("js-yaml").load(pulumiConfigText) as { config: Record<string, unknown> };
    for (const k of ["nixspark:s3AccessKeyId", "nixspark:s3SecretAccessKey"]) expect(stackFile.config[k]).toEqual({ secure: expect.stringMatching(/^v1:/) });
    expect(pulumiConfigText).not.toContain(keys.secret);
    expect(pulumiConfigText).not.toContain(keys.id);
});

test("the node's spark-defaults.conf: the connector of Spark's own Hadoop on both classpaths, the S3 settings, the keys from the secret file only", () => {
    const text = assembled();
    // nixos-24.11's Spark 3.5 runs on hadoop_3_4 (3.4.0), whose tools/lib has hadoop-aws and the AWS SDK v2 bundle.
    const cp = /^\/nix\/store\/[a-z0-9]{32}-hadoop-3\.4\.0\/share\/hadoop\/tools\/lib\/hadoop-aws-3\.4\.0\.jar:\/nix\/store\/[a-z0-9]{32}-hadoop-3\.4\.0\/share\/hadoop\/tools\/lib\/bundle-2\.23\.19\.jar$/;
    const line = (k: string) => text.split("\n").filter((l) => l.startsWith(`${k} `)).map((l) => l.slice(k.length + 1));
    expect(line("spark.driver.extraClassPath")).toEqual([expect.stringMatching(cp)]);
    expect(line("spark.executor.extraClassPath")).toEqual([expect.stringMatching(cp)]);
    expect(line("spark.hadoop.fs.s3a.endpoint")).toEqual([endpoint]);
    expect(line("spark.hadoop.fs.s3a.path.style.access")).toEqual(["true"]);
    expect(line("spark.hadoop.fs.s3a.endpoint.region")).toEqual(["us-east-1"]);
    expect(line("spark.hadoop.fs.s3a.aws.credentials.provider")).toEqual(["org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"]);
    expect(line("spark.hadoop.fs.s3a.access.key")).toEqual([keys.id]);
    expect(line("spark.hadoop.fs.s3a.secret.key")).toEqual([keys.secret]);
    const st = fs.statSync(root.at(`${CONF_DIR}/spark-defaults.conf`));
    expect({ mode: st.mode & 0o777, uid: st.uid, gid: st.gid }).toEqual({ mode: 0o440, uid: 0, gid: root.gid("spark-users") });
});

test("a PySpark job writes and reads s3a:// data with the stack's keys, which appear in no output, log, event log or store path", async () => {
    // This host's configuration: the node's, with the test Spark's connector
    // (the node's classpath names store paths) and event logs in a directory here.
    const jars = ["hadoop-aws-3.3.4.jar", "aws-java-sdk-bundle-1.12.262.jar"].map((j) => path.join(s3dir, "jars", j)).join(":");
    const events = path.join(work, "events");
    fs.mkdirSync(events);
    const conf = path.join(work, "conf");
    fs.mkdirSync(conf);
    const lines = assembled()
        .split("\n")
        .filter((l) => l.trim() && !/^spark\.(driver|executor)\.extraClassPath |^spark\.eventLog\./.test(l));
    fs.writeFileSync(
        path.join(conf, "spark-defaults.conf"),
        [...lines, `spark.driver.extraClassPath ${jars}`, `spark.executor.extraClassPath ${jars}`, "spark.eventLog.enabled true", `spark.eventLog.dir file:${events}`, "spark.logConf true", ""].join("\n"),
    );
    // Not the node's spark-env.sh: it names the node's Python and ip(8) by their store paths.
    fs.chmodSync(path.join(conf, "spark-defaults.conf"), 0o600);

    // The input, put there with the keys (the only ones the server takes).
    const awsEnv = { AWS_ACCESS_KEY_ID: keys.id, AWS_SECRET_ACCESS_KEY: keys.secret };
    await py(
        `import boto3, sys
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
s3.create_bucket(Bucket=sys.argv[2])
s3.put_object(Bucket=sys.argv[2], Key="in/people.csv", Body=b"name,age\\nada,36\\ngrace,45\\nalan,41\\n")
`,
        [endpoint, BUCKET],
        awsEnv,
    );

    const sparkHome = await ensureSpark();
    const job = path.join(work, "s3job.py");
    fs.writeFileSync(
        job,
        `import sys
from pyspark.sql import SparkSession
bucket = sys.argv[1]
spark = SparkSession.builder.appName("s3-contract").getOrCreate()
people = spark.read.csv(f"s3a://{bucket}/in/people.csv", header=True, schema="name STRING, age INT")
people.filter(people.age > 40).coalesce(1).write.mode("overwrite").parquet(f"s3a://{bucket}/out/over40")
back = sorted(r.name for r in spark.read.parquet(f"s3a://{bucket}/out/over40").collect())
print("s3-contract:", len(back), "rows over 40:", ",".join(back))
spark.stop()
`,
    );
    const scratch = path.join(work, "local");
    fs.mkdirSync(scratch);
    const env: Record<string, string> = {
        ...(process.env as Record<string, string>),
        SPARK_HOME: sparkHome,
        JAVA_HOME: await findJavaHome(),
        SPARK_LOCAL_IP: "127.0.0.1",
        SPARK_LOCAL_DIRS: scratch,
        SPARK_CONF_DIR: conf,
        PYSPARK_PYTHON: path.join(REPO, ".tools/spark-venv/bin/python"),
    };
    for (const k of Object.keys(env)) if (k.startsWith("AWS_")) delete env[k]; // the keys come from the configuration only
    const r = await run([path.join(sparkHome, "bin/spark-submit"), "--verbose", "--master", "local[1]", job, BUCKET], {
        cwd: work,
        env,
        timeoutMs: 240_000,
        allowFailure: true,
    });
    if (r.code !== 0) throw new Error(`the S3 job failed (exit ${r.code})\n${r.stdout}\n${r.stderr.slice(-4000)}`);
    expect(r.stdout).toContain("s3-contract: 2 rows over 40: alan,grace");

    // The output is on the server, written through S3A (its _SUCCESS marker).
    const listed = await py(
        `import boto3, sys
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
print("\\n".join(o["Key"] for o in s3.list_objects_v2(Bucket=sys.argv[2], Prefix="out/over40/").get("Contents", [])))
`,
        [endpoint, BUCKET],
        awsEnv,
    );
    expect(listed.stdout.split("\n")).toContain("out/over40/_SUCCESS");
    expect(listed.stdout).toMatch(/out\/over40\/part-.*\.parquet/);
    // Spark's own requests (S3A's client says "Hadoop 3.3.4" in its User-Agent) all carried the stack's signature.
    expect(proxy.refused).toEqual([]);
    const fromSpark = proxy.accepted.filter((a) => a.userAgent.includes("Hadoop"));
    expect(fromSpark.map((a) => a.method)).toEqual(expect.arrayContaining(["GET", "HEAD", "PUT"]));
    // And the proxy does refuse a request signed with another secret.
    const wrong = await py(
        `import boto3, botocore, sys
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
try:
    s3.list_objects_v2(Bucket=sys.argv[2]); print("listed")
except botocore.exceptions.ClientError as e:
    print("refused", e.response["Error"]["Code"])
`,
        [endpoint, BUCKET],
        { AWS_ACCESS_KEY_ID: keys.id, AWS_SECRET_ACCESS_KEY: `not-${keys.secret.slice(4)}` },
    );
    expect(wrong.stdout.trim()).toBe("refused SignatureDoesNotMatch");
    expect(proxy.refused).toEqual([expect.stringMatching(/^wrong signature: GET \/nixspark-data/)]);

    // Where the keys must not be: what the job printed (--verbose and
    // spark.logConf print the whole configuration), the event log and the
    // job's scratch, the stack's settings file for Nix and everything the
    // evaluation put in the store (the unit's derivations and all they
    // need), the scratch store.
    const eventLogs = fs.readdirSync(events).map((f) => path.join(events, f));
    expect(eventLogs.length).toBe(1);
    expect(fs.readFileSync(eventLogs[0], "utf8")).toContain('"spark.hadoop.fs.s3a.secret.key":"*********(redacted)"');
    const storePaths = (await run(["nix-store", "--query", "--requisites", ...unit.drvs], { timeoutMs: 120_000 })).stdout.split("\n").filter(Boolean);
    expect(storePaths.length).toBeGreaterThan(10);
    const places: [string, string][] = [
        ["spark-submit stdout", r.stdout],
        ["spark-submit stderr", r.stderr],
        ...[...eventLogs, ...filesUnder(scratch), ...filesUnder(flake), ...filesUnder(root.at("/nix/store")), ...storePaths.flatMap((p) => filesUnder(p))].map(
            (f): [string, string] => [f, readSmall(f)],
        ),
        ["pulumi config", (await cli.run(["config", "--json"], { timeoutMs: 60_000 })).stdout],
    ];
    expect(r.stderr).toMatch(/spark\.hadoop\.fs\.s3a\.secret\.key/); // the configuration was printed, redacted
    for (const secret of [keys.secret, keys.id, clusterSecret]) {
        expect(places.filter(([, text]) => text.includes(secret)).map(([where]) => where)).toEqual([]);
    }
});

/** Every regular file under a path (the path itself when it is a file). */
function filesUnder(p: string): string[] {
    let st: fs.Stats;
    try {
        st = fs.lstatSync(p);
    } catch {
        return [];
    }
    if (st.isFile()) return [p];
    if (!st.isDirectory()) return [];
    return fs.readdirSync(p).flatMap((e) => filesUnder(path.join(p, e)));
}

/** A file's text, up to 64 MiB (the store's large files are jars and images, not settings). */
function readSmall(f: string): string {
    try {
        return fs.statSync(f).size > 64 * 1024 * 1024 ? "" : fs.readFileSync(f, "latin1");
    } catch {
        return "";
    }
}

interface SigningProxy {
    endpoint: string;
    /** Requests whose signature was right, forwarded to moto. */
    accepted: { method: string; url: string; userAgent: string }[];
    /** Requests refused with 403, and why. */
    refused: string[];
    close(): Promise<void>;
}

/**
 * A loopback HTTP proxy in front of moto that forwards a request only when it
 * carries an AWS Signature Version 4 (Authorization header, as the S3 clients
 * here send it) made with these keys: the canonical request of the AWS
 * SigV4 documentation (method, path as sent, sorted query, the signed headers,
 * the x-amz-content-sha256 payload hash), signed with the key derived from
 * the secret, the date, the region and "s3".
 */
async function startSigningProxy(upstreamPort: number, keys: { id: string; secret: string }): Promise<SigningProxy> {
    const http = require("node:http") as typeof import("node:http");
    const crypto = require("node:crypto") as typeof import("node:crypto");
    const hmac = (key: import("node:crypto").BinaryLike, data: string) => crypto.createHmac("sha256", key).update(data).digest();
    const enc = (s: string) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
    const dec = (s: string) => decodeURIComponent(s.replace(/\+/g, "%20"));
    const accepted: SigningProxy["accepted"] = [];
    const refused: string[] = [];

    const problem = (req: import("node:http").IncomingMessage): string | undefined => {
        const m = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/s3\/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$/.exec(req.headers.authorization ?? "");
        if (!m) return `not signed with SigV4: ${req.method} ${req.url}`;
        const [, id, date, region, signedHeaders, signature] = m;
        if (id !== keys.id) return `signed with another access key id: ${req.method} ${req.url}`;
        const [pathPart, query = ""] = (req.url ?? "/").split("?");
        const canonicalQuery = query
            .split("&")
            .filter(Boolean)
            .map((p) => {
                const i = p.indexOf("=");
                return [enc(dec(i < 0 ? p : p.slice(0, i))), enc(dec(i < 0 ? "" : p.slice(i + 1)))];
            })
            .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0))
            .map(([k, v]) => `${k}=${v}`)
            .join("&");
        const header = (h: string) => {
            const v = req.headers[h];
            return (Array.isArray(v) ? v.join(",") : (v ?? "")).trim().replace(/\s+/g, " ");
        };
        const canonicalHeaders = signedHeaders.split(";").map((h) => `${h}:${header(h)}\n`).join("");
        const canonicalRequest = [req.method, pathPart, canonicalQuery, canonicalHeaders, signedHeaders, header("x-amz-content-sha256")].join("\n");
        const scope = `${date}/${region}/s3/aws4_request`;
        const toSign = ["AWS4-HMAC-SHA256", header("x-amz-date"), scope, crypto.createHash("sha256").update(canonicalRequest).digest("hex")].join("\n");
        const key = hmac(hmac(hmac(hmac(`AWS4${keys.secret}`, date), region), "s3"), "aws4_request");
        if (hmac(key, toSign).toString("hex") !== signature) return `wrong signature: ${req.method} ${req.url}`;
        return undefined;
    };

    const server = http.createServer((req, res) => {
        const why = problem(req);
        if (why) {
            refused.push(why);
            req.resume();
            res.writeHead(403, { "content-type": "application/xml" });
            res.end("<Error><Code>SignatureDoesNotMatch</Code><Message>refused by the test's proxy</Message></Error>");
            return;
        }
        accepted.push({ method: req.method ?? "", url: req.url ?? "", userAgent: String(req.headers["user-agent"] ?? "") });
        const up = http.request({ host: "127.0.0.1", port: upstreamPort, method: req.method, path: req.url, headers: req.headers, agent: false }, (r) => {
            res.writeHead(r.statusCode ?? 502, r.headers);
            r.pipe(res);
        });
        up.on("error", (e) => {
            res.writeHead(502);
            res.end(String(e));
        });
        req.pipe(up);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as import("node:net").AddressInfo).port;
    return {
        endpoint: `http://127.0.0.1:${port}`,
        accepted,
        refused,
        close: () => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))),
    };
}
