// A removed worker leaves through Spark: NixosDeployment.delete of a worker
// sends SIGPWR to its daemon over SSH (the fake node behind a real sshd
// signals a real loopback Spark worker by PID) and returns once the master no
// longer lists it ALIVE and it runs no executor, bounded by
// decommissionTimeoutSeconds. A job that is running meanwhile completes with
// the right sum.
import * as fs from "node:fs";
import * as http from "node:http";
import * as path from "node:path";
import { ChildProcess, spawn } from "node:child_process";
import { fetchMasterState } from "../../providers/spark/master";
import { NixosDeploymentInputs, nixosDeploymentProvider, SparkCheck } from "../../providers/nixosDeployment";
import { submitConf } from "../../scripts/smoke";
import { LocalSpark, livingInGroup, startLocalSpark, waitForMaster } from "../helpers/sparkLocal";
import { createDeployment, SshTargetEnv } from "../helpers/sshTarget";

jest.setTimeout(180_000);

const SYS_A = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-dev-worker-24.11";
const N = 100000;
const EXPECTED = (N * (N + 1) * (2 * N + 1)) / 6; // 333338333350000, as scripts/jobs/sum_of_squares.py checks

// The smoke job's sum of squares, with every task taking a few seconds, so
// that executors are busy on both workers when one of them is removed.
const SLOW_JOB = `
import sys, time
from pyspark.sql import SparkSession

def squares(rows, seconds):
    total = 0
    for i in rows:
        total += i * i
    time.sleep(seconds)
    yield total

n, partitions, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
spark = SparkSession.builder.appName("nixspark-decommission-test").getOrCreate()
try:
    total = sum(spark.sparkContext.parallelize(range(1, n + 1), partitions).mapPartitions(lambda rows: squares(rows, seconds)).collect())
finally:
    spark.stop()
expected = n * (n + 1) * (2 * n + 1) // 6
print(f"NIXSPARK_RESULT sum={total} expected={expected}", flush=True)
sys.exit(0 if total == expected else 1)
`;

let spark: LocalSpark;
let env: SshTargetEnv;
const started: ChildProcess[] = []; // the job and the decoy, killed by PID in cleanup
let logged: string[] = [];
let restoreEnv: () => void = () => undefined;

beforeAll(async () => {
    try {
        spark = await startLocalSpark({ workers: 2, sparkDefaults: { "spark.decommission.enabled": "true", "spark.storage.decommission.enabled": "true" } });
        env = await SshTargetEnv.create();
        env.resetNode(SYS_A);
        env.setSystem("dev-worker", SYS_A);
        restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
        const quiet = jest.spyOn(console, "error").mockImplementation(() => undefined);
        try {
            await createDeployment(inputs("worker-1")); // records the node's host key, as for a VM the stack created
        } finally {
            quiet.mockRestore();
            restoreEnv();
        }
    } catch (e) {
        await cleanUp();
        throw e;
    }
});

async function cleanUp(): Promise<void> {
    for (const c of started) {
        if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) {
            try {
                process.kill(-c.pid, "SIGKILL");
            } catch {
                /* gone */
            }
        }
    }
    await spark?.stop();
    await env?.cleanup();
}
afterAll(cleanUp);

beforeEach(() => {
    logged = [];
    jest.spyOn(console, "error").mockImplementation((...args: unknown[]) => {
        logged.push(args.map(String).join(" "));
    });
});
afterEach(() => jest.restoreAllMocks());

function sparkOf(name: "worker-1" | "worker-2", decommissionTimeoutSeconds: number): SparkCheck {
    const w = spark.workers[name === "worker-1" ? 0 : 1];
    return { role: "worker", webUiUrl: spark.webUiUrl, address: w.ip, cores: 1, memoryMiB: 512, unit: "spark-worker", timeoutSeconds: 20, decommissionTimeoutSeconds };
}

function inputs(name: "worker-1" | "worker-2", decommissionTimeoutSeconds = 60): NixosDeploymentInputs {
    return env.deploymentInputs({ node: name, expectedSystem: SYS_A, flavour: "legacy", spark: sparkOf(name, decommissionTimeoutSeconds) });
}

/** The recorded state of a deployed worker: what delete gets. */
const stateOf = (inp: NixosDeploymentInputs) => ({ ...inp, currentSystem: SYS_A, flavourUsed: "legacy" }) as unknown as Record<string, unknown>;

function workerJson(webUiAddress: string): Promise<{ executors: unknown[] }> {
    return new Promise((resolve, reject) => {
        http.get(`${webUiAddress}/json/`, { timeout: 5_000 }, (res) => {
            let body = "";
            res.on("data", (c) => (body += c));
            res.on("end", () => resolve(JSON.parse(body)));
        }).on("error", reject);
    });
}

const pwrCall = { words: ["systemctl", "kill", "--kill-whom=main", "--signal=SIGPWR", "spark-worker"], sudo: true, env: {} };

test("a worker removed while a job runs is decommissioned through Spark; delete returns once the master no longer lists it ALIVE and it runs no executor; the job completes with the right sum", async () => {
    const job = path.join(spark.dir, "slow_sum_of_squares.py");
    fs.writeFileSync(job, SLOW_JOB);
    // 6 tasks of 2 s on two 1-core executors (one per worker): about 6 s of work.
    const submit = spawn(path.join(spark.sparkHome, "bin/spark-submit"), [...submitConf(spark.masterUrl, 2, "512m"), job, String(N), "6", "2"], {
        env: { ...(process.env as Record<string, string>), ...spark.env },
        detached: true, // its own process group: cleanup kills the driver and its Python by PID
        stdio: ["ignore", "pipe", "pipe"],
    });
    started.push(submit);
    let stdout = "";
    let stderr = "";
    submit.stdout?.on("data", (c) => (stdout += c));
    submit.stderr?.on("data", (c) => (stderr += c));
    const exited = new Promise<number | null>((r) => submit.once("exit", (code) => r(code)));

    // Executors run on both workers (the master counts their cores as used).
    await waitForMaster(spark.webUiUrl, (m) => m.workers.filter((w) => w.state === "ALIVE" && w.coresUsed > 0).length === 2, 90_000, "executors on both workers");
    const w2 = spark.workers[1];
    env.setUnitPid("spark-worker", w2.pid); // the node's spark-worker main PID is the loopback worker-2
    const before = await fetchMasterState(spark.webUiUrl, 5_000);
    const registration = before.workers.find((w) => w.host === w2.ip && w.state === "ALIVE");
    expect((await workerJson(registration!.webUiAddress)).executors.length).toBe(1);

    // delete with the recorded outputs, as the engine calls it before the Domain's delete.
    const t0 = Date.now();
    await nixosDeploymentProvider.delete!("worker-2@node", stateOf(inputs("worker-2", 60)));
    const took = (Date.now() - t0) / 1000;

    // When delete returned (and the Domain's delete would stop the VM): not ALIVE at the master, no executor left on it.
    const after = await fetchMasterState(spark.webUiUrl, 5_000);
    expect(after.workers.filter((w) => w.host === w2.ip).map((w) => w.state)).toEqual(["DECOMMISSIONED"]);
    expect((await workerJson(registration!.webUiAddress)).executors).toEqual([]);
    expect(env.remoteCalls()).toContainEqual(pwrCall);
    expect(logged.some((l) => /^\[worker-2\] decommission: done after \d+ s: the master lists the worker as DECOMMISSIONED and it runs no executor$/.test(l))).toBe(true);
    expect(took).toBeLessThan(60);
    // It waited while the decommissioned worker still ran its executor (the task it had started).
    expect(logged).toContainEqual(expect.stringMatching(/^\[worker-2\] decommission: \d+ s: DECOMMISSIONED at the master, still running 1 executor\(s\)$/));

    // The job completes, with the right sum, on the worker that stays.
    expect(await exited).toBe(0);
    expect(stdout).toContain(`NIXSPARK_RESULT sum=${EXPECTED} expected=${EXPECTED}`);
    expect(stderr).not.toMatch(/Job aborted/);
    // worker-1 is untouched.
    expect(after.workers.some((w) => w.host === spark.workers[0].ip && w.state === "ALIVE")).toBe(true);
});

test("a worker that ignores SIGPWR: delete gives up after decommissionTimeoutSeconds with a clear message, and returns", async () => {
    // The node's spark-worker main PID is a process that ignores SIGPWR: Spark never hears of the decommission.
    // It says when the signal arrives, so the test knows delete sent it (a delete that sends nothing would also time out).
    const decoy = spawn("python3", ["-c", "import signal, time\nsignal.signal(signal.SIGPWR, lambda *_: print('got SIGPWR', flush=True))\nprint('ready', flush=True)\nwhile True: time.sleep(300)"], { detached: true, stdio: ["ignore", "pipe", "ignore"] });
    started.push(decoy);
    let said = "";
    await new Promise((r) => decoy.stdout?.once("data", r));
    decoy.stdout?.on("data", (c) => (said += c));
    env.setUnitPid("spark-worker", decoy.pid as number);
    try {
        const t0 = Date.now();
        await nixosDeploymentProvider.delete!("worker-1@node", stateOf(inputs("worker-1", 4)));
        const took = (Date.now() - t0) / 1000;
        expect(took).toBeGreaterThanOrEqual(3);
        expect(took).toBeLessThan(15);
        expect(logged).toContainEqual(expect.stringMatching(/^\[worker-1\] decommission did not finish within 4 s \(deploy.decommissionTimeoutSeconds\): the master still lists it ALIVE \(worker-[^)]+\); going on, the VM is stopped now$/));
        expect(env.remoteCalls()).toContainEqual(pwrCall);
        expect(said).toContain("got SIGPWR"); // the signal reached the unit's main PID
        expect(decoy.exitCode).toBeNull(); // and it was ignored
    } finally {
        const gone = new Promise((r) => decoy.once("exit", r));
        process.kill(-(decoy.pid as number), "SIGKILL");
        await gone;
    }
    expect(livingInGroup(decoy.pid as number)).toEqual([]);
});

test("an unreachable node is not an error; a master's deployment delete does nothing on the node", async () => {
    const calls = env.remoteCalls().length;
    await nixosDeploymentProvider.delete!("master@node", stateOf({ ...inputs("worker-1"), node: "master", spark: { role: "master", webUiUrl: spark.webUiUrl, address: spark.master.ip, unit: "spark-master", timeoutSeconds: 20 } }));
    expect(env.remoteCalls()).toHaveLength(calls);
    expect(logged).toContain("[master] nothing to do on the VM for its NixOS deployment: the VM is deleted with its domain");

    await env.stopSshd();
    const t0 = Date.now();
    await nixosDeploymentProvider.delete!("worker-1@node", stateOf(inputs("worker-1", 60)));
    expect(Date.now() - t0).toBeLessThan(30_000);
    expect(logged).toContainEqual(expect.stringMatching(/^\[worker-1\] decommission: could not signal the worker \(.*port \d+ failed with exit code 255: .*\); going on without it$/));
    // Spark still has worker-1: nothing was decommissioned.
    const m = await fetchMasterState(spark.webUiUrl, 5_000);
    expect(m.workers.some((w) => w.host === spark.workers[0].ip && w.state === "ALIVE")).toBe(true);
});
