// `nixspark`: the command-line tool for a deployed stack (docs/usage.md).
//
// One file per verb under cli/verbs/; each registers its command on the
// program and returns an exit code (cli/common.ts EXIT). This file builds
// the program, maps parser errors to exit code 2 and a verb's errors to 1
// or 2, and fixes the help's width so that --help reads the same in a
// terminal, a pipe and docs/usage.md.
import { Command, CommanderError, Option } from "commander";
import { EXIT, EXIT_CODES_HELP, Io, processIo, UsageError } from "./common";
import { VERBS } from "./verbs";

export const HELP_WIDTH = 80;

/** Verbs whose operands end in a command or job arguments, given after `--`. */
const COMMAND_VERBS = new Set(["exec", "ssh", "submit"]);

export interface VerbContext {
    io: Io;
    /** Runs a verb's body and records its exit code; a UsageError is exit 2, any other error exit 1. */
    act(verb: string, body: () => Promise<number>): Promise<void>;
}

/** The whole program, ready to parse (also used by tests to read each verb's help). */
export function buildProgram(io: Io = processIo, onCode: (code: number) => void = () => undefined): Command {
    const program = new Command("nixspark");
    program
        .description(
            "Use a nixspark stack: an Apache Spark standalone cluster of NixOS machines (VMs on\nlibvirt, or existing hosts), deployed with Pulumi. Every verb reads the stack's\noutputs through the Pulumi CLI (or --outputs).",
        )
        .option("--stack <name>", "the Pulumi stack (default: the selected stack)")
        .option("--cwd <dir>", "the project directory, where Pulumi.yaml is (default: the working directory)")
        .addOption(
            new Option("--outputs <file>", "read the stack's outputs from this JSON file (as `pulumi stack output --json` prints them) instead of asking Pulumi").env(
                "NIXSPARK_OUTPUTS",
            ),
        )
        .exitOverride()
        .configureHelp({ helpWidth: HELP_WIDTH, showGlobalOptions: true })
        .configureOutput({ writeOut: io.out, writeErr: io.err, getOutHelpWidth: () => HELP_WIDTH, getErrHelpWidth: () => HELP_WIDTH })
        .showHelpAfterError("(add --help for usage)")
        .addHelpText("after", `\n${EXIT_CODES_HELP}\n\nSee docs/usage.md, or \`nixspark <command> --help\`.`);

    const ctx: VerbContext = {
        io,
        act: async (verb, body) => {
            try {
                onCode(await body());
            } catch (e) {
                io.err(`nixspark ${verb}: ${(e as Error).message}\n`);
                onCode(e instanceof UsageError ? EXIT.USAGE : EXIT.FAILED);
            }
        },
    };
    for (const verb of VERBS) {
        const cmd = verb.register(program, ctx);
        cmd.addHelpText("after", `\n${EXIT_CODES_HELP}`);
    }
    return program;
}

/** Parses argv (without node and the script), runs the verb, resolves with the exit code. */
export async function main(argv: string[], io: Io = processIo): Promise<number> {
    let code: number = EXIT.OK;
    const program = buildProgram(io, (c) => (code = c));
    if (argv.length === 0) {
        io.err(program.helpInformation());
        return EXIT.USAGE;
    }
    try {
        await program.parseAsync(argv, { from: "user" });
    } catch (e) {
        if (e instanceof CommanderError) {
            // `nixspark exec uname -n`: the command's own options were read as ours.
            if (e.code === "commander.unknownOption" && argv.some((a) => COMMAND_VERBS.has(a)) && !argv.includes("--")) {
                io.err("(the command for the node goes after --, e.g. nixspark exec -- uname -n)\n");
            }
            return e.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
        }
        throw e;
    }
    return code;
}
