// `npm run smoke [-- OPTIONS]`: prove that the live cluster computes.
//
// Submits scripts/jobs/sum_of_squares.py (sum of i*i for 1..100000 over 4
// partitions = 333338333350000) through the Spark master, then checks the
// result and, from the job's own output, that its tasks ran on at least two
// different workers.
//
// Where spark-submit runs:
//   - on the master over SSH (default): the job file is copied to the master
//     with the stack's key and known hosts, then `spark-submit` runs there;
//   - locally with --local-submit, or whenever SPARK_HOME is set: the local
//     $SPARK_HOME/bin/spark-submit talks to the master directly (tests).
//
// Options:
//   --stack NAME          the Pulumi stack (default: the selected one)
//   --outputs FILE        read the stack outputs from a JSON file instead of pulumi
//   --master URL          spark://HOST:PORT (or $NIXSPARK_MASTER_URL); overrides the masterUrl output
//   --web-ui URL          the master's web UI (default: the webUiUrl output, else http://HOST:8080)
//   --local-submit        run spark-submit here (needs SPARK_HOME; see scripts/install-spark)
//   --remote-submit       run spark-submit on the master over SSH even if SPARK_HOME is set
//   --min-workers N       distinct workers the tasks must reach (default 2, or fewer if the cluster has fewer)
//   --executor-memory M   per executor (default 512m: fits the smallest worker)
//   --python PATH         PYSPARK_PYTHON for a local submit (default: $PYSPARK_PYTHON, else the venv next to SPARK_HOME)
//   --timeout SECONDS     for the whole job (default 600)
// Exit codes: 0 the job is right, 1 it failed or was wrong, 2 bad usage or unreadable outputs.
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { run } from "../providers/run";
import { sshArgv } from "../providers/ssh";
import { fetchMasterState } from "../providers/spark/master";
import { SMOKE_EXPECTED_SUM, SMOKE_PARTITIONS, StackOutputs, verifySmokeOutput } from "../cluster/sparkStatus";
import { loadStackOutputs, parseArgs, UsageError } from "./status";

const JOB = path.resolve(__dirname, "jobs/sum_of_squares.py");

/**
 * spark-submit on a node, by its system profile path rather than PATH: a
 * non-login SSH command's PATH is the shell's business, and this one is the
 * Spark package's own (nix/modules/spark.nix gives it priority over any
 * Python package's), with the daemons' SPARK_CONF_DIR from the environment.
 */
export const NODE_SPARK_SUBMIT = "/run/current-system/sw/bin/spark-submit";

/**
 * What spark-submit takes from a node's shell environment
 * (nix/modules/spark.nix environment.variables: the configuration directory
 * with the secret, and the Python with the stack's packages). A command run
 * over ssh has them (NixOS's bash reads /etc/bashrc, hence
 * /etc/set-environment, for ssh commands), but `sudo -u spark` resets the
 * environment and they are not among what sudo keeps: run as spark, Spark
 * would read its package's own configuration, without the secret, and
 * PySpark would run the bare Python.
 */
export const SUBMIT_ENV = ["SPARK_CONF_DIR", "PYSPARK_PYTHON"] as const;

/** SUBMIT_ENV's values in `env`'s output (the node's ssh session), for carrying them across sudo. */
export function submitEnvOf(envOutput: string): Record<string, string> {
    const out: Record<string, string> = {};
    for (const line of envOutput.split("\n")) {
        const i = line.indexOf("=");
        const k = line.slice(0, i);
        if (i > 0 && (SUBMIT_ENV as readonly string[]).includes(k) && line.length > i + 1) out[k] = line.slice(i + 1);
    }
    return out;
}

/**
 * The words before spark-submit's own: as `spark` through `sudo -n` with the
 * session's SUBMIT_ENV carried by `env` (the deploy user's sudo rule allows
 * every command, env included), and `env` unsetting `unset` and setting
 * `set` for spark-submit; nothing when there is nothing to do.
 */
export function submitPrefix(asSpark: boolean, sessionEnv: Record<string, string>, o: { unset?: string[]; set?: Record<string, string> } = {}): string[] {
    const carried = asSpark ? SUBMIT_ENV.filter((k) => sessionEnv[k] !== undefined).map((k) => `${k}=${sessionEnv[k]}`) : [];
    const words = [...(o.unset ?? []).flatMap((k) => ["-u", k]), ...carried, ...Object.entries(o.set ?? {}).map(([k, v]) => `${k}=${v}`)];
    return [...(asSpark ? ["sudo", "-n", "-u", "spark"] : []), ...(words.length > 0 ? ["env", ...words] : [])];
}

/**
 * spark-submit settings that make the spread over workers deterministic:
 * one 1-core executor per worker (the standalone master spreads executors
 * over workers by default), and no task is scheduled before all of them have
 * registered, so the first round of tasks lands on every worker.
 */
export function submitConf(masterUrl: string, workers: number, executorMemory: string): string[] {
    const conf = {
        "spark.executor.cores": "1",
        "spark.cores.max": String(Math.max(1, workers)),
        "spark.executor.memory": executorMemory,
        "spark.deploy.spreadOut": "true",
        "spark.scheduler.minRegisteredResourcesRatio": "1.0",
        "spark.scheduler.maxRegisteredResourcesWaitingTime": "120s",
        "spark.ui.enabled": "false",
    };
    return ["--master", masterUrl, "--name", "nixspark-smoke", ...Object.entries(conf).flatMap(([k, v]) => ["--conf", `${k}=${v}`])];
}

function say(s: string) {
    process.stderr.write(`smoke: ${s}\n`);
}

/** The python that has pyspark, for a local submit: the venv that holds SPARK_HOME (scripts/install-spark's layout). */
function defaultPython(sparkHome: string): string {
    const venvPython = path.resolve(sparkHome, "../../../../bin/python");
    return fs.existsSync(venvPython) ? venvPython : "python3";
}

export async function main(argv: string[]): Promise<number> {
    let outputs: StackOutputs | undefined;
    try {
        const a = parseArgs(
            argv,
            ["local-submit", "remote-submit", "help"],
            ["stack", "outputs", "master", "web-ui", "min-workers", "executor-memory", "python", "timeout"],
        );
        if (a.help) {
            process.stdout.write(fs.readFileSync(__filename, "utf8").split("\n").filter((l) => l.startsWith("//")).map((l) => l.slice(3)).join("\n") + "\n");
            return 0;
        }
        const local = !a["remote-submit"] && (Boolean(a["local-submit"]) || Boolean(process.env.SPARK_HOME));
        const masterOverride = (a.master as string | undefined) ?? process.env.NIXSPARK_MASTER_URL;
        if (!masterOverride || !local || a.outputs || a.stack) outputs = await loadStackOutputs({ outputsFile: a.outputs as string | undefined, stack: a.stack as string | undefined });
        const masterUrl = masterOverride ?? (outputs as StackOutputs).masterUrl;
        const m = /^spark:\/\/([^/:]+):(\d+)$/.exec(masterUrl);
        if (!m) throw new UsageError(`master URL ${JSON.stringify(masterUrl)} is not spark://HOST:PORT`);
        const masterHost = m[1];
        const webUiUrl = (a["web-ui"] as string | undefined) ?? (masterOverride ? `http://${masterHost}:8080` : (outputs as StackOutputs).webUiUrl);
        const timeoutMs = (a.timeout === undefined ? 600 : Number(a.timeout)) * 1000;
        if (!(timeoutMs > 0)) throw new UsageError(`--timeout must be a positive number of seconds`);

        // How many workers to spread over: the ALIVE ones the master reports, else the declared ones.
        const declared = outputs ? outputs.nodes.filter((n) => n.role === "worker").length : undefined;
        let alive: number | undefined;
        try {
            alive = (await fetchMasterState(webUiUrl, 10_000)).aliveWorkers;
        } catch (e) {
            say(`could not ask the master's web UI (${(e as Error).message}); assuming ${declared ?? 2} worker(s)`);
        }
        const workers = alive ?? declared ?? 2;
        const minWorkers = a["min-workers"] !== undefined ? Number(a["min-workers"]) : Math.min(2, declared ?? workers);
        if (!(minWorkers >= 1)) throw new UsageError("--min-workers must be at least 1");
        if (workers < minWorkers) {
            say(`FAILED: the master reports ${workers} ALIVE worker(s), the smoke test needs tasks on ${minWorkers}; run \`npm run status\` to see which are missing`);
            return 1;
        }
        const conf = submitConf(masterUrl, workers, (a["executor-memory"] as string | undefined) ?? "512m");

        const started = Date.now();
        let stdout: string;
        const echo = (line: string, stream: "stdout" | "stderr") => process.stderr.write(`${stream === "stdout" ? "  | " : "  ! "}${line}\n`);
        if (local) {
            const sparkHome = process.env.SPARK_HOME;
            if (!sparkHome || !fs.existsSync(path.join(sparkHome, "bin/spark-submit"))) {
                throw new UsageError(`a local submit needs SPARK_HOME with bin/spark-submit (got ${JSON.stringify(sparkHome ?? "")}); run: export SPARK_HOME=$(scripts/install-spark)`);
            }
            const python = (a.python as string | undefined) ?? process.env.PYSPARK_PYTHON ?? defaultPython(sparkHome);
            say(`submitting ${path.basename(JOB)} to ${masterUrl} from here (${workers} executor(s), one per worker)`);
            const r = await run([path.join(sparkHome, "bin/spark-submit"), ...conf, JOB], {
                timeoutMs,
                env: { ...process.env, PYSPARK_PYTHON: python, PYSPARK_DRIVER_PYTHON: python },
                onLine: echo,
                allowFailure: true,
            });
            stdout = r.stdout;
            if (r.code !== 0) say(`spark-submit exited with code ${r.code}`);
        } else {
            if (!outputs?.ssh) throw new UsageError('submitting on the master needs the stack output "ssh" ({user, port, identityFile, knownHostsFile}); or use --local-submit with SPARK_HOME');
            const target = { host: masterHost, ...outputs.ssh };
            const remoteJob = `/tmp/nixspark-smoke-${crypto.randomBytes(6).toString("hex")}.py`;
            say(`copying the job to ${outputs.ssh.user}@${masterHost}:${remoteJob}`);
            await run(sshArgv(target, "strict", ["tee", remoteJob]), { input: fs.readFileSync(JOB, "utf8"), timeoutMs: 60_000 });
            try {
                say(`running spark-submit on the master against ${masterUrl} (${workers} executor(s), one per worker)`);
                // With Spark authentication the configuration holding the secret is
                // readable by root and the Spark users' group (nix/modules/spark.nix).
                // The deploy user is in that group on today's roles, but submits as
                // `spark` (its sudo needs no password), which works on roles from
                // before the group too.
                const asSpark = outputs.security?.authenticate === true && outputs.ssh.user !== "root";
                const sessionEnv = asSpark ? submitEnvOf((await run(sshArgv(target, "strict", ["env"]), { timeoutMs: 60_000 })).stdout) : {};
                const submit = [...submitPrefix(asSpark, sessionEnv), NODE_SPARK_SUBMIT, ...conf, remoteJob];
                const r = await run(sshArgv(target, "strict", submit), { timeoutMs, onLine: echo, allowFailure: true });
                stdout = r.stdout;
                if (r.code === 127) say("spark-submit is not on the master's PATH: the master role must install Spark (environment.systemPackages)");
                else if (r.code !== 0) say(`spark-submit on the master exited with code ${r.code}`);
            } finally {
                await run(sshArgv(target, "strict", ["rm", "-f", remoteJob]), { timeoutMs: 30_000, allowFailure: true }).catch(() => undefined);
            }
        }

        const v = verifySmokeOutput(stdout, minWorkers);
        const secs = Math.round((Date.now() - started) / 1000);
        if (!v.ok) {
            say(`FAILED after ${secs} s:`);
            for (const p of v.problems) say(`  - ${p}`);
            return 1;
        }
        const spread = v.workers.map((w) => `${w.worker} (partition${w.partitions.length > 1 ? "s" : ""} ${w.partitions.join(",")})`).join(", ");
        process.stdout.write(`smoke: OK in ${secs} s: sum of squares 1..100000 = ${SMOKE_EXPECTED_SUM}; ${SMOKE_PARTITIONS} tasks on ${v.workers.length} workers: ${spread}\n`);
        return 0;
    } catch (e) {
        say(`${e instanceof UsageError ? "" : "FAILED: "}${(e as Error).message}`);
        return e instanceof UsageError ? 2 : 1;
    }
}

if (require.main === module) {
    main(process.argv.slice(2)).then((code) => process.exit(code));
}
