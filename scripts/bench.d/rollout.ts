// `scripts/bench --only rollout`: what a rolling update of 1+N nodes costs
// with maxParallel 1, 4 and 8, and what Spark's verification adds per batch
// (issue 11). No libvirt, no Pulumi engine: the rollout is driven the way
// tests/providers/rollout.test.ts drives it, with real parts:
//
//   - a real Spark standalone master + N workers on loopback
//     (tests/helpers/sparkLocal.ts), worker i at 127.0.0.(i+1);
//   - N+1 fake NixOS nodes, each a real sshd in its own network namespace
//     (tests/helpers/sshTarget.ts) running the fake target behind the
//     recording nixos-rebuild stand-in (tests/fixtures/nixos-rebuild-standin);
//   - the NixosDeployment provider's real update (providers/nixosDeployment.ts):
//     ssh, switch, `readlink -f /run/current-system`, and, when its `spark`
//     input is set, the wait until the master lists the node ALIVE again;
//   - the order of cluster/rollout.ts rolloutOrder (master, canary, batches
//     of maxParallel): a batch's nodes update concurrently and a batch starts
//     when the whole batch before succeeded, as the Pulumi engine runs
//     SparkCluster's dependsOn chain.
//
// A switch costs a fixed time: the recording stand-in has no delay of its
// own, so the deployments call it through a wrapper (written here, in a
// temporary directory) that sleeps --update-seconds first, as the e2e
// stand-in does with NIXSPARK_E2E_REBUILD_SECONDS (a build that takes a fixed
// time). Activating a new worker system restarts that node's Spark worker (the
// fake target's on-switch hook): the daemon is stopped with SIGTERM and started
// again with the same command line and environment, as systemd restarts a unit
// whose definition changed. The new daemon registers with the master under a
// new id, which is what verification waits for. The master's daemon is not
// restarted (all workers would have to reconnect; its verification only asks
// that the master is ALIVE).
//
// Every daemon, namespace and sshd started here is stopped by PID / name at
// the end, also on failure and on SIGINT/SIGTERM.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { rolloutOrder } from "../../cluster/rollout";
import { NixosDeploymentInputs, nixosDeploymentProvider, SparkCheck } from "../../providers/nixosDeployment";
import { fetchMasterState } from "../../providers/sparkHealth";
import { livingInGroup, LocalSpark, startLocalSpark } from "../../tests/helpers/sparkLocal";
import { createDeployment, SshTargetEnv, STANDIN_DIR } from "../../tests/helpers/sshTarget";

export interface RolloutBenchOptions {
    /** Rounds; each round updates the cluster once per maxParallel, with and without verification. Medians are reported. */
    repeat: number;
    /** Seconds every switch takes before it touches the node (the wrapper's sleep). */
    updateSeconds: number;
    /** maxParallel values compared; the last one is the reference of the ratios. */
    maxParallel: number[];
    workers: number;
    out?: string;
}

const log = (m: string) => process.stderr.write(`bench: ${m}\n`);
const sec = (ms: number) => (Math.round(ms / 100) / 10).toFixed(1);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];

/** Two systems per role, used in turn, so that every update is a real switch; CREATED is what the nodes start with. */
const store = (c: string, name: string) => `/nix/store/${c.repeat(32)}-nixos-system-${name}-24.11`;
const CREATED = { master: store("0", "bench-master"), worker: store("1", "bench-worker") };
const SYSTEMS = [
    { master: store("a", "bench-master"), worker: store("b", "bench-worker") },
    { master: store("c", "bench-master"), worker: store("d", "bench-worker") },
];
/** Seconds a node gets until Spark agrees (deploy.rollout.verifyTimeoutSeconds; the stack's default is 300). */
const VERIFY_SECONDS = 120;
/** spark.worker.timeout on master and workers: the stack's default (nix/modules/options.nix), heartbeats every 7.5 s. */
const WORKER_TIMEOUT_SECONDS = 30;
/**
 * JVM options of the loopback daemons (SPARK_DAEMON_JAVA_OPTS): all N+1 fake
 * nodes share this host's cores, so that a batch of daemons starting at once
 * does not measure the host's CPU more than the rollout, the JIT stops at C1
 * and the GC is the serial one. A worker's start costs about 2.7 s of CPU
 * instead of 6.5 s here; what Spark sees (registration, heartbeats) is the same.
 */
const LIGHT_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC";

interface Node {
    name: string;
    env: SshTargetEnv;
    spark: SparkCheck;
    /** The worker daemon's restart state (workers only). */
    state?: string;
}

interface WorkerState {
    pid: number;
    argv: string[];
    env: Record<string, string>;
    cwd: string;
    log: string;
    restarts: number;
    /** Milliseconds the last restart waited for the old daemon to exit. */
    stopMs?: number;
}

/**
 * The on-switch effect on a worker node: restart its loopback Spark worker.
 * Runs as `fake-target`'s hook, i.e. inside the node's network namespace; it
 * is started through nsenter in this process's network and mount namespaces,
 * so the new daemon listens on loopback like the old one. It waits for the
 * old daemon (its whole process group) to exit, starts the new one detached
 * (own session, output to the worker's log) and records its PID, then exits:
 * like `systemctl restart` of a simple unit, it does not wait for the daemon
 * to be ready.
 */
const RESTART_JS = `"use strict";
const fs = require("fs");
const { spawn } = require("child_process");
const file = process.argv[2];
const st = JSON.parse(fs.readFileSync(file, "utf8"));
const pause = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
function living(pgid) {
    for (const e of fs.readdirSync("/proc")) {
        if (!/^\\d+$/.test(e)) continue;
        let s;
        try { s = fs.readFileSync("/proc/" + e + "/stat", "utf8"); } catch { continue; }
        const rest = s.slice(s.lastIndexOf(")") + 2).split(" ");
        if (Number(rest[2]) === pgid && rest[0] !== "Z" && rest[0] !== "X") return true;
    }
    return false;
}
const t0 = Date.now();
try { process.kill(-st.pid, "SIGTERM"); } catch {}
while (living(st.pid) && Date.now() - t0 < 15000) pause(25);
if (living(st.pid)) {
    try { process.kill(-st.pid, "SIGKILL"); } catch {}
    while (living(st.pid) && Date.now() - t0 < 20000) pause(25);
}
const stopMs = Date.now() - t0;
const fd = fs.openSync(st.log, "a");
const child = spawn(st.argv[0], st.argv.slice(1), { env: st.env, cwd: st.cwd, detached: true, stdio: ["ignore", fd, fd] });
if (!child.pid) { console.error("restart: could not start " + st.argv[0]); process.exit(1); }
Object.assign(st, { pid: child.pid, restarts: st.restarts + 1, stopMs });
fs.writeFileSync(file + ".tmp", JSON.stringify(st));
fs.renameSync(file + ".tmp", file);
child.unref();
process.exit(0);
`;

function readState(file: string): WorkerState {
    return JSON.parse(fs.readFileSync(file, "utf8")) as WorkerState;
}

/** The exact command line, environment and directory of a running process (the worker's JVM: spark-class execs it). */
function processSpec(pid: number): { argv: string[]; env: Record<string, string>; cwd: string } {
    const split = (f: string) => fs.readFileSync(`/proc/${pid}/${f}`, "utf8").split("\0").filter((x) => x !== "");
    const env: Record<string, string> = {};
    for (const kv of split("environ")) {
        const i = kv.indexOf("=");
        if (i > 0) env[kv.slice(0, i)] = kv.slice(i + 1);
    }
    return { argv: split("cmdline"), env, cwd: fs.readlinkSync(`/proc/${pid}/cwd`) };
}

/** CPU idle share of the whole machine over `ms` (from /proc/stat). */
async function idleShare(ms: number): Promise<number> {
    const read = () => {
        const f = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
        return { idle: f[3] + (f[4] ?? 0), total: f.reduce((a, b) => a + b, 0) };
    };
    const a = read();
    await new Promise((r) => setTimeout(r, ms));
    const b = read();
    return b.total > a.total ? (b.idle - a.idle) / (b.total - a.total) : 1;
}

interface Round {
    repeat: number;
    maxParallel: number;
    verify: boolean;
    ms: number;
    batches: { nodes: string[]; ms: number }[];
    /** Machine idle share in the second before the round started. */
    idleBefore: number;
}

export async function rolloutOnly(o: RolloutBenchOptions): Promise<void> {
    if (process.getuid?.() !== 0) throw new Error("--only rollout needs root (network namespaces for the fake nodes)");
    const begin = Date.now();
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "nxs-benchr-"));
    const envs: SshTargetEnv[] = [];
    const states: string[] = [];
    let spark: LocalSpark | undefined;
    const providerLog: string[] = [];
    const consoleError = console.error;
    let restoreEnv: () => void = () => undefined;

    // Restarted workers are not LocalSpark's children: stop them by the PIDs recorded in their state files.
    const stopRestarted = async () => {
        for (const f of states) {
            let st: WorkerState;
            try {
                st = readState(f);
            } catch {
                continue;
            }
            if (st.restarts === 0) continue; // still LocalSpark's own process: its stop() handles it
            for (const [sig, waitMs] of [["SIGTERM", 10_000], ["SIGKILL", 5_000]] as const) {
                if (livingInGroup(st.pid).length === 0) break;
                try {
                    process.kill(-st.pid, sig);
                } catch {
                    break;
                }
                const deadline = Date.now() + waitMs;
                while (livingInGroup(st.pid).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
            }
        }
    };
    const killRestartedSync = () => {
        for (const f of states) {
            try {
                const st = readState(f);
                if (st.restarts > 0) process.kill(-st.pid, "SIGKILL");
            } catch {
                /* gone */
            }
        }
        fs.rmSync(tmp, { recursive: true, force: true });
        if (spark) fs.rmSync(spark.dir, { recursive: true, force: true }); // its daemons were killed by its own exit hook
    };
    process.setMaxListeners(Math.max(process.getMaxListeners(), o.workers + 20)); // one exit hook per fake node
    // On exit (also after SIGINT/SIGTERM below) the helpers' own exit hooks remove namespaces and kill LocalSpark's groups.
    process.once("exit", killRestartedSync);
    const onSignal = (sig: NodeJS.Signals) => {
        log(`${sig}: cleaning up`);
        process.exit(sig === "SIGINT" ? 130 : 143);
    };
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);

    const results: any = {
        date: new Date().toISOString(),
        options: o,
        host: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, memGiB: Math.round(os.totalmem() / 1024 ** 3) },
        workers: o.workers,
        switchSeconds: o.updateSeconds,
        verifyTimeoutSeconds: VERIFY_SECONDS,
        workerTimeoutSeconds: WORKER_TIMEOUT_SECONDS,
        rounds: [] as Round[],
    };
    try {
        log(`starting a Spark master and ${o.workers} workers on loopback`);
        const daemonOpts = process.env.SPARK_DAEMON_JAVA_OPTS;
        process.env.SPARK_DAEMON_JAVA_OPTS = [daemonOpts, LIGHT_JVM].filter((x) => x).join(" ");
        try {
            spark = await startLocalSpark({ workers: o.workers, workerTimeoutSeconds: WORKER_TIMEOUT_SECONDS, memoryPerWorker: "512m", startTimeoutMs: 180_000 });
        } finally {
            if (daemonOpts === undefined) delete process.env.SPARK_DAEMON_JAVA_OPTS;
            else process.env.SPARK_DAEMON_JAVA_OPTS = daemonOpts;
        }
        results.sparkHome = spark.sparkHome;
        log(`${o.workers + 1} fake NixOS nodes (sshd in their own network namespaces)`);
        for (let i = 0; i <= o.workers; i++) envs.push(await SshTargetEnv.create());

        // The switch: the recording stand-in after a fixed sleep (not for a rollback).
        const rebuild = path.join(tmp, "nixos-rebuild");
        fs.writeFileSync(
            rebuild,
            `#!/bin/sh\n# scripts/bench --only rollout: a switch that takes ${o.updateSeconds} s before it reaches the node\ncase " $* " in *" --rollback "*) ;; *) sleep ${o.updateSeconds} ;; esac\nexec '${path.join(STANDIN_DIR, "nixos-rebuild")}' "$@"\n`,
            { mode: 0o755 },
        );
        const restartJs = path.join(tmp, "restart-worker.js");
        fs.writeFileSync(restartJs, RESTART_JS);

        const nodes: Node[] = envs.map((env, i) => {
            if (i === 0) {
                return { name: "master", env, spark: { role: "master", webUiUrl: spark!.webUiUrl, address: spark!.master.ip, unit: "spark-master", timeoutSeconds: VERIFY_SECONDS } };
            }
            const w = spark!.workers[i - 1];
            const state = path.join(tmp, `worker-${i}.json`);
            const spec = processSpec(w.pid);
            fs.writeFileSync(state, JSON.stringify({ pid: w.pid, ...spec, log: w.log, restarts: 0 } satisfies WorkerState));
            states.push(state);
            const hook = ["nsenter", `--net=/proc/${process.pid}/ns/net`, `--mount=/proc/${process.pid}/ns/mnt`, "--", process.execPath, restartJs, state];
            for (const s of SYSTEMS) env.onSwitch(s.worker, hook);
            return {
                name: `worker-${i}`,
                env,
                state,
                spark: { role: "worker", webUiUrl: spark!.webUiUrl, address: w.ip, cores: 1, memoryMiB: 512, unit: "spark-worker", timeoutSeconds: VERIFY_SECONDS },
            };
        });
        const inputsOf = (n: Node, system: string, verify: boolean): NixosDeploymentInputs =>
            n.env.deploymentInputs({
                node: n.name,
                configuration: n.spark.role === "master" ? "bench-master" : "bench-worker",
                expectedSystem: system,
                flavour: "legacy",
                rebuildCommand: rebuild,
                switchTimeoutSeconds: 120,
                spark: verify ? n.spark : undefined,
            });

        // One stand-in log and systems directory for all nodes; the provider's progress goes to a buffer.
        restoreEnv = envs[0].useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
        console.error = (...args: unknown[]) => {
            providerLog.push(`${new Date().toISOString()} ${args.map(String).join(" ")}`);
        };

        log("creating the deployments (first contact, host keys; untimed, each confirmed by Spark)");
        envs[0].setSystem("bench-master", CREATED.master);
        envs[0].setSystem("bench-worker", CREATED.worker);
        const outs = new Map<string, Record<string, unknown>>();
        await Promise.all(
            nodes.map(async (n) => {
                const created = await createDeployment(inputsOf(n, n.spark.role === "master" ? CREATED.master : CREATED.worker, true));
                outs.set(n.name, created as unknown as Record<string, unknown>);
            }),
        );

        const [master, ...workers] = nodes;
        const batchesOf = (mp: number) => rolloutOrder(master, workers, { maxParallel: mp, canary: true });
        results.batches = Object.fromEntries(o.maxParallel.map((mp) => [mp, batchesOf(mp).map((b) => b.map((n) => n.name))]));

        /** Until every worker has exactly one ALIVE registration that is not in `stale`, then until the machine is quiet. */
        const settle = async (stale: Set<string>): Promise<number> => {
            const deadline = Date.now() + 180_000;
            for (;;) {
                let last = "";
                try {
                    const m = await fetchMasterState(spark!.webUiUrl, 5_000);
                    const bad = workers.filter((n) => {
                        const alive = m.workers.filter((w) => w.host === n.spark.address && w.state === "ALIVE");
                        return alive.length !== 1 || stale.has(alive[0].id);
                    });
                    if (m.status === "ALIVE" && bad.length === 0) break;
                    last = `master ${m.status}; not settled: ${bad.map((n) => n.name).join(", ")}`;
                } catch (e) {
                    last = (e as Error).message;
                }
                if (Date.now() > deadline) throw new Error(`the Spark cluster did not settle after a rollout: ${last}`);
                await new Promise((r) => setTimeout(r, 500));
            }
            // The restarted JVMs keep compiling for a while: start the next round on a quiet machine (at most 10 s).
            let idle = 0;
            const quietBy = Date.now() + 10_000;
            do idle = await idleShare(1000);
            while (idle < 0.8 && Date.now() < quietBy);
            return idle;
        };
        const aliveIds = async () => new Set((await fetchMasterState(spark!.webUiUrl, 5_000)).workers.filter((w) => w.state === "ALIVE").map((w) => w.id));

        let turn = 0;
        let idleBefore = 0;
        const rolloutOnce = async (repeat: number, mp: number, verify: boolean): Promise<Round> => {
            const target = SYSTEMS[turn++ % 2];
            const systemOf = (n: Node) => (n.spark.role === "master" ? target.master : target.worker);
            envs[0].setSystem("bench-master", target.master);
            envs[0].setSystem("bench-worker", target.worker);
            const before = await aliveIds();
            const restarts = new Map(workers.map((n) => [n.name, readState(n.state!).restarts]));
            log(`round ${repeat + 1}/${o.repeat}: maxParallel ${mp}, ${verify ? "with" : "without"} Spark verification`);
            const batches: Round["batches"] = [];
            const t0 = performance.now();
            for (const batch of batchesOf(mp)) {
                const b0 = performance.now();
                const done = await Promise.allSettled(
                    batch.map(async (n) => {
                        const r = await nixosDeploymentProvider.update!(`${n.name}-id`, outs.get(n.name)!, inputsOf(n, systemOf(n), verify) as unknown as Record<string, unknown>);
                        outs.set(n.name, r.outs as Record<string, unknown>);
                    }),
                );
                batches.push({ nodes: batch.map((n) => n.name), ms: performance.now() - b0 });
                const failed = done.flatMap((d, i) => (d.status === "rejected" ? [`${batch[i].name}: ${(d.reason as Error).message}`] : []));
                if (failed.length > 0) throw new Error(`the rollout failed (later batches not started):\n${failed.join("\n")}`);
            }
            const ms = performance.now() - t0;
            // Every node runs its new system and every worker daemon was restarted by its switch exactly once.
            for (const n of nodes) if (n.env.currentSystem() !== systemOf(n)) throw new Error(`${n.name} runs ${n.env.currentSystem()}, expected ${systemOf(n)}`);
            for (const n of workers) {
                const st = readState(n.state!);
                if (st.restarts !== restarts.get(n.name)! + 1) throw new Error(`${n.name}: its Spark worker was restarted ${st.restarts - restarts.get(n.name)!} times by the switch, expected once`);
            }
            log(`  ${sec(ms)} s (batches ${batches.map((b) => sec(b.ms)).join(" + ")} s)`);
            const round = { repeat, maxParallel: mp, verify, ms, batches, idleBefore };
            idleBefore = await settle(before); // untimed: every worker re-registered (matters for the rounds without verification)
            return round;
        };

        idleBefore = await settle(new Set());
        const started = Date.now();
        results.setupMs = started - begin;
        for (let r = 0; r < o.repeat; r++) {
            // Alternate which goes first, so that a drift of the host does not favour one side.
            const order = r % 2 === 0 ? [true, false] : [false, true];
            for (const mp of o.maxParallel) for (const verify of order) results.rounds.push(await rolloutOnce(r, mp, verify));
        }
        results.roundsMs = Date.now() - started;
        results.loadAverage = os.loadavg();
        results.stopMs = states.map((f) => readState(f).stopMs);
        results.summary = summarise(results.rounds, o, results.batches);
        if (o.out) fs.writeFileSync(o.out, JSON.stringify(results, null, 2) + "\n");
        process.stdout.write(rolloutReport(results, o) + "\n");
    } catch (e) {
        if (providerLog.length > 0) process.stderr.write(`bench: the provider's last lines:\n${providerLog.slice(-60).join("\n")}\n`);
        if (o.out) fs.writeFileSync(o.out, JSON.stringify({ ...results, error: (e as Error).message }, null, 2) + "\n");
        throw e;
    } finally {
        console.error = consoleError;
        restoreEnv();
        await stopRestarted().catch((e: Error) => log(`stopping restarted workers: ${e.message}`));
        // LocalSpark's own daemons (the master, workers never restarted) by their PIDs.
        await spark?.stop().catch((e: Error) => log(`spark stop: ${e.message}`));
        for (const env of envs) await env.cleanup().catch((e: Error) => log(`${env.ns}: ${e.message}`));
        fs.rmSync(tmp, { recursive: true, force: true });
        process.removeListener("exit", killRestartedSync);
        process.removeListener("SIGINT", onSignal);
        process.removeListener("SIGTERM", onSignal);
    }
}

interface Summary {
    maxParallel: number;
    batches: number;
    withMs: number;
    withoutMs: number;
    withAll: number[];
    withoutAll: number[];
    /** (T_with - T_without) / batches, from the medians. */
    verifyPerBatchMs: number;
}

function summarise(rounds: Round[], o: RolloutBenchOptions, batches: Record<number, string[][]>): Summary[] {
    return o.maxParallel.map((mp) => {
        const withAll = rounds.filter((r) => r.maxParallel === mp && r.verify).map((r) => r.ms);
        const withoutAll = rounds.filter((r) => r.maxParallel === mp && !r.verify).map((r) => r.ms);
        const n = batches[mp].length;
        const withMs = median(withAll);
        const withoutMs = median(withoutAll);
        return { maxParallel: mp, batches: n, withMs, withoutMs, withAll, withoutAll, verifyPerBatchMs: (withMs - withoutMs) / n };
    });
}

function rolloutReport(r: any, o: RolloutBenchOptions): string {
    const s = r.summary as Summary[];
    const ref = s[s.length - 1];
    const all = (xs: number[]) => (xs.length > 1 ? ` (${xs.map(sec).join(", ")})` : "");
    const lines = [
        `Measured ${r.date} on ${r.host.cpus} cores (${r.host.cpu}), ${r.host.memGiB} GiB: update of 1+${r.workers} nodes (canary on), switch fixed at ${r.switchSeconds} s, ` +
            `each worker's Spark daemon restarted by its switch; median of ${o.repeat} round(s).`,
        "",
        "| maxParallel | batches | with Spark verification | without | verification per batch |",
        "| --- | --- | --- | --- | --- |",
        ...s.map((x) => `| ${x.maxParallel} | ${x.batches} | ${sec(x.withMs)} s${all(x.withAll)} | ${sec(x.withoutMs)} s${all(x.withoutAll)} | ${sec(x.verifyPerBatchMs)} s |`),
        "",
        "| ratio | with verification | without |",
        "| --- | --- | --- |",
        ...s.slice(0, -1).map((x) => `| T(${x.maxParallel})/T(${ref.maxParallel}) | ${(x.withMs / ref.withMs).toFixed(2)} | ${(x.withoutMs / ref.withoutMs).toFixed(2)} |`),
        "",
        `Batches: ${s.map((x) => `maxParallel ${x.maxParallel}: ${r.batches[x.maxParallel].map((b: string[]) => b.length).join("+")}`).join("; ")} nodes.`,
        `Setup (Spark, ${r.workers + 1} sshd namespaces, the creates) ${sec(r.setupMs)} s; the ${r.rounds.length} rounds with the waits between them ${sec(r.roundsMs)} s; load average at the end ${(r.loadAverage as number[]).map((x) => x.toFixed(1)).join(", ")}.`,
        `Stopping a worker daemon in its switch took ${(r.stopMs as number[]).map((x) => sec(x)).join(", ")} s (last restart of each).`,
    ];
    return lines.join("\n");
}
