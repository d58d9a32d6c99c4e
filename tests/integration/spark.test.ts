// A real Spark standalone cluster on loopback: a master on 127.0.0.1 and two
// workers on 127.0.0.2 and 127.0.0.3 (one address per worker, like VMs), from
// the pyspark package (scripts/install-spark runs if the venv is missing).
// One cluster serves the whole story:
//   1. the health gate passes (the provider's create, directly and after a
//      serialize -> load round trip), and `status` says OK;
//   2. the smoke job computes 333338333350000 with tasks on both workers;
//   3. the test kills worker-2 by its PID: within the master's (shortened)
//      worker timeout the gate fails naming worker-2, `status` exits
//      non-zero naming worker-2, and a refresh (read) counts one worker.
// afterAll stops every process the cluster started, also after a failure.
import * as fs from "node:fs";
import * as path from "node:path";
import { run } from "../../providers/run";
import { sparkHealthProvider, SparkHealthInputs } from "../../providers/sparkHealth";
import { roundTrip } from "../helpers/serialize";
import { livingInGroup, LocalSpark, REPO, startLocalSpark, waitForMaster } from "../helpers/sparkLocal";

jest.setTimeout(300_000);

let spark: LocalSpark;
let outputsFile: string;
const timings: string[] = [];
const timed = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    const t = Date.now();
    try {
        return await fn();
    } finally {
        timings.push(`${what}: ${((Date.now() - t) / 1000).toFixed(1)} s`);
    }
};

beforeAll(async () => {
    spark = await timed("start master + 2 workers", () => startLocalSpark({ workers: 2, workerTimeoutSeconds: 10 }));
    // The stack outputs `status` and `smoke` read, as SparkCluster exports them
    // (no libvirtUri and no ssh: these nodes are not VMs, so those columns are n/a).
    outputsFile = path.join(spark.dir, "outputs.json");
    fs.writeFileSync(
        outputsFile,
        JSON.stringify({
            masterUrl: spark.masterUrl,
            webUiUrl: spark.webUiUrl,
            nodes: [
                { name: "master", role: "master", ip: "127.0.0.1" },
                ...spark.workers.map((w) => ({ name: w.name, role: "worker", ip: w.ip })),
            ],
        }),
    );
});

afterAll(async () => {
    const pids = spark ? [spark.master.pid, ...spark.workers.map((w) => w.pid)] : [];
    await spark?.stop();
    // Nothing left running: every recorded process group is gone.
    for (const pid of pids) expect(livingInGroup(pid)).toEqual([]);
    // eslint-disable-next-line no-console
    console.log(`spark integration timings:\n  ${timings.join("\n  ")}`);
});

const gateInputs = (timeoutSeconds: number): SparkHealthInputs => ({
    masterUrl: spark.masterUrl,
    webUiUrl: spark.webUiUrl,
    expectedWorkers: spark.workers.map((w) => ({ name: w.name, ip: w.ip })),
    timeoutSeconds,
    trigger: { systems: ["test"] },
});

/** Runs a script the way `npm run` does, as its own process (ts-node, without type checking to keep it quick). */
function script(name: string, args: string[], env: Record<string, string> = {}) {
    return run([process.execPath, "-r", "ts-node/register/transpile-only", path.join(REPO, "scripts", name), ...args], {
        cwd: REPO,
        timeoutMs: 240_000,
        allowFailure: true,
        env: { ...process.env, ...env },
    });
}

const quietly = async <T>(fn: () => Promise<T>): Promise<T> => {
    const spy = jest.spyOn(console, "error").mockImplementation(() => undefined);
    try {
        return await fn();
    } finally {
        spy.mockRestore();
    }
};

test("the health gate passes with both workers ALIVE, directly and after serialization", async () => {
    const direct = await timed("gate (direct)", () => quietly(() => sparkHealthProvider.create!(gateInputs(30))));
    expect(direct.outs).toMatchObject({ masterUrl: spark.masterUrl, webUiUrl: spark.webUiUrl, aliveWorkers: 2, totalCores: 2, totalMemoryMiB: 1024, masterStatus: "ALIVE" });
    const loaded = await roundTrip(sparkHealthProvider);
    const again = await timed("gate (after roundTrip)", () => quietly(() => loaded.create!(gateInputs(30))));
    expect(again.outs).toMatchObject({ aliveWorkers: 2, totalCores: 2, totalMemoryMiB: 1024 });
});

test("status reports every node and exits 0", async () => {
    const r = await timed("status (healthy)", () => script("status.ts", ["--outputs", outputsFile]));
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^NODE\s+ROLE\s+ADDRESS\s+LIBVIRT\s+NIXOS SYSTEM\s+SPARK\s+CORES\s+MEMORY/);
    expect(r.stdout).toMatch(/worker-1\s+worker\s+127\.0\.0\.2\s+n\/a\s+n\/a\s+ALIVE\s+0\/1\s+0\/512 MiB/);
    expect(r.stdout).toMatch(/worker-2\s+worker\s+127\.0\.0\.3\s+n\/a\s+n\/a\s+ALIVE/);
    expect(r.stdout).toMatch(/master\s+master\s+127\.0\.0\.1\s+n\/a\s+n\/a\s+master ALIVE\s+2\s+1024 MiB/);
    expect(r.stdout).toMatch(/^OK: /m);
});

test("the smoke job computes 333338333350000 with tasks on both workers", async () => {
    const r = await timed("smoke (spark-submit)", () =>
        script("smoke.ts", ["--master", spark.masterUrl, "--web-ui", spark.webUiUrl, "--local-submit"], spark.env),
    );
    if (r.code !== 0) throw new Error(`smoke exited ${r.code}\n${r.stdout}\n${r.stderr.slice(-4000)}`);
    expect(r.stdout).toMatch(/smoke: OK in \d+ s: sum of squares 1\.\.100000 = 333338333350000; 4 tasks on 2 workers/);
    // The job's own lines say where each task ran: the two workers' web UI addresses.
    const taskLines = r.stderr.split("\n").filter((l) => l.includes("NIXSPARK_TASK"));
    expect(taskLines).toHaveLength(4);
    const ranOn = new Set(taskLines.map((l) => /worker=(\S+)/.exec(l)?.[1]));
    expect(ranOn).toEqual(new Set(spark.workers.map((w) => `${w.ip}:${w.webUiPort}`)));
    expect(r.stderr).toMatch(/NIXSPARK_RESULT sum=333338333350000 expected=333338333350000 partitions=4 workers=2/);
});

test("a killed worker is reported by the gate and by status, naming it, within the worker timeout", async () => {
    const victim = spark.workers[1];
    const killedAt = Date.now();
    await spark.killWorker(victim.name);
    // The master notices the lost connection, or at the latest the missing heartbeats.
    await waitForMaster(spark.webUiUrl, (m) => !m.workers.some((w) => w.host === victim.ip && w.state === "ALIVE"), spark.workerTimeoutSeconds * 1000 + 5_000, "worker-2 to drop");
    timings.push(`master notices the killed worker: ${((Date.now() - killedAt) / 1000).toFixed(1)} s`);

    const err = await timed("gate fails (timeoutSeconds = worker timeout)", () =>
        quietly(() => sparkHealthProvider.create!(gateInputs(spark.workerTimeoutSeconds)).then(() => undefined, (e: Error) => e)),
    );
    expect(err).toBeInstanceOf(Error);
    expect(err!.message).toMatch(/1 of 2 declared worker\(s\) not ALIVE/);
    expect(err!.message).toMatch(/worker-2 \(127\.0\.0\.3\): (DEAD|missing)/);
    expect(err!.message).not.toMatch(/worker-1 \(127\.0\.0\.2\): /);
    expect(Date.now() - killedAt).toBeLessThan((2 * spark.workerTimeoutSeconds + 10) * 1000);

    const r = await timed("status (degraded)", () => script("status.ts", ["--outputs", outputsFile]));
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/worker-2\s+worker\s+127\.0\.0\.3\s+n\/a\s+n\/a\s+(DEAD|MISSING)/);
    expect(r.stdout).toMatch(/DEGRADED: 1 problem\(s\)\n  - worker-2 \(127\.0\.0\.3\): Spark worker (DEAD|missing)/);
    expect(r.stdout).toMatch(/worker-1\s+worker\s+127\.0\.0\.2\s+n\/a\s+n\/a\s+ALIVE/);

    // pulumi refresh: read reports what is there now, without failing.
    const read = await quietly(() => sparkHealthProvider.read!("spark-health:x", { ...gateInputs(30), aliveWorkers: 2 }));
    expect(read.props).toMatchObject({ aliveWorkers: 1, totalCores: 1, totalMemoryMiB: 512 });
});
