// `nixspark submit <job.py|job.jar> [args…]`: run a job of one's own on the
// cluster. The job (and its --py-files / --jars) go to a private directory on
// the master, spark-submit runs there against the cluster with the cluster's
// own configuration (SPARK_CONF_DIR, its secret included); the directory is
// removed afterwards.
//
// Client deploy mode (the default; the only one for Python, as Spark's
// standalone master runs no Python drivers): the driver runs on the master
// and its output streams here; the exit code is spark-submit's.
//
// Cluster deploy mode (JVM jobs): the driver runs on a worker the master
// picks. Spark's standalone Client hands the worker the jar's path and the
// worker's DriverRunner fetches it from its own filesystem, so the job and
// its --jars are copied to the same path on every node first. spark-submit
// only submits (its --verbose output carries the driver id: "Driver
// successfully submitted as driver-…"); the driver is then followed through
// the master's JSON to its end (cli/drivers.ts), and its stdout/stderr are
// read from the worker that ran it (<work dir>/<driver id>/) over ssh.
// The Client hands the driver its own environment; SPARK_LOCAL_IP in it
// (the master's address, from spark-env.sh) would make a driver on a worker
// bind to the master's address. So spark-submit runs without the node's
// spark-env.sh (SPARK_ENV_LOADED=1) and without SPARK_LOCAL_IP: the driver
// inherits its worker's own address from the worker daemon instead.
// With authentication, a cluster-mode driver would get no secret: the worker
// drops -Dspark.authenticate.secret from the java options the Client sends
// (Spark's CommandUtils, so it is not on a command line) and passes it in
// the environment, where a standalone driver does not look (its
// SecurityManager requires the property). So the driver reads it from its
// node's own configuration: a java argument file that the roles' unit
// writes next to spark-defaults.conf (nix/modules/spark.nix,
// driver-secret.args, readable by root and the Spark users' group) is added
// to spark.driver.extraJavaOptions as @file. The JVM expands it: the secret
// is in no command line and in no "Launch Command" the worker logs
// (tests/integration/submit.test.ts greps processes, logs and work
// directories for it).
//
// Who runs it: like the smoke job (scripts/smoke.ts), the ssh user, or
// `spark` through `sudo -n` when Spark authentication is on and the ssh user
// is not root (the configuration holding the secret is readable by root and
// the Spark users' group).
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { Command, Option } from "commander";
import type { VerbContext } from "../main";
import { EXIT, GlobalOptions, positiveInt, UsageError } from "../common";
import { run } from "../../providers/run";
import { asRoot, remoteArgv, scpArgv, targetOf } from "../remote";
import { loadStack, requireSsh } from "../stack";
import { describeFailure } from "../parallel";
import { NODE_SPARK_SUBMIT, submitEnvOf, submitPrefix } from "../../scripts/smoke";
import { driverIdOf, followDriver, NODE_SPARK_WORK_DIR, nodeOfWorker } from "../drivers";
import { historyAppUrl } from "../applications";
import type { StackNode } from "../../cluster/sparkStatus";

export type DeployMode = "client" | "cluster";

/** "k=v" for --conf; the key must look like a Spark property. */
export function parseConf(kv: string): [string, string] {
    const m = /^([A-Za-z][A-Za-z0-9_.-]*)=(.*)$/s.exec(kv);
    if (!m) throw new UsageError(`--conf ${JSON.stringify(kv)} must be KEY=VALUE, e.g. --conf spark.executor.memory=1g`);
    return [m[1], m[2]];
}

/** The spark-submit argv on the master (before quoting for its shell). */
export function submitArgv(o: {
    asSpark: boolean;
    /** The master's ssh session's SUBMIT_ENV (scripts/smoke.ts), carried across sudo when asSpark. */
    sessionEnv?: Record<string, string>;
    masterUrl: string;
    name: string;
    deployMode?: DeployMode;
    mainClass?: string;
    conf: [string, string][];
    pyFiles: string[];
    jars?: string[];
    job: string;
    args: string[];
}): string[] {
    const cluster = o.deployMode === "cluster";
    return [
        // Cluster mode: no spark-env.sh, no SPARK_LOCAL_IP for the driver to inherit (see the top of this file).
        ...submitPrefix(o.asSpark, o.sessionEnv ?? {}, cluster ? { unset: ["SPARK_LOCAL_IP"], set: { SPARK_ENV_LOADED: "1" } } : {}),
        NODE_SPARK_SUBMIT,
        "--master",
        o.masterUrl,
        "--deploy-mode",
        cluster ? "cluster" : "client",
        // Spark's standalone Client prints the driver id at INFO only (--verbose).
        ...(cluster ? ["--verbose"] : []),
        "--name",
        o.name,
        ...(o.mainClass ? ["--class", o.mainClass] : []),
        ...o.conf.flatMap(([k, v]) => ["--conf", `${k}=${v}`]),
        ...(o.pyFiles.length > 0 ? ["--py-files", o.pyFiles.join(",")] : []),
        ...(o.jars && o.jars.length > 0 ? ["--jars", o.jars.join(",")] : []),
        o.job,
        ...o.args,
    ];
}

/** The java argument file with the secret, in a node's configuration directory (nix/modules/spark.nix). */
export const DRIVER_SECRET_ARGS = "driver-secret.args";
/** The roles' configuration directory with authentication (nix/modules/options.nix security.confDir), when the master does not say. */
export const NODE_SPARK_CONF_DIR = "/run/nixspark/spark-conf";

/**
 * The JVM options Spark 3.5 needs on Java 17 (its launcher's
 * JavaModuleOptions). spark-submit adds them to the JVMs it starts itself,
 * but Spark's standalone Client does not add them to a cluster-mode
 * driver's command, which then dies at SparkContext start
 * (IllegalAccessError on sun.nio.ch.DirectBuffer).
 */
export const JAVA_MODULE_OPTIONS = [
    "-XX:+IgnoreUnrecognizedVMOptions",
    ...["java.lang", "java.lang.invoke", "java.lang.reflect", "java.io", "java.net", "java.nio", "java.util", "java.util.concurrent", "java.util.concurrent.atomic", "jdk.internal.ref", "sun.nio.ch", "sun.nio.cs", "sun.security.action", "sun.util.calendar"].map(
        (p) => `--add-opens=java.base/${p}=ALL-UNNAMED`,
    ),
    "--add-opens=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
    "-Djdk.reflect.useDirectMethodHandle=false",
];

/**
 * --conf for a cluster-mode driver: spark.driver.extraJavaOptions gets the
 * module options and, with authentication, the secret's argument file in
 * the nodes' configuration directory, after the user's own options.
 */
export function clusterDriverConf(conf: [string, string][], secretConfDir: string | undefined): [string, string][] {
    const key = "spark.driver.extraJavaOptions";
    const own = conf.filter(([k]) => k === key).map(([, v]) => v);
    const secret = secretConfDir === undefined ? [] : [`@${secretConfDir.replace(/\/+$/, "")}/${DRIVER_SECRET_ARGS}`];
    return [...conf.filter(([k]) => k !== key), [key, [...JAVA_MODULE_OPTIONS, ...own, ...secret].join(" ")]];
}

/** The application id Spark's driver logs ("Connected to Spark cluster with app ID app-…"). */
export function applicationId(line: string): string | undefined {
    return /app ID (app-[0-9]+-[0-9]+)/.exec(line)?.[1];
}

interface SubmitOptions {
    class?: string;
    conf?: string[];
    pyFiles?: string;
    jars?: string;
    deployMode: string;
    name?: string;
    timeout: string;
    packages?: string;
}

function list(v: string | undefined): string[] {
    return (v ?? "").split(",").filter((f) => f !== "");
}

/** What the flags ask for, checked before anything is contacted. */
export function checkSubmit(job: string, o: SubmitOptions): { kind: "py" | "jar"; deployMode: DeployMode; pyFiles: string[]; jars: string[] } {
    if (o.packages !== undefined) {
        throw new UsageError("--packages is not supported: the nodes may have no internet to fetch from Maven; download the jar and its dependencies here and pass them with --jars a.jar,b.jar");
    }
    const kind = job.endsWith(".py") ? "py" : job.endsWith(".jar") ? "jar" : undefined;
    if (!kind) throw new UsageError(`<job>: ${job} is neither a .py nor a .jar file`);
    if (o.deployMode !== "client" && o.deployMode !== "cluster") throw new UsageError(`--deploy-mode must be client or cluster, got ${JSON.stringify(o.deployMode)}`);
    const deployMode = o.deployMode as DeployMode;
    const pyFiles = list(o.pyFiles);
    const jars = list(o.jars);
    if (kind === "py") {
        if (deployMode === "cluster") {
            throw new UsageError("--deploy-mode cluster: Spark's standalone master runs no Python drivers (spark-submit refuses: cluster deploy mode is not supported for python applications on standalone clusters); submit Python jobs in client mode (the default), where the driver runs on the master");
        }
        if (o.class !== undefined) throw new UsageError("--class is for JVM jobs (a .jar); a Python job has no main class");
    } else if (pyFiles.length > 0) throw new UsageError("--py-files is for Python jobs; give a JVM job's other jars with --jars");
    for (const j of jars) if (!j.endsWith(".jar")) throw new UsageError(`--jars: ${j} is not a .jar file`);
    for (const [flag, f] of [["<job>", job], ...pyFiles.map((p) => ["--py-files", p]), ...jars.map((p) => ["--jars", p])]) {
        if (!fs.existsSync(f) || !fs.statSync(f).isFile()) throw new UsageError(`${flag}: no such local file ${JSON.stringify(f)}`);
    }
    const names = [job, ...pyFiles, ...jars].map((f) => path.basename(f));
    if (new Set(names).size !== names.length) throw new UsageError(`two of the job's files are named alike (${names.join(", ")}); they would overwrite each other on the nodes`);
    return { kind, deployMode, pyFiles, jars };
}

export function register(program: Command, ctx: VerbContext): Command {
    return program
        .command("submit")
        .summary("run a PySpark or JVM job on the cluster")
        .description(
            "Run a job on the cluster: copy it to the master, run spark-submit there against the cluster with the cluster's configuration (its secret included), and exit 0 when the job succeeded, 1 when it failed. " +
                "Client deploy mode (the default): the driver runs on the master and its output streams here. " +
                "Cluster deploy mode (JVM jobs only, as Spark standalone allows): the job and its --jars are copied to the same path on every node (a worker fetches the jar from its own disk), the driver runs on a worker, is followed through the master until it ends, and its stdout and stderr are then printed from that worker. " +
                "The application id and its history-server page are printed at the end.",
        )
        .argument("<job>", "the job: a Python file (.py) or a jar (.jar)")
        .argument("[args...]", "arguments for the job (after --)")
        .option("--class <main-class>", "a JVM job's main class (default: the jar manifest's Main-Class)")
        .option("--conf <key=value>", "a Spark property for this job (repeatable)", (v: string, acc: string[] | undefined) => [...(acc ?? []), v])
        .option("--py-files <files>", "comma-separated local .py/.zip/.egg files the job imports; copied along")
        .option("--jars <jars>", "comma-separated local jars for the driver and executors; copied along (bring dependencies this way: there is no --packages, the nodes may have no internet)")
        .option("--deploy-mode <mode>", "client (driver on the master) or cluster (driver on a worker; JVM jobs only)", "client")
        .option("--name <name>", "the application's name (default: the job file's name)")
        .option("--timeout <seconds>", "for the whole job", "3600")
        .addOption(new Option("--packages <coordinates>").hideHelp())
        .addHelpText(
            "after",
            "\nExamples:\n  nixspark submit wordcount.py -- /data/input.txt\n  nixspark submit --deploy-mode cluster --class com.example.Main job.jar -- arg1\n" +
                "Cluster mode follows the driver through the master's web UI (the webUiUrl\n" +
                "output) from here. A job reads files on the shared data directory\n" +
                "(nixspark:data) by their path on the nodes.",
        )
        .action(async (job: string, args: string[], o: SubmitOptions, cmd: Command) =>
            ctx.act("submit", async () => {
                const timeoutMs = positiveInt("--timeout", o.timeout) * 1000;
                const conf = (o.conf ?? []).map(parseConf);
                const { kind, deployMode, pyFiles, jars } = checkSubmit(job, o);

                const stack = await loadStack(cmd.optsWithGlobals<GlobalOptions>());
                const ssh = requireSsh(stack);
                const master = stack.outputs.nodes.find((n) => n.role === "master");
                if (!master) throw new UsageError(`the stack's "nodes" output has no node with role master`);
                const asSpark = Boolean(stack.outputs.security?.authenticate) && ssh.user !== "root";
                const dir = `/tmp/nixspark-submit-${crypto.randomBytes(6).toString("hex")}`;
                const say = (s: string) => ctx.io.err(`submit: ${s}\n`);
                const remote = async (node: StackNode, words: string[], what: string) => {
                    const r = await run(remoteArgv(targetOf(ssh, node), words), { timeoutMs: 60_000, allowFailure: true });
                    if (r.code !== 0) throw new Error(`${what} on ${node.name} failed: ${describeFailure(r.code, r.stderr)}`);
                    return r.stdout;
                };
                // Cluster mode: every node gets the files at the same path (a worker fetches the jar from its own disk).
                const targets = deployMode === "cluster" ? stack.outputs.nodes : [master];
                const files = [job, ...pyFiles, ...jars];
                const copied: StackNode[] = [];
                try {
                    await Promise.all(
                        targets.map(async (node) => {
                            // World-readable directory, so that `spark` (sudo, or the worker) reads the job; its name is random.
                            await remote(node, ["mkdir", "-p", "-m", "755", dir], "creating the job's directory");
                            copied.push(node);
                            const c = await run(scpArgv(targetOf(ssh, node), files, `${dir}/`), { timeoutMs: 300_000, allowFailure: true });
                            if (c.code !== 0) throw new Error(`copying the job to ${node.name} failed: ${describeFailure(c.code, c.stderr)}`);
                            await remote(node, ["chmod", "-R", "a+rX", dir], "making the job readable");
                        }),
                    );
                    // The master's ssh session's Spark environment (nix/modules/spark.nix): carried across sudo,
                    // and its configuration directory names the cluster-mode driver's secret file.
                    const authenticate = Boolean(stack.outputs.security?.authenticate);
                    const sessionEnv = asSpark || (deployMode === "cluster" && authenticate) ? submitEnvOf(await remote(master, ["env"], "reading the Spark environment")) : {};
                    const submitConf = deployMode === "cluster" ? clusterDriverConf(conf, authenticate ? (sessionEnv.SPARK_CONF_DIR ?? NODE_SPARK_CONF_DIR) : undefined) : conf;
                    const argv = submitArgv({
                        asSpark,
                        sessionEnv,
                        masterUrl: stack.outputs.masterUrl,
                        name: o.name ?? path.basename(job, kind === "py" ? ".py" : ".jar"),
                        deployMode,
                        mainClass: o.class,
                        conf: submitConf,
                        pyFiles: pyFiles.map((f) => `${dir}/${path.basename(f)}`),
                        jars: jars.map((f) => `${dir}/${path.basename(f)}`),
                        job: `${dir}/${path.basename(job)}`,
                        args,
                    });
                    say(`running ${path.basename(job)} on ${master.name} against ${stack.outputs.masterUrl} in ${deployMode} mode${asSpark ? " as spark" : ""}`);
                    const started = Date.now();
                    let appId: string | undefined;
                    let driverId: string | undefined;
                    const r = await run(remoteArgv(targetOf(ssh, master), argv), {
                        timeoutMs,
                        allowFailure: true,
                        onLine: (line, stream) => {
                            if (deployMode === "cluster") {
                                driverId ??= driverIdOf(line);
                                return; // spark-submit's verbose output: shown only when the submission fails
                            }
                            if (stream === "stdout") ctx.io.out(`${line}\n`);
                            else {
                                ctx.io.err(`${line}\n`);
                                appId ??= applicationId(line);
                            }
                        },
                    });
                    if (r.code === 127) say(`spark-submit is not at ${NODE_SPARK_SUBMIT} on ${master.name}: the master role must install Spark`);
                    else if (r.code === 255) say(describeFailure(r.code, r.stderr));
                    let ok = r.code === 0;
                    if (deployMode === "cluster") {
                        if (!ok || !driverId) {
                            ctx.io.err(r.stderr.split("\n").slice(-40).join("\n") + (r.stdout ? `\n${r.stdout.split("\n").slice(-20).join("\n")}` : ""));
                            say(ok ? "spark-submit named no driver (no \"submitted as driver-…\" in its output)" : `the submission FAILED: spark-submit exited ${r.code}`);
                            return EXIT.FAILED;
                        }
                        say(`driver ${driverId} submitted; following it through the master (${stack.outputs.webUiUrl})`);
                        const end = await followDriver(stack.outputs.webUiUrl, driverId, {
                            timeoutMs: Math.max(10_000, timeoutMs - (Date.now() - started)),
                            onChange: (v) => {
                                const node = nodeOfWorker(stack.outputs.nodes, v.workerHost);
                                say(`driver ${driverId} ${v.driver?.state}${v.workerHost ? ` on ${node ? `${node.name} (${v.workerHost})` : v.workerHost}` : ""}`);
                            },
                        });
                        const state = end.driver?.state ?? "UNKNOWN";
                        ok = state === "FINISHED";
                        const node = nodeOfWorker(stack.outputs.nodes, end.workerHost);
                        if (!node) say(`the driver's worker ${end.workerHost ?? "(none)"} is no node of the stack (${stack.outputs.nodes.map((n) => `${n.name} ${n.ip}`).join(", ")}); its output stays there`);
                        else {
                            const read = (f: string) => run(remoteArgv(targetOf(ssh, node), asRoot(ssh.user, ["cat", `${NODE_SPARK_WORK_DIR}/${driverId}/${f}`])), { timeoutMs: 120_000, allowFailure: true });
                            const [out, err] = await Promise.all([read("stdout"), read("stderr")]);
                            if (out.code === 0) ctx.io.out(out.stdout);
                            if (err.code === 0) {
                                ctx.io.err(err.stdout);
                                appId = applicationId(err.stdout);
                            }
                            if (out.code !== 0 || err.code !== 0) say(`could not read the driver's output in ${NODE_SPARK_WORK_DIR}/${driverId}/ on ${node.name}: ${describeFailure(out.code || err.code, out.stderr || err.stderr)}`);
                        }
                        say(`driver ${driverId} ended ${state}`);
                    }
                    if (appId) {
                        say(`application ${appId}`);
                        if (stack.outputs.historyUrl) say(`history: ${historyAppUrl(stack.outputs.historyUrl, appId)}`);
                    }
                    if (ok) {
                        say("the job succeeded");
                        return EXIT.OK;
                    }
                    say(deployMode === "cluster" ? "the job FAILED" : `the job FAILED: spark-submit exited ${r.code}`);
                    return EXIT.FAILED;
                } finally {
                    await Promise.all(copied.map((node) => run(remoteArgv(targetOf(ssh, node), ["rm", "-rf", dir]), { timeoutMs: 60_000, allowFailure: true }).catch(() => undefined)));
                }
            }),
        );
}
