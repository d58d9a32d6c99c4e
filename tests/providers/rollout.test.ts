// Rollouts against a real Spark master + 3 workers on loopback and four
// fake NixOS nodes (a real sshd each, in its own network namespace, with the
// recording nixos-rebuild stand-in): the NixosDeployment provider switches a
// node and waits until Spark agrees, and the nodes are driven in the order
// SparkCluster's dependsOn chain gives (cluster/rollout.ts rolloutOrder:
// master, canary, batches; a node starts when every node of the batch before
// succeeded, and never after a failure, as the Pulumi engine does with
// dependents of a failed resource).
//
// The fake node of worker-i "runs" the loopback worker 127.0.0.(i+1): a test
// gives a system an effect on it when it is activated (on-switch hook of
// tests/fixtures/nixos-rebuild-standin/fake-target). The broken system
// freezes the worker daemon (SIGSTOP: it no longer talks to the master);
// activating the previous system again resumes it (SIGCONT), as systemd
// would start the previous generation's daemon.
import { rolloutOrder } from "../../cluster/rollout";
import { fetchMasterState } from "../../providers/spark/master";
import { NixosDeploymentInputs, nixosDeploymentProvider } from "../../providers/nixosDeployment";
import { checkInputs } from "../../providers/deployment/inputs";
import { SparkCheck, sparkVerdict } from "../../providers/spark/verify";
import { LocalSpark, startLocalSpark } from "../helpers/sparkLocal";
import { createDeployment, SshTargetEnv } from "../helpers/sshTarget";

jest.setTimeout(180_000);

const SYS_A = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-dev-24.11";
const MASTER_B = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-dev-master-24.11";
const WORKER_B = "/nix/store/cccccccccccccccccccccccccccccccc-nixos-system-dev-worker-24.11";
const MASTER_C = "/nix/store/dddddddddddddddddddddddddddddddd-nixos-system-dev-master-24.11";
const WORKER_BROKEN = "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-nixos-system-dev-worker-24.11";
const VERIFY_SECONDS = 6;
const JOURNAL = ["Dec 01 12:00:01 dev-worker-1 spark-worker[811]: INFO Worker: Connecting to master 10.77.0.10:7077...", "Dec 01 12:00:11 dev-worker-1 spark-worker[811]: WARN Worker: Failed to connect to master"];

interface Node {
    name: string;
    env: SshTargetEnv;
    spark: SparkCheck;
}

let spark: LocalSpark;
const envs: SshTargetEnv[] = [];
let nodes: Node[] = [];
let restoreEnv: () => void = () => undefined;
let logged: string[] = [];

beforeAll(async () => {
    try {
        spark = await startLocalSpark({ workers: 3, workerTimeoutSeconds: 10 });
        for (let i = 0; i < 4; i++) envs.push(await SshTargetEnv.create());
    } catch (e) {
        await cleanUp();
        throw e;
    }
    nodes = envs.map((env, i) => {
        const master = i === 0;
        const sparkNode = master ? spark.master : spark.workers[i - 1];
        return {
            name: master ? "master" : `worker-${i}`,
            env,
            spark: master
                ? { role: "master", webUiUrl: spark.webUiUrl, address: sparkNode.ip, unit: "spark-master", timeoutSeconds: VERIFY_SECONDS }
                : { role: "worker", webUiUrl: spark.webUiUrl, address: sparkNode.ip, cores: 1, memoryMiB: 512, unit: "spark-worker", timeoutSeconds: VERIFY_SECONDS },
        };
    });
    // The stack created these nodes: first contact records their host keys (and each create is verified by Spark too).
    const restore = envs[0].useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
    const quiet = jest.spyOn(console, "error").mockImplementation(() => undefined);
    try {
        envs[0].setSystem("dev-master", SYS_A);
        envs[0].setSystem("dev-worker", SYS_A);
        await Promise.all(nodes.map((n) => createDeployment(inputsOf(n, SYS_A))));
    } finally {
        quiet.mockRestore();
        restore();
    }
});

async function cleanUp(): Promise<void> {
    // A worker left frozen by a failed test must not keep its group alive: resume it first, then stop everything by PID.
    for (const w of spark?.workers ?? []) {
        try {
            process.kill(w.pid, "SIGCONT");
        } catch {
            /* gone */
        }
    }
    await spark?.stop();
    for (const env of envs) await env.cleanup();
}
afterAll(cleanUp);

beforeEach(() => {
    for (const n of nodes) n.env.resetNode(SYS_A);
    envs[0].clearStandinLog();
    // One stand-in log and one systems directory for all four nodes: calls are told apart by --target-host.
    restoreEnv = envs[0].useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
    logged = [];
    jest.spyOn(console, "error").mockImplementation((...args: unknown[]) => {
        logged.push(args.map(String).join(" "));
    });
});
afterEach(() => {
    restoreEnv();
    jest.restoreAllMocks();
});

function inputsOf(n: Node, expectedSystem: string): NixosDeploymentInputs {
    return n.env.deploymentInputs({ node: n.name, configuration: n.spark.role === "master" ? "dev-master" : "dev-worker", expectedSystem, flavour: "legacy", spark: n.spark });
}

/** The recorded outputs of a node deployed earlier with SYS_A (what `olds` are in an update). */
function deployedWith(n: Node, system: string): Record<string, unknown> {
    return { ...inputsOf(n, system), currentSystem: system, flavourUsed: "legacy" };
}

interface Step {
    node: string;
    start: number;
    end: number;
    error?: Error;
}

/**
 * Updates every node to its new system in the order of SparkCluster's
 * dependsOn chain: a node starts when all nodes of the batch before it
 * succeeded; a node whose dependency failed is never started.
 */
async function rollout(systems: { master: string; worker: string }, opts: { maxParallel: number; canary: boolean }): Promise<{ steps: Step[]; batches: string[][] }> {
    const [master, ...workers] = nodes;
    const batches = rolloutOrder(master, workers, opts);
    const steps: Step[] = [];
    for (const batch of batches) {
        const results = await Promise.all(
            batch.map(async (n): Promise<Step> => {
                const start = Date.now();
                const system = n.spark.role === "master" ? systems.master : systems.worker;
                try {
                    await nixosDeploymentProvider.update!(`${n.name}-id`, deployedWith(n, SYS_A), inputsOf(n, system) as unknown as Record<string, unknown>);
                    return { node: n.name, start, end: Date.now() };
                } catch (e) {
                    return { node: n.name, start, end: Date.now(), error: e as Error };
                }
            }),
        );
        steps.push(...results);
        if (results.some((r) => r.error)) break; // dependents of a failed resource do not run
    }
    return { steps, batches: batches.map((b) => b.map((n) => n.name)) };
}

/** The stand-in's switch calls per node (by --target-host), with their times in ms. */
function switchTimes(): Map<string, number[]> {
    const byHost = new Map<string, number[]>();
    for (const c of envs[0].switches()) {
        const target = c.argv[c.argv.indexOf("--target-host") + 1];
        const node = nodes.find((n) => target === `${n.env.user}@${n.env.host}`);
        if (!node) throw new Error(`a switch for an unknown target ${target}`);
        byHost.set(node.name, [...(byHost.get(node.name) ?? []), c.time * 1000]);
    }
    return byHost;
}

describe("a rollout through the dependsOn chain", () => {
    test("master < canary < batches by the recorded switch times; no batch larger than maxParallel; every node confirmed by Spark", async () => {
        envs[0].setSystem("dev-master", MASTER_B);
        envs[0].setSystem("dev-worker", WORKER_B);
        const { steps, batches } = await rollout({ master: MASTER_B, worker: WORKER_B }, { maxParallel: 2, canary: true });
        expect(batches).toEqual([["master"], ["worker-1"], ["worker-2", "worker-3"]]);
        expect(steps.filter((s) => s.error)).toEqual([]);
        for (const n of nodes) expect(n.env.currentSystem()).toBe(n.spark.role === "master" ? MASTER_B : WORKER_B);

        // One switch per node, and each batch's switches began after every node of the batch before was switched AND verified.
        const times = switchTimes();
        expect([...times.keys()].sort()).toEqual(["master", "worker-1", "worker-2", "worker-3"]);
        for (const [, t] of times) expect(t).toHaveLength(1);
        const first = (name: string) => (times.get(name) as number[])[0];
        const done = (name: string) => (steps.find((s) => s.node === name) as Step).end;
        expect(first("master")).toBeLessThan(first("worker-1"));
        expect(done("master")).toBeLessThanOrEqual(first("worker-1"));
        expect(Math.max(done("worker-1"))).toBeLessThanOrEqual(Math.min(first("worker-2"), first("worker-3")));
        // At no moment did more than maxParallel workers switch at once, and the batch of two did run together.
        const overlapping = (a: Step, b: Step) => a.start < b.end && b.start < a.end;
        const workerSteps = steps.filter((s) => s.node !== "master");
        const maxConcurrent = Math.max(...workerSteps.map((s) => workerSteps.filter((o) => overlapping(s, o)).length));
        expect(maxConcurrent).toBe(2);
        expect(overlapping(steps.find((s) => s.node === "worker-2") as Step, steps.find((s) => s.node === "worker-3") as Step)).toBe(true);

        // Each node waited for Spark's word.
        expect(logged).toContain(`[master] Spark agrees: master ALIVE at ${spark.webUiUrl}`);
        for (const w of ["worker-1", "worker-2", "worker-3"]) {
            expect(logged.some((l) => l.startsWith(`[${w}] Spark agrees: worker ALIVE at 127.0.0.`) && l.includes("with 1 cores and 512 MiB"))).toBe(true);
        }
    });

    test("maxParallel 1: a canary whose switch leaves its worker unable to reach the master is rolled back on that node only; the update fails naming it, what Spark said and the journal; the other workers are never switched", async () => {
        envs[0].setSystem("dev-master", MASTER_C);
        envs[0].setSystem("dev-worker", WORKER_BROKEN);
        const canary = nodes[1];
        const pid = spark.workers[0].pid;
        canary.env.onSwitch(WORKER_BROKEN, ["kill", "-STOP", String(pid)]);
        canary.env.onSwitch(SYS_A, ["kill", "-CONT", String(pid)]);
        canary.env.setJournal("spark-worker", JOURNAL);

        const { steps } = await rollout({ master: MASTER_C, worker: WORKER_BROKEN }, { maxParallel: 1, canary: true });
        expect(steps.map((s) => [s.node, s.error ? "failed" : "ok"])).toEqual([
            ["master", "ok"],
            ["worker-1", "failed"],
        ]);
        const message = (steps[1].error as Error).message;
        expect(message).toMatch(new RegExp(`^NixosDeployment worker-1 \\(root@${canary.env.host.replace(/\./g, "\\.")}\\): Spark did not confirm the worker within ${VERIFY_SECONDS} s after the switch \\(deploy.rollout.verifyTimeoutSeconds\\)`));
        // What Spark reported: the registration at its address went silent (or, on a slow
        // machine, the master already gave up on it: spark.worker.timeout is 10 s here).
        expect(message).toMatch(
            /: (the worker at 127\.0\.0\.2 \(worker-[^)]+\) has not sent the master a heartbeat since the switch|no ALIVE worker at 127\.0\.0\.2: the newest registration is DEAD \(worker-[^)]+\)); master status ALIVE/,
        );
        expect(message).toContain(`The node was rolled back to its previous generation and runs ${SYS_A}.`);
        // Verified again after the rollback: the previous system resumed the daemon and Spark says so.
        expect(message).toMatch(/After the rollback Spark reports: worker ALIVE at 127\.0\.0\.2 \(worker-[^)]+\) with 1 cores and 512 MiB\./);
        expect(message).toContain(`Last lines of journalctl -u spark-worker on the node:\n${JOURNAL.join("\n")}`);

        // The canary: switched, then back; the journal was read with sudo.
        expect(canary.env.currentSystem()).toBe(SYS_A);
        expect(canary.env.remoteCalls()).toContainEqual({ words: ["journalctl", "-u", "spark-worker", "-n", "20", "--no-pager"], sudo: true, env: {} });
        const times = switchTimes();
        expect(times.get("worker-1")).toHaveLength(2); // the switch and its rollback
        expect(envs[0].switches().filter((c) => c.argv.includes("--rollback")).map((c) => c.argv[c.argv.indexOf("--target-host") + 1])).toEqual([`root@${canary.env.host}`]);
        // Later batches never started: their rebuild stand-in was not called, their nodes and Spark workers untouched.
        expect(times.has("worker-2")).toBe(false);
        expect(times.has("worker-3")).toBe(false);
        for (const n of nodes.slice(2)) {
            expect(n.env.currentSystem()).toBe(SYS_A);
            expect(n.env.remoteCalls()).toEqual([]);
        }
        // The master kept its new system (it was confirmed), and all three workers are ALIVE again.
        expect(nodes[0].env.currentSystem()).toBe(MASTER_C);
        const m = await fetchMasterState(spark.webUiUrl, 5_000);
        expect(["127.0.0.2", "127.0.0.3", "127.0.0.4"].map((ip) => m.workers.some((w) => w.host === ip && w.state === "ALIVE"))).toEqual([true, true, true]);
    });

    test("Spark's verdict checks the worker's cores and memory and that there is exactly one ALIVE worker at the address (on the live master's answer)", async () => {
        const m = await fetchMasterState(spark.webUiUrl, 5_000);
        const w2 = nodes[2].spark;
        expect(sparkVerdict(w2, m)).toMatchObject({ ok: true });
        expect(sparkVerdict({ ...w2, cores: 2 }, m)).toMatchObject({ ok: false, said: expect.stringMatching(/^the worker at 127\.0\.0\.3 \(.+\) offers 1 cores, expected 2; master status ALIVE/) });
        expect(sparkVerdict({ ...w2, memoryMiB: 1024 }, m)).toMatchObject({ ok: false, said: expect.stringMatching(/offers 512 MiB, expected 1024/) });
        expect(sparkVerdict({ ...w2, address: "127.0.0.9" }, m)).toMatchObject({ ok: false, said: expect.stringMatching(/^no ALIVE worker at 127\.0\.0\.9: no worker registered/) });
        const twice = { ...m, workers: [...m.workers, ...m.workers.filter((w) => w.host === "127.0.0.3").map((w) => ({ ...w, id: `${w.id}-again` }))] };
        expect(sparkVerdict(w2, twice)).toMatchObject({ ok: false, said: expect.stringMatching(/^2 ALIVE workers at 127\.0\.0\.3, expected exactly one/) });
        expect(sparkVerdict(nodes[0].spark, undefined, "connect ECONNREFUSED")).toMatchObject({ ok: false, said: "the master did not answer: connect ECONNREFUSED" });
    });

    test("check names a bad spark input; an update that only brings new provider code switches nothing but records the spark input (so delete can decommission)", async () => {
        const inp = inputsOf(nodes[1], SYS_A) as unknown as Record<string, unknown>;
        expect(checkInputs(inp)).toEqual([]);
        expect(checkInputs({ ...inp, spark: { ...nodes[1].spark, role: "driver" } })).toEqual([{ property: "spark", reason: 'spark.role must be "master" or "worker"' }]);
        expect(checkInputs({ ...inp, spark: { ...nodes[1].spark, webUiUrl: "spark://x:7077" } })[0].reason).toMatch(/^spark.webUiUrl must be http:\/\/HOST:PORT/);
        expect(checkInputs({ ...inp, spark: { ...nodes[1].spark, timeoutSeconds: 0 } })[0].reason).toBe("spark.timeoutSeconds must be at least 1");

        const { spark: _none, ...before } = deployedWith(nodes[1], SYS_A); // recorded before rollouts existed
        const r = await nixosDeploymentProvider.update!("worker-1-id", before, inp);
        expect(r.outs).toEqual({ ...before, spark: nodes[1].spark });
        expect(envs[0].switches()).toEqual([]);
        expect(nodes[1].env.remoteCalls()).toEqual([]);
    });
});
