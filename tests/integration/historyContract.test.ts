// Event logs and the history server, executed: the master role's
// spark-history unit, its tmpfiles rules and spark-defaults.conf are taken
// from the real evaluation of nix/ (against the stand-in nixpkgs) for a
// stack with the program's defaults (authentication on); in a scratch root
// the directories are made as systemd-tmpfiles would make them, the
// configuration directory is assembled by the role's own nixspark-spark-conf
// unit from the secret file the program writes, a real PySpark job runs as
// `analyst` (a user whose only tie to Spark is the Spark users' group) with
// the node's configuration, and the unit's real ExecStart (Spark's
// start-history-server.sh from the project's test Spark standing in for the
// package) runs as `spark` with its groups. The history server's REST API
// must list the job as completed. A mutation: the directory without its
// setgid bit leaves analyst's log in analyst's own group (users), which the
// history server cannot read: that job is never listed.
// Loopback only (SPARK_LOCAL_IP=127.0.0.1); every process started here is
// stopped by its process group; the scratch root goes in afterAll.
import * as fs from "node:fs";
import * as path from "node:path";
import { parseConfig } from "../../cluster/config";
import { buildTopology } from "../../cluster/topology";
import { nixStackParams } from "../../cluster/nixParams";
import { clusterSecretProvider, secretProperties, SECRET_FILE } from "../../providers/clusterSecret";
import { EvaluatedUnit, evalModuleConfig, evalModuleUnit, evalUnit, removeContractDirs, roleModules, RunningUnit, ScratchRoot, stackFlake } from "../helpers/nixContract";
import { ensureSpark, findJavaHome, freePort } from "../helpers/sparkLocal";

jest.setTimeout(300_000);

const STACK = "hist";
const LOG_DIR = "/var/lib/spark/event-logs";
const CONF_DIR = "/run/nixspark/spark-conf";

let root: ScratchRoot;
let history: EvaluatedUnit;
let real: EvaluatedUnit;
let rules: string[];
let port: number;
let javaHome: string;
let sparkPackage: string;
let server: RunningUnit | undefined;

beforeAll(async () => {
    const cfg = parseConfig({ workers: { count: 1 }, ssh: { publicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHistoryHistoryHistoryHistoryHistoryHis00 history" } });
    expect(cfg.security.authenticate).toBe(true);
    const flake = stackFlake(nixStackParams(cfg, buildTopology(STACK, cfg)));
    // The role as the stack gets it, and the same role on a free port (18080 may be taken on a shared machine).
    port = await freePort();
    const modules = roleModules(STACK, "master", [`{ nixspark.history.port = ${port}; }`]);
    real = evalUnit(flake, `${STACK}-master`, "spark-history");
    history = evalModuleUnit(flake, modules, "spark-history");
    const conf = evalModuleUnit(flake, modules, "nixspark-spark-conf");
    rules = evalModuleConfig<string[]>(flake, modules, "systemd.tmpfiles.rules");
    sparkPackage = history.execStart.trim().replace(/\/sbin\/start-history-server\.sh$/, "");
    expect(sparkPackage).toMatch(/^\/nix\/store\/[a-z0-9]{32}-spark-3\.5\.\d+$/);

    const sparkHome = await ensureSpark();
    javaHome = await findJavaHome();
    root = new ScratchRoot({ "spark-": sparkHome });
    // The accounts as the role defines them: spark (group spark, nixpkgs' module), the deploy
    // user and analyst (normal users: group users), all three in the Spark users' group.
    root.withAccounts(["spark", "deploy", "analyst"], { spark: [], "spark-users": ["spark", "deploy", "analyst"] });
    root.setPrimaryGroup("spark", "spark");
    root.setPrimaryGroup("deploy", "users");
    root.setPrimaryGroup("analyst", "users");
    root.applyTmpfiles(rules);
    await root.realise(history.drvs); // the Spark package (spark-submit for the jobs) among them
    // The secret file as the deployment writes it; the role's unit assembles the configuration.
    const secret = ((await clusterSecretProvider.create!({ generation: 1 })).outs as { value: string }).value;
    fs.mkdirSync(path.dirname(root.at(SECRET_FILE)), { recursive: true });
    fs.writeFileSync(root.at(SECRET_FILE), secretProperties(secret), { mode: 0o400 });
    const r = await root.runUnit(conf);
    expect(r.code).toBe(0);
}, 240_000);

afterAll(async () => {
    await server?.stop();
    root?.remove();
    removeContractDirs();
});

/** A PySpark job run on the node as `user` (with the user's groups), with the node's configuration and a local master. */
async function job(user: string, name: string) {
    const script = path.join(root.dir, `${name}.py`);
    fs.writeFileSync(script, [
        "from pyspark.sql import SparkSession",
        `spark = SparkSession.builder.appName("${name}").getOrCreate()`,
        "print('result', spark.sparkContext.parallelize(range(1, 101), 2).map(lambda x: x * x).sum())",
        "print('app', spark.sparkContext.applicationId)",
        "spark.stop()",
        "",
    ].join("\n"), { mode: 0o644 });
    fs.chmodSync(root.dir, 0o755); // `user` reads the job file
    const r = await root.runAs(
        user,
        [`${sparkPackage}/bin/spark-submit`, "--master", "local[1]", "--conf", "spark.ui.enabled=false", script],
        { PATH: "/usr/bin:/bin", HOME: "/tmp", JAVA_HOME: javaHome, SPARK_CONF_DIR: CONF_DIR, SPARK_LOCAL_IP: "127.0.0.1" },
        { timeoutMs: 180_000, allowFailure: true },
    );
    if (r.code !== 0) throw new Error(`the job ${name} as ${user} failed (exit ${r.code})\n${r.stdout}\n${r.stderr.slice(-4000)}`);
    expect(r.stdout).toContain("result 338350");
    const appId = /^app (\S+)$/m.exec(r.stdout)?.[1];
    if (!appId) throw new Error(`no application id in the job's output:\n${r.stdout}`);
    return appId;
}

interface HistoryApp {
    id: string;
    name: string;
    attempts: { completed: boolean; sparkUser: string }[];
}

async function listed(): Promise<HistoryApp[]> {
    const res = await fetch(`http://127.0.0.1:${port}/api/v1/applications`, { signal: AbortSignal.timeout(3_000) });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    return (await res.json()) as HistoryApp[];
}

/** Polls the history server's REST API until `ok` holds; throws with the server's log after timeoutMs. */
async function waitForHistory(ok: (apps: HistoryApp[]) => boolean, timeoutMs: number, what: string): Promise<HistoryApp[]> {
    const deadline = Date.now() + timeoutMs;
    let last = "no answer yet";
    while (Date.now() < deadline) {
        try {
            const apps = await listed();
            if (ok(apps)) return apps;
            last = JSON.stringify(apps.map((a) => [a.id, a.name, a.attempts.map((t) => t.completed)]));
        } catch (e) {
            last = (e as Error).message;
        }
        await new Promise((r) => setTimeout(r, 1_000));
    }
    throw new Error(`timed out waiting for ${what}; last: ${last}\nhistory server log:\n${server?.log().slice(-4000)}`);
}

test("the stack's role: the history unit on port 18080 with the daemons' configuration; event logs on into a 3770 spark:spark-users directory", () => {
    expect(real.serviceConfig).toMatchObject({ User: "spark", Group: "spark", Type: "simple", Restart: "on-failure" });
    expect(real.environment.SPARK_HISTORY_OPTS).toContain("-Dspark.history.ui.port=18080");
    expect(real.environment.SPARK_HISTORY_OPTS).toContain(`-Dspark.history.fs.logDirectory=file:${LOG_DIR}`);
    expect(real.environment).toMatchObject({ SPARK_CONF_DIR: CONF_DIR, SPARK_NO_DAEMONIZE: "1" });
    // The unit run below is that unit, on another port.
    expect(history.execStart).toBe(real.execStart);
    expect({ ...history.environment, SPARK_HISTORY_OPTS: "" }).toEqual({ ...real.environment, SPARK_HISTORY_OPTS: "" });
    expect(history.environment.SPARK_HISTORY_OPTS).toBe(real.environment.SPARK_HISTORY_OPTS.replace("port=18080", `port=${port}`));

    const defaults = fs.readFileSync(root.at(`${CONF_DIR}/spark-defaults.conf`), "utf8");
    expect(defaults).toMatch(/^spark\.eventLog\.enabled true$/m);
    expect(defaults).toMatch(new RegExp(`^spark\\.eventLog\\.dir file:${LOG_DIR}$`, "m"));
    expect(rules).toContain(`d ${LOG_DIR} 3770 spark spark-users - -`);
    const st = fs.statSync(root.at(LOG_DIR));
    expect({ mode: (st.mode & 0o7777).toString(8), uid: st.uid, gid: st.gid }).toEqual({ mode: "3770", uid: root.uid("spark"), gid: root.gid("spark-users") });
});

test("a job of a user in the Spark users' group writes its event log there, and the history server (as spark) lists it as completed", async () => {
    const appId = await job("analyst", "analyst-job");
    const logs = fs.readdirSync(root.at(LOG_DIR));
    expect(logs).toEqual([appId]);
    const st = fs.statSync(root.at(`${LOG_DIR}/${appId}`));
    // Spark's own mode (660 in 3.5) and, through setgid, the directory's group, not analyst's (users).
    expect({ uid: st.uid, gid: st.gid, groupCanRead: (st.mode & 0o040) !== 0, othersNone: (st.mode & 0o007) === 0 }).toEqual({
        uid: root.uid("analyst"),
        gid: root.gid("spark-users"),
        groupCanRead: true,
        othersNone: true,
    });

    // Loopback instead of the master's address (spark-env.sh keeps a SPARK_LOCAL_IP that is set), and
    // JAVA_HOME, which the package's bin/ wrappers set on a node.
    server = await root.startUnit(history, { extraEnv: { SPARK_LOCAL_IP: "127.0.0.1", JAVA_HOME: javaHome } });
    const apps = await waitForHistory((a) => a.some((x) => x.id === appId && x.attempts.every((t) => t.completed)), 120_000, `${appId} listed as completed`);
    const app = apps.find((x) => x.id === appId)!;
    expect(app.name).toBe("analyst-job");
    expect(app.attempts[0]).toMatchObject({ completed: true, sparkUser: "analyst" });
    // The server runs as spark with spark's groups, not as root.
    const status = fs.readFileSync(`/proc/${await javaPid(server.pid)}/status`, "utf8");
    expect(status).toMatch(new RegExp(`^Uid:\\s+${root.uid("spark")}\\s`, "m"));
    expect(status).toMatch(new RegExp(`^Groups:.*\\b${root.gid("spark-users")}\\b`, "m"));
});

test("mutation: the role's rule without the setgid bit leaves analyst's log in analyst's own group, which the history server cannot read", async () => {
    expect(server).toBeDefined();
    const rule = rules.find((r) => r.includes(LOG_DIR))!;
    root.applyTmpfiles([rule.replace(" 3770 ", " 1770 ")]);
    try {
        const bad = await job("analyst", "without-setgid");
        expect(fs.statSync(root.at(`${LOG_DIR}/${bad}`)).gid).toBe(root.gid("users"));
        // The server tries it on its next scan (every 10 s) and is refused.
        const deadline = Date.now() + 60_000;
        while (!server!.log().includes(`${LOG_DIR}/${bad} (Permission denied)`) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1_000));
        expect(server!.log()).toContain(`${LOG_DIR}/${bad} (Permission denied)`);
        const ids = (await listed()).map((a) => a.id);
        expect(ids).not.toContain(bad);
        expect(ids).toHaveLength(1); // the first job's, still
    } finally {
        root.applyTmpfiles([rule]);
    }
});

/** The JVM in a unit's process group (the launcher scripts are its parents). */
async function javaPid(pgid: number): Promise<number> {
    for (const entry of fs.readdirSync("/proc")) {
        if (!/^\d+$/.test(entry)) continue;
        try {
            const stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8");
            const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
            if (Number(rest[2]) === pgid && stat.includes("(java)")) return Number(entry);
        } catch {
            /* exited */
        }
    }
    throw new Error(`no java process in group ${pgid}`);
}
