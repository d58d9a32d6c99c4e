// The contract between ClusterSecret and the node's nixspark-spark-conf unit,
// executed: the unit's ExecStart, taken from the real evaluation of the
// master role (against the stand-in nixpkgs), runs in a scratch root on the
// file the program writes (secretProperties of the stack's secret output);
// then a real Spark master and worker start from the configuration
// directory it assembled, and a driver given the stack's secret output is
// accepted while one given the doubly wrapped string
// ("spark.authenticate.secret <S>", what the unit used to make of it) is
// refused. Also: the file's format is enforced, and the assembled files are
// readable by root and the Spark users' group only.
import * as fs from "node:fs";
import * as path from "node:path";
import { parseConfig } from "../../cluster/config";
import { buildTopology } from "../../cluster/topology";
import { nixStackParams } from "../../cluster/nixParams";
import { clusterSecretProvider, secretProperties, SECRET_FILE } from "../../providers/clusterSecret";
import { run } from "../../providers/run";
import { evalUnit, removeContractDirs, ScratchRoot, stackFlake } from "../helpers/nixContract";
import { findJavaHome, livingInGroup, LocalSpark, REPO, startLocalSpark } from "../helpers/sparkLocal";

jest.setTimeout(420_000);

const STACK = "contract";
const CONF_DIR = "/run/nixspark/spark-conf";

let root: ScratchRoot;
let unit: ReturnType<typeof evalUnit>;
let secret: string;
let spark: LocalSpark | undefined;

beforeAll(async () => {
    const cfg = parseConfig({ workers: { count: 2 }, ssh: { publicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIContractContractContractContractContract00 contract" } });
    expect(cfg.security.authenticate).toBe(true);
    const flake = stackFlake(nixStackParams(cfg, buildTopology(STACK, cfg)));
    unit = evalUnit(flake, `${STACK}-master`, "nixspark-spark-conf");
    // The stack's secret output, as the provider makes it.
    secret = ((await clusterSecretProvider.create!({ generation: 1 })).outs as { value: string }).value;
    root = new ScratchRoot();
    root.withAccounts(["spark", "deploy"], { "spark-users": ["spark", "deploy"] });
}, 300_000);

afterAll(async () => {
    const pids = spark ? [spark.master.pid, ...spark.workers.map((w) => w.pid)] : [];
    await spark?.stop();
    for (const pid of pids) expect(livingInGroup(pid)).toEqual([]);
    root?.remove();
    removeContractDirs();
});

/** Writes the secret file as the deployment does (install -m 0400, root), with this content. */
function deliver(content: string) {
    const file = root.at(SECRET_FILE);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.rmSync(file, { force: true });
    fs.writeFileSync(file, content, { mode: 0o400 });
}

test("the unit refuses a secret file that is not in the format the program writes, naming the file", async () => {
    deliver(`${secret}\n`); // a bare secret, as the NixOS test used to write
    const r = await root.runUnit(unit, { allowFailure: true });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`${SECRET_FILE} is not a Spark properties fragment with spark.authenticate.secret`);
    expect(r.stderr + r.stdout).not.toContain(secret);
    expect(fs.existsSync(root.at(`${CONF_DIR}/spark-defaults.conf`))).toBe(false);
});

test("the unit appends the program's secret properties unchanged: the secret once, the secret settings after it", async () => {
    deliver(secretProperties(secret, { "spark.ssl.keyPassword": "kp-of-the-test" }));
    const r = await root.runUnit(unit);
    expect(r.code).toBe(0);
    const defaults = fs.readFileSync(root.at(`${CONF_DIR}/spark-defaults.conf`), "utf8");
    const secretLines = defaults.split("\n").filter((l) => l.startsWith("spark.authenticate.secret"));
    expect(secretLines).toEqual([`spark.authenticate.secret ${secret}`]);
    expect(defaults).toMatch(/^spark\.ssl\.keyPassword kp-of-the-test$/m);
    expect(defaults).toMatch(/^spark\.authenticate true$/m);
    for (const f of ["spark-defaults.conf", "spark-env.sh", "driver-secret.args"]) {
        const st = fs.statSync(root.at(`${CONF_DIR}/${f}`));
        expect({ mode: st.mode & 0o777, uid: st.uid, gid: st.gid }).toEqual({ mode: 0o440, uid: 0, gid: root.gid("spark-users") });
    }
    // The java argument file a cluster-mode driver gets (cli/verbs/submit.ts): a real JVM reads the secret from it, and only that.
    const args = root.at(`${CONF_DIR}/driver-secret.args`);
    expect(fs.readFileSync(args, "utf8")).toBe(`-Dspark.authenticate.secret=${secret}\n`);
    const jvm = await run([path.join(await findJavaHome(), "bin/java"), `@${args}`, "-XshowSettings:properties", "-version"], { timeoutMs: 60_000 });
    expect(jvm.stderr.split("\n").map((l) => l.trim())).toContain(`spark.authenticate.secret = ${secret}`);
    expect(jvm.stderr).not.toMatch(/spark\.ssl\.keyPassword/);
    const dir = fs.statSync(root.at(CONF_DIR));
    expect({ mode: dir.mode & 0o777, gid: dir.gid }).toEqual({ mode: 0o750, gid: root.gid("spark-users") });
});

/** A driver's configuration: the node's assembled one, with the secret the driver was given. */
function driverConf(name: string, givenSecret: string): string {
    const assembled = fs.readFileSync(root.at(`${CONF_DIR}/spark-defaults.conf`), "utf8");
    const dir = path.join(root.dir, "drivers", name);
    fs.mkdirSync(dir, { recursive: true });
    // Not the event-log settings: their directory is the node's, and this driver runs here (historyContract.test.ts runs them in a scratch root).
    const lines = assembled.split("\n").filter((l) => l.trim() && !l.startsWith("spark.authenticate.secret ") && !l.startsWith("spark.master ") && !l.startsWith("spark.eventLog."));
    fs.writeFileSync(path.join(dir, "spark-defaults.conf"), [...lines, `spark.authenticate.secret ${givenSecret}`, ""].join("\n"));
    return dir;
}

function smoke(env: Record<string, string>) {
    return run(
        [process.execPath, "-r", "ts-node/register/transpile-only", path.join(REPO, "scripts/smoke.ts"), "--master", spark!.masterUrl, "--web-ui", spark!.webUiUrl, "--local-submit", "--timeout", "150"],
        { cwd: REPO, timeoutMs: 200_000, allowFailure: true, env: { ...(process.env as Record<string, string>), ...env } },
    );
}

test("real Spark daemons started from the assembled directory accept a driver with the stack's secret and refuse the wrapped string", async () => {
    expect(fs.existsSync(root.at(`${CONF_DIR}/spark-defaults.conf`))).toBe(true);
    spark = await startLocalSpark({ workers: 2, confDir: root.at(CONF_DIR) });
    const good = driverConf("stack-secret", secret);
    const wrapped = driverConf("wrapped", `spark.authenticate.secret ${secret}`);
    const [ok, refused] = await Promise.all([smoke({ ...spark.env, SPARK_CONF_DIR: good }), smoke({ ...spark.env, SPARK_CONF_DIR: wrapped })]);
    if (ok.code !== 0) throw new Error(`the driver with the stack's secret was refused (exit ${ok.code})\n${ok.stdout}\n${ok.stderr.slice(-3000)}`);
    expect(ok.stdout).toMatch(/smoke: OK in \d+ s: sum of squares 1\.\.100000 = 333338333350000; 4 tasks on 2 workers/);
    expect(refused.code).not.toBe(0);
    expect(refused.stdout).not.toMatch(/smoke: OK/);
    expect(refused.stderr).toMatch(/All masters are unresponsive|Spark context stopped while waiting for backend/);
});
