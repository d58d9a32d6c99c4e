// One real Spark standalone cluster on loopback, with authentication and RPC
// encryption as the nodes run them, serves three stories (one cluster start
// for all, and the refused drivers' fixed wait overlaps the other jobs):
//
// 1. The contract between ClusterSecret and the node's nixspark-spark-conf
//    unit, up to the daemons (secretContract.test.ts runs the unit alone and
//    checks its files): the unit's ExecStart, from the real evaluation of
//    the master role (against the stand-in nixpkgs), runs in a scratch root
//    on the file the program writes (secretProperties of the stack's secret
//    output), and the master and both workers start from the configuration
//    directory it assembled, as it is.
// 2. Spark authentication (nix/lib/params.nix with security.authenticate,
//    nix/modules/spark.nix): the smoke job, submitted with the stack's
//    secret, runs on both workers; drivers with another secret, with none,
//    and with the doubly wrapped string ("spark.authenticate.secret <S>",
//    what the unit used to make of it) are refused by the master: no
//    application registers, spark-submit fails.
// 3. `nixspark submit` and `nixspark status`'s application list, run as a
//    user runs them (node cli/nixspark.js) against that cluster (issue 17,
//    must-show 1), with event logs on, as the nodes have them:
// - three "nodes" (tests/helpers/loopbackNodes.ts): real sshds on the
//   cluster's loopback addresses (tests/helpers/sparkLocal.ts: master
//   127.0.0.1, workers 127.0.0.2 and 127.0.0.3), each in its own mount
//   namespace holding what a NixOS node has where the CLI looks:
//   spark-submit at the system profile path (scripts/smoke.ts
//   NODE_SPARK_SUBMIT; here a wrapper around the test Spark's),
//   SPARK_CONF_DIR in the login environment naming the nodes' configuration
//   (the cluster's security settings with the secret, a spark-env.sh that
//   sets SPARK_LOCAL_IP to the node's address unless it is set, as
//   nix/modules/spark.nix's does, and the driver's secret argument file the
//   unit wrote), and on the workers the worker's work directory at
//   /var/lib/spark (NixOS's services.spark.worker.workDir default,
//   cli/drivers.ts);
// - a Spark History Server from the same Spark reading the event logs, with
//   the master role's settings (nix/modules/master.nix spark-history).
// The stack outputs come from --outputs (cli.test.ts proves reading them
// from a real stack).
//
// Limits of the stand-in: the nodes share this machine's /tmp and the data
// directory, so the test does not prove that a cluster-mode jar is copied
// to each worker (the CLI copies it to every node; scp's target there is the
// same directory). A spark-submit run without SPARK_LOCAL_IP (cluster mode)
// binds its short-lived client's listening socket to an address of this
// machine that Spark picks; nothing connects to it.
// Everything started here is stopped by PID/process group in afterAll.
import { ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseConfig } from "../../cluster/config";
import { buildTopology } from "../../cluster/topology";
import { nixStackParams } from "../../cluster/nixParams";
import { clusterSecretProvider, secretProperties, SECRET_FILE } from "../../providers/clusterSecret";
import { run, RunResult } from "../../providers/run";
import { LoopbackNodes } from "../helpers/loopbackNodes";
import { evalUnit, removeContractDirs, ScratchRoot, stackFlake } from "../helpers/nixContract";
import { ensureSpark, findJavaHome, freePort, livingInGroup, LocalSpark, REPO, startLocalSpark } from "../helpers/sparkLocal";
import { NODE_SPARK_SUBMIT } from "../../scripts/smoke";
import { NODE_SPARK_WORK_DIR } from "../../cli/drivers";
import { walkthroughBlock } from "../helpers/readmeBlocks";

jest.setTimeout(10 * 60_000);

const NIXSPARK = path.join(REPO, "cli", "nixspark.js");
const STACK = "contract";
const CONF_DIR = "/run/nixspark/spark-conf";

let root: string;
/** The node's root for the nixspark-spark-conf unit: the secret file, and the directory the unit assembles. */
let scratch: ScratchRoot;
/** The stack's secret output, as the provider makes it. */
let secret: string;
let spark: LocalSpark | undefined;
let nodes: LoopbackNodes | undefined;
let history: ChildProcess | undefined;
let historyPort = 0;
let outputsFile: string;
let dataDir: string;
let jar: string;
let eventLogs: string;
/** The smoke job's applications the master had before any driver ran. */
let smokeAppsBefore: { active: number; completed: number };
/** The smoke drivers, started as soon as the cluster is up: the refused ones spend a minute in Spark's registration retries (3 x 20 s), the other jobs meanwhile. */
let accepted: Promise<RunResult>;
let refused: Promise<RunResult[]>;
/** The jobs (the PySpark pair, then the JVM pair once the accepted smoke job has given its cores back: at once they only compete for the machine's two cores); each test awaits its own. */
let pyRuns: Promise<RunResult[]>;
let jvmRuns: ReturnType<typeof startJvm>;
/** The README walkthrough, once the JVM pair is done (while the refused drivers still wait). */
let walkthroughRun: Promise<RunResult>;
/** What /data points to while the walkthrough runs (claimDataLink). */
let dataLink: string | undefined;

beforeAll(async () => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), "nxsubmit-"));
    fs.chmodSync(root, 0o755);
    eventLogs = path.join(root, "event-logs");
    dataDir = path.join(root, "data");
    fs.mkdirSync(eventLogs);
    fs.mkdirSync(dataDir);
    // The jar builds while the unit runs and Spark starts.
    const sparkHome = await ensureSpark();
    const built = buildJar(sparkHome, await findJavaHome());
    built.catch(() => undefined); // awaited below; this only keeps a failed build from being unhandled meanwhile

    // The master node's configuration directory, assembled by its own unit from the program's secret file.
    const cfg = parseConfig({ workers: { count: 2 }, ssh: { publicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIContractContractContractContractContract00 contract" } });
    expect(cfg.security.authenticate).toBe(true);
    const unit = evalUnit(stackFlake(nixStackParams(cfg, buildTopology(STACK, cfg))), `${STACK}-master`, "nixspark-spark-conf");
    secret = ((await clusterSecretProvider.create!({ generation: 1 })).outs as { value: string }).value;
    scratch = new ScratchRoot();
    scratch.withAccounts(["spark", "deploy"], { "spark-users": ["spark", "deploy"] });
    fs.mkdirSync(path.dirname(scratch.at(SECRET_FILE)), { recursive: true });
    fs.writeFileSync(scratch.at(SECRET_FILE), secretProperties(secret), { mode: 0o400 }); // as the deployment installs it
    await scratch.runUnit(unit);
    expect(fs.existsSync(scratch.at(`${CONF_DIR}/spark-defaults.conf`))).toBe(true);

    spark = await startLocalSpark({
        workers: 2,
        // A cluster-mode driver takes a core and memory of its worker; executors need the rest.
        coresPerWorker: 2,
        memoryPerWorker: "1g",
        confDir: scratch.at(CONF_DIR),
    });
    const s = spark;
    smokeAppsBefore = await smokeApps();
    const wrong = authConf("wrong-secret", { "spark.authenticate": "true", "spark.authenticate.secret": "not-the-cluster-secret", "spark.network.crypto.enabled": "true" });
    const none = authConf("no-auth", { "spark.authenticate": "false" });
    accepted = smoke({ ...s.env, SPARK_CONF_DIR: driverConf("stack-secret", secret) });
    refused = Promise.all([smoke({ ...s.env, SPARK_CONF_DIR: wrong }), smoke({ ...s.env, SPARK_CONF_DIR: none }), smoke({ ...s.env, SPARK_CONF_DIR: driverConf("wrapped", `spark.authenticate.secret ${secret}`) })]);
    for (const p of [accepted, refused]) p.catch(() => undefined); // awaited by the tests; this keeps a rejection from being unhandled meanwhile
    jar = await built;

    // The nodes' configuration directory (SPARK_CONF_DIR in their login environment, as on NixOS; one path on
    // every node): the cluster's security settings with the secret and event logs into this test's directory,
    // spark-env.sh as nix/modules/spark.nix writes it (the node's address for SPARK_LOCAL_IP unless set; here
    // the wrapper says which node it is) and the driver's java argument file the unit wrote.
    const conf = path.join(root, "node-conf");
    fs.mkdirSync(conf);
    fs.writeFileSync(
        path.join(conf, "spark-defaults.conf"),
        ["spark.authenticate true", `spark.authenticate.secret ${secret}`, "spark.network.crypto.enabled true", "spark.eventLog.enabled true", `spark.eventLog.dir file:${eventLogs}`, ""].join("\n"),
    );
    fs.writeFileSync(
        path.join(conf, "spark-env.sh"),
        [`export PYSPARK_PYTHON=${s.python}`, `export PYSPARK_DRIVER_PYTHON=${s.python}`, 'if [ -z "${SPARK_LOCAL_IP:-}" ]; then', '  export SPARK_LOCAL_IP="$NXTEST_NODE_IP"', "fi", ""].join("\n"),
    );
    fs.copyFileSync(scratch.at(`${CONF_DIR}/driver-secret.args`), path.join(conf, "driver-secret.args"));
    expect(fs.readFileSync(path.join(conf, "driver-secret.args"), "utf8")).toBe(`-Dspark.authenticate.secret=${secret}\n`);

    // The nodes: the master's address is the Spark master's, each worker's its Spark worker's.
    const specs = [{ name: "master", ip: "127.0.0.1" }, ...s.workers.map((w) => ({ name: w.name, ip: w.ip }))];
    nodes = await LoopbackNodes.create(specs, { env: { SPARK_CONF_DIR: conf } });
    for (const n of specs) {
        const wrapper = ["#!/bin/sh", `export JAVA_HOME=${s.javaHome} SPARK_HOME=${s.sparkHome} NXTEST_NODE_IP=${n.ip}`, `exec ${s.sparkHome}/bin/spark-submit "$@"`, ""].join("\n");
        const worker = s.workers.find((w) => w.name === n.name);
        await nodes.provide(n.name, {
            run: { [NODE_SPARK_SUBMIT]: { content: wrapper, mode: 0o755 } },
            binds: worker ? { [NODE_SPARK_WORK_DIR]: path.join(s.dir, worker.name) } : {},
        });
    }

    // The history server from the same Spark, with the role's settings (a free port, and a 2 s scan instead of 10 s).
    historyPort = await freePort();
    const log = fs.openSync(path.join(root, "history.log"), "a");
    history = spawn(path.join(s.sparkHome, "bin/spark-class"), ["org.apache.spark.deploy.history.HistoryServer"], {
        env: {
            ...process.env,
            ...s.env,
            SPARK_DAEMON_MEMORY: "256m",
            SPARK_HISTORY_OPTS: `-Dspark.history.fs.logDirectory=file:${eventLogs} -Dspark.history.ui.port=${historyPort} -Dspark.history.fs.cleaner.enabled=true -Dspark.history.fs.update.interval=2s`,
        },
        detached: true,
        stdio: ["ignore", log, log],
    });
    fs.closeSync(log);

    outputsFile = path.join(root, "outputs.json");
    fs.writeFileSync(
        outputsFile,
        JSON.stringify({
            network: "submit-net",
            nodes: specs.map((n) => ({ name: n.name, role: n.name === "master" ? "master" : "worker", ip: n.ip })),
            masterAddress: "127.0.0.1",
            masterUrl: s.masterUrl,
            webUiUrl: s.webUiUrl,
            historyUrl: `http://127.0.0.1:${historyPort}`,
            ssh: { user: "root", port: nodes.port, identityFile: nodes.identityFile, knownHostsFile: nodes.knownHostsFile },
            security: { authenticate: true, ioEncryption: true, secretGeneration: 1 },
        }),
    );
    pyRuns = startPython();
    // The smoke job wants an executor on each worker: the JVM pair's drivers and executors could fill one of them.
    jvmRuns = Promise.allSettled([pyRuns, accepted]).then(() => startJvm());
    walkthroughRun = Promise.allSettled([jvmRuns]).then(() => startWalkthrough());
    for (const p of [pyRuns, jvmRuns, walkthroughRun]) p.catch(() => undefined); // awaited by their tests
}, 10 * 60_000);

afterAll(async () => {
    try {
        if (history?.pid !== undefined) {
            const pgid = history.pid;
            try {
                process.kill(-pgid, "SIGTERM");
            } catch {
                /* gone */
            }
            const deadline = Date.now() + 15_000;
            while (livingInGroup(pgid).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
            if (livingInGroup(pgid).length > 0) process.kill(-pgid, "SIGKILL");
        }
        await nodes?.cleanup();
        const pids = spark ? [spark.master.pid, ...spark.workers.map((w) => w.pid)] : [];
        await spark?.stop();
        for (const pid of pids) expect(livingInGroup(pid)).toEqual([]);
    } finally {
        releaseDataLink();
        if (root) fs.rmSync(root, { recursive: true, force: true });
        scratch?.remove();
        removeContractDirs();
    }
});

/** The smoke script as `npm run smoke` runs it, submitting from here against the loopback master. */
function smoke(env: Record<string, string>): Promise<RunResult> {
    return run(
        [process.execPath, "-r", "ts-node/register/transpile-only", path.join(REPO, "scripts/smoke.ts"), "--master", spark!.masterUrl, "--web-ui", spark!.webUiUrl, "--local-submit", "--timeout", "150"],
        { cwd: REPO, timeoutMs: 200_000, allowFailure: true, env: { ...(process.env as Record<string, string>), ...env } },
    );
}

/** The master's own account of the smoke job's applications (its /json/ page; scripts/jobs/sum_of_squares.py names them nixspark-smoke-sum-of-squares): every smoke driver's, and no other job's. */
async function smokeApps(): Promise<{ active: number; completed: number }> {
    const r = (await (await fetch(`${spark!.webUiUrl}/json/`)).json()) as { activeapps?: { name: string }[]; completedapps?: { name: string }[] };
    const count = (list?: { name: string }[]) => (list ?? []).filter((a) => a.name.startsWith("nixspark-smoke")).length;
    return { active: count(r.activeapps), completed: count(r.completedapps) };
}

/** A driver's configuration with these settings only (authentication settings other than the cluster's). */
function authConf(name: string, settings: Record<string, string>): string {
    const dir = path.join(spark!.dir, name);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, "spark-defaults.conf"), Object.entries(settings).map(([k, v]) => `${k} ${v}\n`).join(""));
    return dir;
}

/** A driver's configuration: the node's assembled one, with the secret the driver was given. */
function driverConf(name: string, givenSecret: string): string {
    const assembled = fs.readFileSync(scratch.at(`${CONF_DIR}/spark-defaults.conf`), "utf8");
    const dir = path.join(scratch.dir, "drivers", name);
    fs.mkdirSync(dir, { recursive: true });
    // Not the event-log settings: their directory is the node's, and this driver runs here (historyContract.test.ts runs them in a scratch root).
    const lines = assembled.split("\n").filter((l) => l.trim() && !l.startsWith("spark.authenticate.secret ") && !l.startsWith("spark.master ") && !l.startsWith("spark.eventLog."));
    fs.writeFileSync(path.join(dir, "spark-defaults.conf"), [...lines, `spark.authenticate.secret ${givenSecret}`, ""].join("\n"));
    return dir;
}

describe("the cluster's daemons run from the directory the node's unit assembled", () => {
    test("real Spark daemons started from the assembled directory accept a driver with the stack's secret: the smoke job runs on both workers", async () => {
        const defaults = fs.readFileSync(path.join(spark!.env.SPARK_CONF_DIR, "spark-defaults.conf"), "utf8");
        expect(spark!.env.SPARK_CONF_DIR).toBe(scratch.at(CONF_DIR));
        expect(defaults).toContain("spark.authenticate true");
        expect(defaults).toMatch(/^spark\.network\.crypto\.enabled true$/m);
        const ok = await accepted;
        if (ok.code !== 0) throw new Error(`the driver with the stack's secret was refused (exit ${ok.code})\n${ok.stdout}\n${ok.stderr.slice(-3000)}`);
        expect(ok.stdout).toMatch(/smoke: OK in \d+ s: sum of squares 1\.\.100000 = 333338333350000; 4 tasks on 2 workers/);
    });

    test("a driver with another secret, with no authentication, or with the wrapped string is refused: no application registers, spark-submit fails", async () => {
        const ok = await accepted;
        for (const r of await refused) {
            expect(r.code).not.toBe(0);
            expect(r.stdout).not.toMatch(/smoke: OK/);
            expect(r.stderr).toMatch(/All masters are unresponsive|Spark context stopped while waiting for backend/);
        }
        // The master registered the accepted smoke job alone (once the refused drivers gave up, none of them is active).
        const after = await smokeApps();
        expect(after.active).toBe(0);
        expect(after.completed).toBe(smokeAppsBefore.completed + (ok.code === 0 ? 1 : 0));
        expect(ok.code).toBe(0);
    });
});

/** A small JVM job, built with the installed JDK against the test Spark's jars. */
async function buildJar(sparkHome: string, javaHome: string): Promise<string> {
    const src = path.join(root, "jvm", "Squares.java");
    fs.mkdirSync(path.dirname(src));
    fs.writeFileSync(
        src,
        [
            "import java.util.Arrays;",
            "import org.apache.spark.SparkConf;",
            "import org.apache.spark.api.java.JavaSparkContext;",
            "public class Squares {",
            "  public static void main(String[] args) {",
            "    JavaSparkContext sc = new JavaSparkContext(new SparkConf());",
            "    long sum = sc.parallelize(Arrays.asList(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 2).map(x -> (long) x * x).reduce((a, b) -> a + b);",
            '    System.out.println("sum of squares 1..10 = " + sum);',
            '    System.out.println("driver host " + sc.getConf().get("spark.driver.host"));',
            "    sc.stop();",
            '    if (args.length > 0 && args[0].equals("fail")) throw new IllegalStateException("the job fails on purpose");',
            "  }",
            "}",
            "",
        ].join("\n"),
    );
    const javac = path.join(javaHome, "bin/javac");
    await run([javac, "-cp", `${sparkHome}/jars/*`, "-d", path.dirname(src), src], { timeoutMs: 180_000 });
    const out = path.join(root, "squares.jar");
    await run([path.join(javaHome, "bin/jar"), "cf", out, "-C", path.dirname(src), "Squares.class"], { timeoutMs: 60_000 });

    return out;
}

function nixspark(args: string[]): Promise<RunResult> {
    return run(["node", NIXSPARK, "--outputs", outputsFile, ...args], { cwd: root, timeoutMs: 400_000, allowFailure: true });
}

function explain(r: RunResult): string {
    return `exit ${r.code}\n--- stdout\n${r.stdout.slice(-3000)}\n--- stderr\n${r.stderr.slice(-6000)}`;
}

const appIdOf = (r: RunResult) => /submit: application (app-\d+-\d+)/.exec(r.stderr)?.[1];

/** Every file under `dir` whose content contains `needle`. */
function filesContaining(dir: string, needle: string): string[] {
    const hits: string[] = [];
    const walk = (d: string) => {
        for (const e of fs.readdirSync(d, { withFileTypes: true })) {
            const p = path.join(d, e.name);
            if (e.isDirectory()) walk(p);
            else if (e.isFile() && fs.readFileSync(p).includes(needle)) hits.push(p);
        }
    };
    walk(dir);
    return hits;
}

/** Command lines of all processes that contain `needle`, and whether a cluster-mode driver was seen. */
function scanProcesses(needle: string, seen: { driver: boolean; leaks: string[] }): void {
    for (const entry of fs.readdirSync("/proc")) {
        if (!/^\d+$/.test(entry)) continue;
        let cmdline: string;
        try {
            cmdline = fs.readFileSync(`/proc/${entry}/cmdline`, "utf8").replace(/\0/g, " ");
        } catch {
            continue;
        }
        if (cmdline.includes("org.apache.spark.deploy.worker.DriverWrapper")) seen.driver = true;
        if (cmdline.includes(needle)) seen.leaks.push(`${entry}: ${cmdline.slice(0, 300)}`);
    }
}

/** The PySpark jobs: one reads a CSV from the data directory and writes its result, one fails. */
function startPython(): Promise<RunResult[]> {
    fs.writeFileSync(path.join(dataDir, "sales.csv"), "region,amount\nnorth,3\nsouth,4\nnorth,5\nwest,1\nsouth,6\n");
    const job = path.join(root, "sales_by_region.py");
    fs.writeFileSync(
        job,
        [
            "import sys",
            "from pyspark.sql import SparkSession, functions as F",
            "data = sys.argv[1]",
            'spark = SparkSession.builder.getOrCreate()',
            'df = spark.read.csv(data + "/sales.csv", header=True, schema="region STRING, amount INT")',
            'result = df.groupBy("region").agg(F.sum("amount").alias("total")).orderBy("region").cache()',
            'result.coalesce(1).write.mode("overwrite").csv(data + "/totals", header=True)',
            'for row in result.collect(): print(f"{row.region}={row.total}")',
            "spark.stop()",
            "",
        ].join("\n"),
    );
    const failing = path.join(root, "missing_input.py");
    // Fails in the driver before it asks the cluster for anything (cheaper than a failing Spark action, same exit path).
    fs.writeFileSync(failing, ["import os, sys", "import pyspark  # a PySpark job, failing before it starts a session", 'if not os.path.exists(sys.argv[1] + "/no-such.csv"):', '    raise FileNotFoundError("Path does not exist: " + sys.argv[1] + "/no-such.csv")', ""].join("\n"));
    const small = ["--conf", "spark.executor.memory=512m", "--conf", "spark.cores.max=2", "--conf", "spark.sql.shuffle.partitions=2"];
    return Promise.all([nixspark(["submit", ...small, job, "--", dataDir]), nixspark(["submit", ...small, failing, "--", dataDir])]);
}

/** The JVM jobs in cluster mode (one throws), while every process's command line is sampled for the secret. */
async function startJvm(): Promise<{ ok: RunResult; bad: RunResult; seen: { driver: boolean; leaks: string[] } }> {
    const seen = { driver: false, leaks: [] as string[] };
    const scanner = setInterval(() => scanProcesses(secret, seen), 150);
    const opts = ["--deploy-mode", "cluster", "--class", "Squares", "--conf", "spark.driver.memory=512m", "--conf", "spark.executor.memory=512m", "--conf", "spark.cores.max=1"];
    try {
        const [ok, bad] = await Promise.all([nixspark(["submit", ...opts, jar]), nixspark(["submit", ...opts, "--name", "squares-failing", jar, "--", "fail"])]);
        return { ok, bad, seen };
    } finally {
        clearInterval(scanner);
    }
}

const apps: Record<string, string> = {};

test("PySpark in client mode: a job reads a CSV from the data directory and writes its result, exit 0; a failing job fails the command, exit 1", async () => {
    const [ok, bad] = await pyRuns;

    if (ok.code !== 0) throw new Error(`the job failed: ${explain(ok)}`);
    expect(ok.stdout.split("\n").filter((l) => /^\w+=\d+$/.test(l))).toEqual(["north=8", "south=10", "west=1"]);
    const part = fs.readdirSync(path.join(dataDir, "totals")).find((f) => f.startsWith("part-") && f.endsWith(".csv"));
    expect(fs.readFileSync(path.join(dataDir, "totals", part!), "utf8")).toBe("region,total\nnorth,8\nsouth,10\nwest,1\n");
    expect(ok.stderr).toContain("submit: running sales_by_region.py on master against spark://127.0.0.1:");
    apps.python = appIdOf(ok)!;
    expect(apps.python).toMatch(/^app-\d+-\d+$/);
    expect(ok.stderr).toContain(`submit: history: http://127.0.0.1:${historyPort}/history/${apps.python}/`);

    // (spark-submit's PythonRunner sends the Python driver's stderr to its stdout.)
    if (!/FileNotFoundError: Path does not exist/.test(bad.stdout + bad.stderr)) throw new Error(`the failing job did not fail as written: ${explain(bad)}`);
    expect(bad.stderr).toMatch(/submit: the job FAILED: spark-submit exited [1-9]/);
    expect(bad.code).toBe(1);
});

test("a JVM job in cluster mode: its driver runs on a worker (with that worker's address), is followed to FINISHED and its output printed; one that throws ends FAILED, exit 1; the secret is in no process list, log or work directory", async () => {
    const { ok, bad, seen } = await jvmRuns;

    if (ok.code !== 0) throw new Error(`the cluster-mode job failed: ${explain(ok)}`);
    const okDriver = /submit: driver (driver-\d+-\d+) submitted/.exec(ok.stderr)?.[1];
    expect(okDriver).toBeDefined();
    const ran = new RegExp(`submit: driver ${okDriver} RUNNING on (worker-\\d) \\((127\\.0\\.0\\.\\d)\\)`).exec(ok.stderr);
    expect(ran).not.toBeNull();
    expect(ok.stderr).toContain(`submit: driver ${okDriver} ended FINISHED`);
    // The driver's stdout, read from that worker's work directory, and the driver advertised its worker's address, not the master's.
    expect(ok.stdout).toContain("sum of squares 1..10 = 385");
    expect(ok.stdout).toContain(`driver host ${ran![2]}`);
    expect(fs.existsSync(path.join(spark!.dir, ran![1], okDriver!, "stdout"))).toBe(true);
    apps.jvm = appIdOf(ok)!;
    expect(apps.jvm).toMatch(/^app-\d+-\d+$/);

    expect(bad.stderr).toMatch(/submit: driver driver-\d+-\d+ ended FAILED/);
    expect(bad.stderr).toContain("the job fails on purpose");
    expect(bad.stderr).toContain("submit: the job FAILED");
    expect(bad.code).toBe(1);
    apps.jvmFailing = appIdOf(bad)!;

    // Secrets: the drivers ran while the process list was sampled, and no command line held the secret;
    // no file of the workers (work directories, the drivers' Launch Command, logs) and no output has it.
    expect(seen.driver).toBe(true);
    expect(seen.leaks).toEqual([]);
    // (The cluster's configuration directory holds it by design; here it is the scratch root's, outside the cluster's directory.)
    const conf = spark!.env.SPARK_CONF_DIR;
    expect(filesContaining(spark!.dir, secret).filter((f) => !f.startsWith(conf + path.sep))).toEqual([]);
    expect(filesContaining(eventLogs, secret)).toEqual([]);
    expect(fs.readFileSync(path.join(spark!.dir, ran![1], okDriver!, "stderr"), "utf8")).toContain("Launch Command:");
    for (const r of [ok, bad]) expect(r.stdout + r.stderr).not.toContain(secret);
});

test("the history server lists the applications as completed, and nixspark status lists them (text and --json)", async () => {
    const ids = [apps.python, apps.jvm, apps.jvmFailing];
    expect(ids.every((id) => /^app-/.test(id ?? ""))).toBe(true);
    const deadline = Date.now() + 120_000;
    let listed: { id: string; attempts: { completed: boolean }[] }[] = [];
    while (Date.now() < deadline) {
        try {
            listed = (await (await fetch(`http://127.0.0.1:${historyPort}/api/v1/applications`)).json()) as typeof listed;
            if (ids.every((id) => listed.some((a) => a.id === id && a.attempts.every((t) => t.completed)))) break;
        } catch {
            /* not up yet */
        }
        await new Promise((r) => setTimeout(r, 1_000));
    }
    for (const id of ids) expect(listed.find((a) => a.id === id)?.attempts.every((t) => t.completed)).toBe(true);

    const json = await nixspark(["status", "--json", "--no-libvirt", "--no-ssh"]);
    const report = JSON.parse(json.stdout);
    for (const id of ids) expect(report.applications).toContainEqual(expect.objectContaining({ id, state: "COMPLETED", url: `http://127.0.0.1:${historyPort}/history/${id}/` }));
    const text = await nixspark(["status", "--no-libvirt", "--no-ssh"]);
    for (const id of ids) expect(text.stdout).toMatch(new RegExp(`^COMPLETED +[0-9hms]+ +${id} `, "m"));
});

test("status with a history server that does not answer: the applications are a note, not a failure", async () => {
    const other = path.join(root, "outputs-no-history.json");
    const raw = JSON.parse(fs.readFileSync(outputsFile, "utf8"));
    fs.writeFileSync(other, JSON.stringify({ ...raw, historyUrl: `http://127.0.0.1:${await freePort()}` }));
    const r = await run(["node", NIXSPARK, "--outputs", other, "status", "--json", "--no-libvirt", "--no-ssh"], { cwd: root, timeoutMs: 120_000, allowFailure: true });
    const report = JSON.parse(r.stdout);
    expect(report.applications).toEqual([]);
    expect(report.applicationsNote).toMatch(/the history server at http:\/\/127\.0\.0\.1:\d+ did not answer/);
    expect(r.code).toBe(0);
});

test("submit refuses what Spark standalone or the nodes cannot do: exit 2 before anything runs, naming the flag", async () => {
    for (const ext of ["py", "jar", "txt"]) fs.writeFileSync(path.join(root, `usage.${ext}`), "");
    const cases: [string[], RegExp][] = [
        [["--deploy-mode", "cluster", "JOB.py"], /--deploy-mode cluster: Spark's standalone master runs no Python drivers/],
        [["--packages", "org.example:lib:1.0", "JOB.jar"], /--packages is not supported: .*pass them with --jars/],
        [["--class", "Main", "JOB.py"], /--class is for JVM jobs/],
        [["--py-files", "JOB.py", "JOB.jar"], /--py-files is for Python jobs/],
        [["--deploy-mode", "server", "JOB.jar"], /--deploy-mode must be client or cluster/],
        [["JOB.txt"], /<job>: .* is neither a \.py nor a \.jar file/],
    ];
    const results = await Promise.all(cases.map(([args]) => nixspark(["submit", ...args.map((a) => a.replace(/^JOB\./, path.join(root, "usage.")))])));
    for (const [i, r] of results.entries()) {
        expect(r.stderr).toMatch(cases[i][1]);
        expect(r.code).toBe(2);
    }
});

/**
 * The README's walkthrough (`<!-- walkthrough:use -->`), run as written: bash
 * runs the block in the checkout, with HOME a temporary directory whose
 * nixspark-data is what the nodes see at /data (the stack's data.mountPoint
 * default): here /data is a symlink to it that this test makes and removes
 * (it refuses to touch a /data it did not make), and NIXSPARK_OUTPUTS points
 * the CLI at this loopback cluster as `pulumi stack output` would.
 */
test("the README walkthrough runs as written: the CSV job's totals, the JVM job's driver in the cluster, both listed by the history server", async () => {
    const r = await walkthroughRun;
    if (r.code !== 0) throw new Error(`the walkthrough failed: ${explain(r)}`);
    // The CSV job's totals on stdout and, through /data, in the host directory (cat prints them).
    expect(r.stdout).toContain("north\t17\nsouth\t5\n");
    expect(r.stdout).toContain("region,total\nnorth,17\nsouth,5\n");
    const ids = [...r.stderr.matchAll(/submit: application (app-\d+-\d+)/g)].map((m) => m[1]);
    expect(ids).toHaveLength(2);
    // The JVM job ran its driver on a worker, followed to its end, its output printed here.
    expect(r.stderr).toMatch(/submit: driver driver-\d+-\d+ RUNNING on worker-\d/);
    expect(r.stderr).toMatch(/submit: driver driver-\d+-\d+ ended FINISHED/);
    expect(r.stdout).toContain("lines containing north: 2");

    // Both applications, completed, as status lists them (the history server scans every 2 s here).
    let listed = "";
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline) {
        listed = (await nixspark(["status", "--no-libvirt", "--no-ssh"])).stdout;
        if (ids.every((id) => new RegExp(`^COMPLETED +[0-9hms]+ +${id} `, "m").test(listed))) break;
        await new Promise((res) => setTimeout(res, 1_000));
    }
    for (const id of ids) expect(listed).toMatch(new RegExp(`^COMPLETED +[0-9hms]+ +${id} `, "m"));
});

/**
 * Runs the walkthrough block in bash, with /data (claimDataLink) pointing at
 * the temporary HOME's nixspark-data for as long as it runs.
 */
async function startWalkthrough(): Promise<RunResult> {
    const home = path.join(root, "home");
    const data = path.join(home, "nixspark-data");
    fs.mkdirSync(data, { recursive: true });
    fs.chmodSync(data, 0o1777); // as walkthrough:up makes it
    const script = path.join(root, "walkthrough.sh");
    fs.writeFileSync(script, walkthroughBlock("use"));
    dataLink = claimDataLink(data);
    try {
        return await run(["bash", "-euo", "pipefail", script], {
            cwd: REPO,
            env: { ...process.env, HOME: home, NIXSPARK_OUTPUTS: outputsFile },
            timeoutMs: 600_000,
            allowFailure: true,
        });
    } finally {
        releaseDataLink();
    }
}

/** Removes the /data link this test made, if it is still there (also from afterAll, should the walkthrough outlive its test). */
function releaseDataLink(): void {
    try {
        if (dataLink !== undefined && fs.readlinkSync("/data") === dataLink) fs.unlinkSync("/data");
    } catch {
        /* not a link, or gone */
    }
    dataLink = undefined;
}

/** Makes /data a symlink to `dir` and returns `dir`; refuses a /data this test did not make (a stale link of an earlier run into a removed temp dir is replaced). */
function claimDataLink(dir: string): string {
    let existing: fs.Stats | undefined;
    try {
        existing = fs.lstatSync("/data");
    } catch {
        /* absent */
    }
    if (existing) {
        const stale = existing.isSymbolicLink() && /^\/tmp\/nxsubmit-/.test(fs.readlinkSync("/data")) && !fs.existsSync(fs.readlinkSync("/data"));
        if (!stale) throw new Error("the walkthrough test needs /data (the nodes' data directory) for itself, and this machine has one: run it where /data does not exist");
        fs.unlinkSync("/data");
    }
    fs.symlinkSync(dir, "/data");
    return dir;
}
