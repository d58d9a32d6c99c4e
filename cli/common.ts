// What every verb shares: exit codes, the error kinds that map to them, the
// global options, and how a verb writes its output.

/** Exit codes scripts can rely on (every verb's --help repeats them). */
export const EXIT = {
    /** What was asked was done (status: the cluster is healthy). */
    OK: 0,
    /** What was asked failed on a node or for a job (status: degraded). */
    FAILED: 1,
    /** Bad usage, or the stack's configuration/outputs are not usable. */
    USAGE: 2,
} as const;

export const EXIT_CODES_HELP = [
    "Exit codes:",
    "  0  done (status: the cluster is healthy)",
    "  1  it failed on a node or for a job (status: degraded); the output names which",
    "  2  usage or configuration error (a bad flag, no such node, the stack's outputs",
    "     cannot be read); the message names the flag or setting and the fix",
].join("\n");

/** Bad usage or an unusable stack configuration: exit code 2. */
export class UsageError extends Error {}

/** Options every verb takes (declared once on the program). */
export interface GlobalOptions {
    /** The Pulumi stack; default: the selected one. */
    stack?: string;
    /** The project directory (Pulumi.yaml); default: the working directory. */
    cwd?: string;
    /** Read the outputs from this JSON file (as `pulumi stack output --json` prints them) instead of asking Pulumi. */
    outputs?: string;
}

/** Where a verb writes: the process's streams, replaceable in tests. */
export interface Io {
    out(text: string): void;
    err(text: string): void;
}

export const processIo: Io = {
    out: (t) => void process.stdout.write(t),
    err: (t) => void process.stderr.write(t),
};

/** A positive whole number from an option, or a UsageError naming the flag. */
export function positiveInt(flag: string, value: string): number {
    const n = Number(value);
    if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < 1) throw new UsageError(`${flag} must be a whole number of at least 1, got ${JSON.stringify(value)}`);
    return n;
}
