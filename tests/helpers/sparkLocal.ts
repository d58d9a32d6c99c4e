// A real Spark standalone cluster on loopback for the tests: one master and
// N workers, Spark from the pyspark package on PyPI (scripts/install-spark).
//
// Every worker gets its own loopback address (127.0.0.2, 127.0.0.3, ...), as
// every worker VM has its own address: the health gate and `status` then
// match workers by address exactly as they do on a real cluster. All of
// 127.0.0.0/8 is loopback on Linux; nothing leaves the machine.
//
// Daemons are long-lived, so they are spawned directly (run() is for
// commands that finish). Each is started detached, in its own process group,
// and its PID is recorded: stop() signals exactly those groups (the JVM and
// the executors and Python workers it forked), on success and on failure.
import type { ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { run } from "../../providers/run";
import { fetchMasterState } from "../../providers/spark/master";
import type { MasterState } from "../../providers/spark/master";

export const REPO = path.resolve(__dirname, "../..");
const VENV = path.join(REPO, ".tools/spark-venv");

export interface LocalSparkNode {
    name: string;
    ip: string;
    pid: number;
    webUiPort: number;
    log: string;
}

export interface LocalSpark {
    sparkHome: string;
    javaHome: string;
    /** The venv's python, which has pyspark: PYSPARK_PYTHON for drivers and executors. */
    python: string;
    masterUrl: string;
    webUiUrl: string;
    master: LocalSparkNode;
    workers: LocalSparkNode[];
    /** Seconds after which the master declares a silent worker DEAD. */
    workerTimeoutSeconds: number;
    dir: string;
    /** Environment for spark-submit against this cluster. */
    env: Record<string, string>;
    /** SIGKILLs one worker's process group (a crash), and waits until it is gone. */
    killWorker(name: string): Promise<void>;
    /** Stops everything this cluster started; safe to call twice. */
    stop(): Promise<void>;
}

export interface LocalSparkOptions {
    workers?: number;
    workerTimeoutSeconds?: number;
    coresPerWorker?: number;
    memoryPerWorker?: string;
    /** How long to wait for the master and the workers to be ALIVE. */
    startTimeoutMs?: number;
    /**
     * spark-defaults.conf for every daemon and for drivers submitted with
     * `env` (as nix/lib/params.nix writes it on the nodes), e.g.
     * { "spark.decommission.enabled": "true" }.
     */
    sparkDefaults?: Record<string, string>;
    /**
     * A configuration directory to start every daemon from as it is (a
     * node's, assembled by its own unit in a contract test), instead of one
     * written here; sparkDefaults and the quiet log4j2 settings then do not apply.
     */
    confDir?: string;
}

/** Runs scripts/install-spark (idempotent; installs into .tools/spark-venv when missing) and returns SPARK_HOME. */
export async function ensureSpark(): Promise<string> {
    const r = await run(["bash", path.join(REPO, "scripts/install-spark")], { timeoutMs: 900_000 });
    const home = r.stdout.trim().split("\n").pop() ?? "";
    if (!fs.existsSync(path.join(home, "bin/spark-class"))) throw new Error(`scripts/install-spark printed ${JSON.stringify(home)}, which has no bin/spark-class`);
    return home;
}

/** JAVA_HOME from the environment or from the `java` on PATH. */
export async function findJavaHome(): Promise<string> {
    if (process.env.JAVA_HOME && fs.existsSync(path.join(process.env.JAVA_HOME, "bin/java"))) return process.env.JAVA_HOME;
    const r = await run(["sh", "-c", 'readlink -f "$(command -v java)"'], { timeoutMs: 10_000, allowFailure: true });
    const java = r.stdout.trim();
    if (r.code !== 0 || !java) throw new Error("Java not found: install a JDK 17 (Debian: openjdk-17-jdk-headless) or set JAVA_HOME");
    return path.dirname(path.dirname(java));
}

export async function freePort(host = "127.0.0.1"): Promise<number> {
    return new Promise((resolve, reject) => {
        const s = net.createServer();
        s.unref();
        s.on("error", reject);
        s.listen(0, host, () => {
            const port = (s.address() as net.AddressInfo).port;
            s.close(() => resolve(port));
        });
    });
}

function tail(file: string, n = 25): string {
    try {
        return fs.readFileSync(file, "utf8").split("\n").filter((l) => l.trim()).slice(-n).join("\n");
    } catch {
        return "(no log)";
    }
}

/** Polls the master until `ok` holds; rejects after timeoutMs with the last state. */
export async function waitForMaster(webUiUrl: string, ok: (m: MasterState) => boolean, timeoutMs: number, what: string): Promise<MasterState> {
    const deadline = Date.now() + timeoutMs;
    let last = "no answer yet";
    while (Date.now() < deadline) {
        try {
            const m = await fetchMasterState(webUiUrl, 2_000);
            if (ok(m)) return m;
            last = `status ${m.status}, workers: ${m.workers.map((w) => `${w.host} ${w.state}`).join(", ") || "none"}`;
        } catch (e) {
            last = (e as Error).message;
        }
        await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error(`timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what}; last: ${last}`);
}

/**
 * PIDs of the processes in a process group that are still alive (not
 * zombies: on this kind of host PID 1 may leave orphaned zombies unreaped,
 * and a zombie runs nothing).
 */
export function livingInGroup(pgid: number): number[] {
    const alive: number[] = [];
    for (const entry of fs.readdirSync("/proc")) {
        if (!/^\d+$/.test(entry)) continue;
        let stat: string;
        try {
            stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8");
        } catch {
            continue; // exited meanwhile
        }
        // pid (comm) state ppid pgrp ...: comm may contain spaces, so split after the last ')'.
        const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        if (Number(rest[2]) === pgid && rest[0] !== "Z" && rest[0] !== "X") alive.push(Number(entry));
    }
    return alive;
}

// Process groups of every cluster still running: killed synchronously if jest exits without stop().
const running = new Set<number>();
process.once("exit", () => {
    for (const pgid of running) {
        try {
            process.kill(-pgid, "SIGKILL");
        } catch {
            /* already gone */
        }
    }
});

export async function startLocalSpark(opts: LocalSparkOptions = {}): Promise<LocalSpark> {
    const { spawn } = require("node:child_process") as typeof import("node:child_process");
    const nWorkers = opts.workers ?? 2;
    const workerTimeoutSeconds = opts.workerTimeoutSeconds ?? 10;
    const startTimeoutMs = opts.startTimeoutMs ?? 120_000;
    const sparkHome = await ensureSpark();
    const javaHome = await findJavaHome();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-spark-"));
    const children = new Map<number, ChildProcess>();

    const baseEnv: Record<string, string> = {
        ...(process.env as Record<string, string>),
        SPARK_HOME: sparkHome,
        JAVA_HOME: javaHome,
        SPARK_LOG_DIR: path.join(dir, "logs"),
        SPARK_CONF_DIR: opts.confDir ?? path.join(dir, "conf"),
        // Small daemons: the machine has 2 cores and runs other tests too.
        SPARK_DAEMON_MEMORY: "256m",
        PYSPARK_PYTHON: path.join(VENV, "bin/python"),
        // The workers' scratch (each executor's spark-<uuid> directory) inside
        // this cluster's directory, not /tmp: a worker the test kills with
        // SIGKILL cannot remove its own, and stop() removes this one.
        SPARK_LOCAL_DIRS: path.join(dir, "local"),
    };
    fs.mkdirSync(baseEnv.SPARK_LOG_DIR, { recursive: true });
    fs.mkdirSync(baseEnv.SPARK_LOCAL_DIRS, { recursive: true });
    if (!opts.confDir) fs.mkdirSync(baseEnv.SPARK_CONF_DIR, { recursive: true });
    if (opts.sparkDefaults && !opts.confDir) {
        fs.writeFileSync(path.join(baseEnv.SPARK_CONF_DIR, "spark-defaults.conf"), Object.entries(opts.sparkDefaults).map(([k, v]) => `${k} ${v}\n`).join(""));
    }
    // Spark logs INFO to stderr by default; WARN keeps the logs readable.
    if (!opts.confDir) fs.writeFileSync(
        path.join(baseEnv.SPARK_CONF_DIR, "log4j2.properties"),
        ["rootLogger.level = warn", "rootLogger.appenderRef.stdout.ref = console", "appender.console.type = Console", "appender.console.name = console",
            "appender.console.target = SYSTEM_ERR", "appender.console.layout.type = PatternLayout", "appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n", ""].join("\n"),
    );

    const start = (name: string, cls: string, args: string[], env: Record<string, string>): LocalSparkNode & { webUiPort: number } => {
        const log = path.join(dir, `${name}.log`);
        const fd = fs.openSync(log, "a");
        const child = spawn(path.join(sparkHome, "bin/spark-class"), [cls, ...args], {
            env: { ...baseEnv, ...env },
            cwd: dir,
            detached: true, // own process group: stop() kills the JVM and everything it forked
            stdio: ["ignore", fd, fd],
        });
        fs.closeSync(fd);
        if (!child.pid) throw new Error(`could not start ${name} (${cls})`);
        children.set(child.pid, child);
        running.add(child.pid);
        child.on("exit", () => running.delete(child.pid as number));
        return { name, ip: "", pid: child.pid, webUiPort: 0, log };
    };

    const killGroup = async (pid: number, signal: NodeJS.Signals, waitMs: number): Promise<boolean> => {
        const child = children.get(pid);
        if (!child || child.exitCode !== null || child.signalCode !== null) return true;
        const exited = new Promise<boolean>((r) => {
            child.once("exit", () => r(true));
            setTimeout(() => r(false), waitMs).unref();
        });
        try {
            process.kill(-pid, signal);
        } catch {
            return true; // the group is gone
        }
        return exited;
    };

    const stopAll = async () => {
        const pids = [...children.keys()];
        const results = await Promise.all(pids.map((p) => killGroup(p, "SIGTERM", 10_000)));
        await Promise.all(pids.filter((_, i) => !results[i]).map((p) => killGroup(p, "SIGKILL", 5_000)));
        // Executors and Python workers are in the same groups; make sure none lingers.
        for (const p of pids) {
            const deadline = Date.now() + 10_000;
            while (livingInGroup(p).length > 0 && Date.now() < deadline) {
                try {
                    process.kill(-p, "SIGKILL");
                } catch {
                    break; // the group is gone
                }
                await new Promise((r) => setTimeout(r, 100));
            }
            running.delete(p);
        }
    };

    try {
        const masterPort = await freePort();
        const masterWebUiPort = await freePort();
        const masterUrl = `spark://127.0.0.1:${masterPort}`;
        const webUiUrl = `http://127.0.0.1:${masterWebUiPort}`;
        const master = start("master", "org.apache.spark.deploy.master.Master", ["--host", "127.0.0.1", "--port", `${masterPort}`, "--webui-port", `${masterWebUiPort}`], {
            SPARK_LOCAL_IP: "127.0.0.1",
            // A worker that stops sending heartbeats is DEAD after this (default 60 s).
            SPARK_MASTER_OPTS: `-Dspark.worker.timeout=${workerTimeoutSeconds}`,
        });
        master.ip = "127.0.0.1";
        master.webUiPort = masterWebUiPort;
        await waitForMaster(webUiUrl, (m) => m.status === "ALIVE", startTimeoutMs, "the master to be ALIVE").catch((e: Error) => {
            throw new Error(`${e.message}\nmaster log (${master.log}):\n${tail(master.log)}`);
        });

        const workers: LocalSparkNode[] = [];
        for (let i = 1; i <= nWorkers; i++) {
            const ip = `127.0.0.${i + 1}`;
            const webUiPort = await freePort();
            const w = start(
                `worker-${i}`,
                "org.apache.spark.deploy.worker.Worker",
                [masterUrl, "--host", ip, "--cores", `${opts.coresPerWorker ?? 1}`, "--memory", opts.memoryPerWorker ?? "512m", "--webui-port", `${webUiPort}`],
                {
                    SPARK_LOCAL_IP: ip,
                    SPARK_WORKER_DIR: path.join(dir, `worker-${i}`),
                    // A worker heartbeats every spark.worker.timeout / 4 of ITS OWN setting: with the
                    // default (60 s) it would send one every 15 s and a master with a shorter timeout
                    // would drop it again and again. Both sides get the same value.
                    SPARK_WORKER_OPTS: `-Dspark.worker.timeout=${workerTimeoutSeconds}`,
                },
            );
            w.ip = ip;
            w.webUiPort = webUiPort;
            workers.push(w);
        }
        const ips = workers.map((w) => w.ip);
        await waitForMaster(webUiUrl, (m) => ips.every((ip) => m.workers.some((w) => w.host === ip && w.state === "ALIVE")), startTimeoutMs, `${nWorkers} workers to be ALIVE`).catch(
            (e: Error) => {
                throw new Error(`${e.message}\n${workers.map((w) => `${w.name} log (${w.log}):\n${tail(w.log)}`).join("\n")}`);
            },
        );

        let stopped = false;
        return {
            sparkHome,
            javaHome,
            python: baseEnv.PYSPARK_PYTHON,
            masterUrl,
            webUiUrl,
            master,
            workers,
            workerTimeoutSeconds,
            dir,
            env: {
                SPARK_HOME: sparkHome,
                JAVA_HOME: javaHome,
                SPARK_LOCAL_IP: "127.0.0.1",
                SPARK_CONF_DIR: baseEnv.SPARK_CONF_DIR,
                PYSPARK_PYTHON: baseEnv.PYSPARK_PYTHON,
            },
            async killWorker(name: string) {
                const w = workers.find((x) => x.name === name);
                if (!w) throw new Error(`no worker ${name}`);
                if (!(await killGroup(w.pid, "SIGKILL", 10_000))) throw new Error(`${name} (pid ${w.pid}) did not die on SIGKILL`);
            },
            async stop() {
                if (stopped) return;
                stopped = true;
                await stopAll();
                if (!process.env.NIXSPARK_KEEP_SPARK_LOGS) fs.rmSync(dir, { recursive: true, force: true });
            },
        };
    } catch (e) {
        await stopAll();
        throw e;
    }
}
