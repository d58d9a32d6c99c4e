// `nixspark submit <job.py> [args…]`: run a PySpark job of one's own on the
// cluster, in client mode: the job (and its --py-files) go to a private
// directory on the master, spark-submit runs there against the cluster with
// the cluster's own configuration (SPARK_CONF_DIR, its secret included) and
// its output streams here; the directory is removed afterwards.
//
// Who runs it: like the smoke job (scripts/smoke.ts), the ssh user, or
// `spark` through `sudo -n` when Spark authentication is on and the ssh user
// is not root (the configuration holding the secret is readable by root and
// the Spark users' group; the deploy user is in it on today's roles, `spark`
// on older ones too).
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import type { Command } from "commander";
import type { VerbContext } from "../main";
import { EXIT, GlobalOptions, positiveInt, UsageError } from "../common";
import { run } from "../../providers/run";
import { remoteArgv, scpArgv, targetOf } from "../remote";
import { loadStack, requireSsh } from "../stack";
import { describeFailure } from "../parallel";
import { NODE_SPARK_SUBMIT } from "../../scripts/smoke";

/** "k=v" for --conf; the key must look like a Spark property. */
export function parseConf(kv: string): [string, string] {
    const m = /^([A-Za-z][A-Za-z0-9_.-]*)=(.*)$/s.exec(kv);
    if (!m) throw new UsageError(`--conf ${JSON.stringify(kv)} must be KEY=VALUE, e.g. --conf spark.executor.memory=1g`);
    return [m[1], m[2]];
}

/** The spark-submit argv on the master (before quoting for its shell). */
export function submitArgv(o: {
    asSpark: boolean;
    masterUrl: string;
    name: string;
    conf: [string, string][];
    pyFiles: string[];
    job: string;
    args: string[];
}): string[] {
    return [
        ...(o.asSpark ? ["sudo", "-n", "-u", "spark"] : []),
        NODE_SPARK_SUBMIT,
        "--master",
        o.masterUrl,
        "--deploy-mode",
        "client",
        "--name",
        o.name,
        ...o.conf.flatMap(([k, v]) => ["--conf", `${k}=${v}`]),
        ...(o.pyFiles.length > 0 ? ["--py-files", o.pyFiles.join(",")] : []),
        o.job,
        ...o.args,
    ];
}

/** The application id Spark's driver logs in client mode ("Connected to Spark cluster with app ID app-…"). */
export function applicationId(line: string): string | undefined {
    return /app ID (app-[0-9]+-[0-9]+)/.exec(line)?.[1];
}

export function register(program: Command, ctx: VerbContext): Command {
    return program
        .command("submit")
        .summary("run a PySpark job on the cluster (client mode)")
        .description(
            "Run a PySpark job on the cluster: copy it to the master, run spark-submit there against the cluster with the cluster's configuration (client deploy mode, the driver on the master), stream its output here, and exit 0 when the job succeeded, 1 when it failed.",
        )
        .argument("<job.py>", "the job's Python file")
        .argument("[args...]", "arguments for the job (after --)")
        .option("--conf <key=value>", "a Spark property for this job (repeatable)", (v: string, acc: string[] | undefined) => [...(acc ?? []), v])
        .option("--py-files <files>", "comma-separated local .py/.zip/.egg files the job imports; copied along")
        .option("--name <name>", "the application's name (default: the job file's name)")
        .option("--timeout <seconds>", "for the whole job", "3600")
        .addHelpText("after", "\nExample: nixspark submit wordcount.py -- /data/input.txt\nThe application id is printed on stderr as the driver reports it.")
        .action(async (job: string, args: string[], o: { conf?: string[]; pyFiles?: string; name?: string; timeout: string }, cmd: Command) =>
            ctx.act("submit", async () => {
                const timeoutMs = positiveInt("--timeout", o.timeout) * 1000;
                const conf = (o.conf ?? []).map(parseConf);
                const pyFiles = (o.pyFiles ?? "").split(",").filter((f) => f !== "");
                for (const [flag, f] of [["<job.py>", job], ...pyFiles.map((p) => ["--py-files", p])]) {
                    if (!fs.existsSync(f) || !fs.statSync(f).isFile()) throw new UsageError(`${flag}: no such local file ${JSON.stringify(f)}`);
                }
                if (!job.endsWith(".py")) throw new UsageError(`<job.py>: ${job} is not a .py file; JVM jobs (--class, jars) are not supported by submit yet`);
                const names = [job, ...pyFiles].map((f) => path.basename(f));
                if (new Set(names).size !== names.length) throw new UsageError(`--py-files: two files are named alike (${names.join(", ")}); they would overwrite each other on the master`);

                const stack = await loadStack(cmd.optsWithGlobals<GlobalOptions>());
                const ssh = requireSsh(stack);
                const master = stack.outputs.nodes.find((n) => n.role === "master");
                if (!master) throw new UsageError(`the stack's "nodes" output has no node with role master`);
                const target = targetOf(ssh, master);
                const asSpark = Boolean(stack.outputs.security?.authenticate) && ssh.user !== "root";
                const dir = `/tmp/nixspark-submit-${crypto.randomBytes(6).toString("hex")}`;
                const say = (s: string) => ctx.io.err(`submit: ${s}\n`);
                const remote = async (words: string[], what: string) => {
                    const r = await run(remoteArgv(target, words), { timeoutMs: 60_000, allowFailure: true });
                    if (r.code !== 0) throw new Error(`${what} on ${master.name} failed: ${describeFailure(r.code, r.stderr)}`);
                };
                // World-readable directory, so that `spark` (through sudo) can read the job; its name is random.
                await remote(["mkdir", "-m", "755", dir], "creating the job's directory");
                try {
                    const c = await run(scpArgv(target, [job, ...pyFiles], `${dir}/`), { timeoutMs: 300_000, allowFailure: true });
                    if (c.code !== 0) throw new Error(`copying the job to ${master.name} failed: ${describeFailure(c.code, c.stderr)}`);
                    await remote(["chmod", "-R", "a+rX", dir], "making the job readable");
                    const argv = submitArgv({
                        asSpark,
                        masterUrl: stack.outputs.masterUrl,
                        name: o.name ?? path.basename(job, ".py"),
                        conf,
                        pyFiles: pyFiles.map((f) => `${dir}/${path.basename(f)}`),
                        job: `${dir}/${path.basename(job)}`,
                        args,
                    });
                    say(`running ${path.basename(job)} on ${master.name} against ${stack.outputs.masterUrl}${asSpark ? " as spark" : ""}`);
                    let appId: string | undefined;
                    const r = await run(remoteArgv(target, argv), {
                        timeoutMs,
                        allowFailure: true,
                        onLine: (line, stream) => {
                            if (stream === "stdout") ctx.io.out(`${line}\n`);
                            else {
                                ctx.io.err(`${line}\n`);
                                const id = applicationId(line);
                                if (id && !appId) appId = id;
                            }
                        },
                    });
                    if (appId) say(`application ${appId}`);
                    if (r.code === 0) {
                        say("the job succeeded");
                        return EXIT.OK;
                    }
                    if (r.code === 127) say(`spark-submit is not at ${NODE_SPARK_SUBMIT} on ${master.name}: the master role must install Spark`);
                    else if (r.code === 255) say(describeFailure(r.code, r.stderr));
                    say(`the job FAILED: spark-submit exited ${r.code}`);
                    return EXIT.FAILED;
                } finally {
                    await run(remoteArgv(target, ["rm", "-rf", dir]), { timeoutMs: 60_000, allowFailure: true }).catch(() => undefined);
                }
            }),
        );
}
