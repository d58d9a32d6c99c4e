// Spark authentication and RPC encryption as the nodes run it (nix/lib/params.nix
// with security.authenticate, nix/modules/spark.nix): a real standalone master
// and two workers on loopback whose spark-defaults.conf holds
// spark.authenticate, spark.network.crypto.enabled and the cluster secret.
//   - the smoke job, submitted with the cluster's configuration, runs;
//   - a driver with another secret, and one that speaks no authentication at
//     all, are refused by the master: no application registers, spark-submit
//     fails.
import * as fs from "node:fs";
import * as path from "node:path";
import { run, RunResult } from "../../providers/run";
import { livingInGroup, LocalSpark, REPO, startLocalSpark } from "../helpers/sparkLocal";

jest.setTimeout(300_000);

const SECRET = "c2VjcmV0LWZvci10aGUtdGVzdC1vbmx5LTAwMDAwMDAwMDAwMDA";

let spark: LocalSpark;
/** The master's completed applications before any driver ran. */
let completedBefore: number;
/** The three drivers, started together at the end of beforeAll: the refused ones spend a minute in Spark's registration retries (3 x 20 s), the smoke job meanwhile. */
let runs: Promise<[RunResult, RunResult, RunResult]>;

beforeAll(async () => {
    spark = await startLocalSpark({
        workers: 2,
        sparkDefaults: {
            "spark.authenticate": "true",
            "spark.authenticate.secret": SECRET,
            "spark.network.crypto.enabled": "true",
        },
    });
    completedBefore = (await apps()).completed;
    const wrong = confDir("wrong-secret", { "spark.authenticate": "true", "spark.authenticate.secret": "not-the-cluster-secret", "spark.network.crypto.enabled": "true" });
    const none = confDir("no-auth", { "spark.authenticate": "false" });
    runs = Promise.all([smoke(spark.env), smoke({ ...spark.env, SPARK_CONF_DIR: wrong }), smoke({ ...spark.env, SPARK_CONF_DIR: none })]);
    runs.catch(() => undefined); // awaited by the tests; this keeps a rejection from being unhandled meanwhile
});

afterAll(async () => {
    const pids = spark ? [spark.master.pid, ...spark.workers.map((w) => w.pid)] : [];
    await spark?.stop();
    for (const pid of pids) expect(livingInGroup(pid)).toEqual([]);
});

/** The smoke script as `npm run smoke` runs it, submitting from here against the loopback master. */
function smoke(env: Record<string, string>) {
    return run(
        [process.execPath, "-r", "ts-node/register/transpile-only", path.join(REPO, "scripts/smoke.ts"), "--master", spark.masterUrl, "--web-ui", spark.webUiUrl, "--local-submit", "--timeout", "150"],
        { cwd: REPO, timeoutMs: 200_000, allowFailure: true, env: { ...process.env, ...env } },
    );
}

/** The master's own account of applications (its /json/ page). */
async function apps(): Promise<{ active: number; completed: number }> {
    const r = (await (await fetch(`${spark.webUiUrl}/json/`)).json()) as { activeapps?: unknown[]; completedapps?: unknown[] };
    return { active: (r.activeapps ?? []).length, completed: (r.completedapps ?? []).length };
}

/** A configuration directory like the cluster's, with other settings. */
function confDir(name: string, settings: Record<string, string>): string {
    const dir = path.join(spark.dir, name);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, "spark-defaults.conf"), Object.entries(settings).map(([k, v]) => `${k} ${v}\n`).join(""));
    return dir;
}

test("with the cluster secret, the smoke job runs on both workers", async () => {
    expect(fs.readFileSync(path.join(spark.env.SPARK_CONF_DIR, "spark-defaults.conf"), "utf8")).toContain("spark.authenticate true");
    const [r] = await runs;
    if (r.code !== 0) throw new Error(`smoke exited ${r.code}\n${r.stdout}\n${r.stderr.slice(-4000)}`);
    expect(r.stdout).toMatch(/smoke: OK in \d+ s: sum of squares 1\.\.100000 = 333338333350000; 4 tasks on 2 workers/);
});

test("a driver with another secret, or with no authentication, is refused: no application registers, spark-submit fails", async () => {
    const [withSecret, withWrong, withNone] = await runs;
    for (const r of [withWrong, withNone]) {
        expect(r.code).not.toBe(0);
        expect(r.stdout).not.toMatch(/smoke: OK/);
        expect(r.stderr).toMatch(/All masters are unresponsive|Spark context stopped while waiting for backend/);
    }
    // The master registered the smoke job alone (once the refused drivers gave up, nothing is active).
    const after = await apps();
    expect(after.active).toBe(0);
    expect(after.completed).toBe(completedBefore + (withSecret.code === 0 ? 1 : 0));
    expect(withSecret.code).toBe(0);
});
