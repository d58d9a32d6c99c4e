// The one command runner every provider uses.
//
// Rules it enforces (DESIGN.md): argv arrays only (never a shell string), a
// timeout on every command, and stderr carried into the error message.
// It requires its modules inside the function so that a dynamic provider that
// captures `run` serializes to a self-contained closure.

export interface RunOptions {
    /** Milliseconds before the command is killed (SIGTERM, then SIGKILL). */
    timeoutMs?: number;
    /** Written to the command's stdin, which is then closed. */
    input?: string;
    /** Environment; defaults to this process's. */
    env?: Record<string, string | undefined>;
    cwd?: string;
    /** Called with each line of stdout and stderr as it arrives (progress). */
    onLine?: (line: string, stream: "stdout" | "stderr") => void;
    /** Resolve with the result instead of rejecting on a non-zero exit. */
    allowFailure?: boolean;
    /** Replaced by "***" wherever it appears in an error message. */
    secrets?: string[];
}

export interface RunResult {
    code: number;
    stdout: string;
    stderr: string;
}

export const DEFAULT_TIMEOUT_MS = 120_000;

/** The last `n` non-empty lines of some output, for error messages. */
export function lastLines(text: string, n = 20): string {
    return text.split("\n").filter((l) => l.trim() !== "").slice(-n).join("\n");
}

export function run(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
    const { spawn } = require("node:child_process") as typeof import("node:child_process");
    if (!Array.isArray(argv) || argv.length === 0 || argv.some((a) => typeof a !== "string")) {
        return Promise.reject(new Error(`run: argv must be a non-empty array of strings, got ${JSON.stringify(argv)}`));
    }
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const mask = (s: string) => (opts.secrets ?? []).filter((x) => x).reduce((acc, x) => acc.split(x).join("***"), s);
    const shown = mask(argv.join(" "));
    return new Promise((resolve, reject) => {
        const child = spawn(argv[0], argv.slice(1), {
            env: (opts.env ?? process.env) as NodeJS.ProcessEnv,
            cwd: opts.cwd,
            stdio: ["pipe", "pipe", "pipe"],
        });
        let stdout = "";
        let stderr = "";
        let timedOut = false;
        const partial = { stdout: "", stderr: "" };
        const feed = (stream: "stdout" | "stderr", chunk: Buffer) => {
            const text = chunk.toString("utf8");
            if (stream === "stdout") stdout += text;
            else stderr += text;
            if (opts.onLine) {
                const lines = (partial[stream] + text).split("\n");
                partial[stream] = lines.pop() ?? "";
                for (const line of lines) opts.onLine(mask(line), stream);
            }
        };
        child.stdout.on("data", (c: Buffer) => feed("stdout", c));
        child.stderr.on("data", (c: Buffer) => feed("stderr", c));
        const timer = setTimeout(() => {
            timedOut = true;
            child.kill("SIGTERM");
            setTimeout(() => child.kill("SIGKILL"), 5_000).unref();
        }, timeoutMs);
        child.on("error", (err: Error) => {
            clearTimeout(timer);
            reject(new Error(`${shown}: could not start: ${err.message}`));
        });
        child.on("close", (code: number | null, signal: string | null) => {
            clearTimeout(timer);
            if (opts.onLine) {
                for (const s of ["stdout", "stderr"] as const) if (partial[s]) opts.onLine(mask(partial[s]), s);
            }
            const result = { code: code ?? -1, stdout, stderr };
            if (timedOut) {
                reject(new Error(`${shown}: timed out after ${Math.round(timeoutMs / 1000)} s\n${mask(lastLines(stderr || stdout))}`));
            } else if (code !== 0 && !opts.allowFailure) {
                const why = signal ? `killed by ${signal}` : `exit code ${code}`;
                reject(new Error(`${shown}: ${why}\n${mask(lastLines(stderr || stdout))}`.trimEnd()));
            } else {
                resolve(result);
            }
        });
        if (opts.input !== undefined) child.stdin.end(opts.input);
        else child.stdin.end();
    });
}
