// `nixspark smoke`: prove that the live cluster computes, by running
// scripts/smoke.ts's job. The script reads its outputs from a file when told
// to, so this verb hands it the outputs it read through the Pulumi CLI (the
// validated ones, no secrets) in a private temporary file.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Command } from "commander";
import type { VerbContext } from "../main";
import { GlobalOptions, positiveInt } from "../common";
import { loadStack } from "../stack";

export function register(program: Command, ctx: VerbContext): Command {
    return program
        .command("smoke")
        .summary("run the smoke job and check its result")
        .description(
            "Submit the smoke job (scripts/jobs/sum_of_squares.py) to the cluster and check its result and that its tasks ran on at least two workers. spark-submit runs on the master over ssh, or here with --local-submit.",
        )
        .option("--master <url>", "spark://HOST:PORT to submit to instead of the stack's masterUrl output (with --local-submit, no stack is read)")
        .option("--web-ui <url>", "the master's web UI, instead of the stack's webUiUrl output")
        .option("--min-workers <n>", "distinct workers the tasks must reach (default 2, or fewer if the cluster has fewer)")
        .option("--executor-memory <size>", "per executor", "512m")
        .option("--local-submit", "run spark-submit here (needs SPARK_HOME; see scripts/install-spark)")
        .option("--remote-submit", "run spark-submit on the master over ssh even if SPARK_HOME is set")
        .option("--python <path>", "PYSPARK_PYTHON for a local submit")
        .option("--timeout <seconds>", "for the whole job", "600")
        .addHelpText("after", "\nExit status 0 means the job ran and its result is right.")
        .action(async (o: { master?: string; webUi?: string; minWorkers?: string; executorMemory: string; localSubmit?: boolean; remoteSubmit?: boolean; python?: string; timeout: string }, cmd: Command) =>
            ctx.act("smoke", async () => {
                const args = ["--timeout", String(positiveInt("--timeout", o.timeout)), "--executor-memory", o.executorMemory];
                if (o.minWorkers !== undefined) args.push("--min-workers", String(positiveInt("--min-workers", o.minWorkers)));
                if (o.localSubmit) args.push("--local-submit");
                if (o.remoteSubmit) args.push("--remote-submit");
                if (o.python) args.push("--python", o.python);
                if (o.master) args.push("--master", o.master);
                if (o.webUi) args.push("--web-ui", o.webUi);
                const g = cmd.optsWithGlobals<GlobalOptions>();
                const { main } = await import("../../scripts/smoke");
                // A local submit to a given master needs nothing from a stack (the script's own rule).
                const local = !o.remoteSubmit && (Boolean(o.localSubmit) || Boolean(process.env.SPARK_HOME));
                if (o.master && local && !g.stack && !g.outputs) return main(args);
                const stack = await loadStack(g);
                const dir = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-smoke-"));
                try {
                    const file = path.join(dir, "outputs.json");
                    fs.writeFileSync(file, JSON.stringify(stack.outputs), { mode: 0o600 });
                    return await main(["--outputs", file, ...args]);
                } finally {
                    fs.rmSync(dir, { recursive: true, force: true });
                }
            }),
        );
}
