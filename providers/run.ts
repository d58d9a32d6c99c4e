// The one command runner every provider uses.
//
// Rules it enforces (docs/design.md, Provider rules): argv arrays only (never a shell string), a
// timeout on every command, and stderr carried into the error message. Each
// command runs in a process group of its own; a timeout kills the whole
// group (a hung `nix copy` or `ssh` under nixos-rebuild too) and the promise
// settles only when that group is gone.
// It requires its modules inside the function so that a dynamic provider that
// captures `run` serializes to a self-contained closure.

export interface RunOptions {
    /**
     * Milliseconds before the command is killed with its whole process group:
     * SIGTERM, then SIGKILL after killGraceMs. The promise settles only once
     * the command has exited and its group is gone.
     */
    timeoutMs?: number;
    /** Milliseconds between SIGTERM and SIGKILL on timeout (default 3000). */
    killGraceMs?: number;
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
    const graceMs = opts.killGraceMs ?? 3_000;
    const mask = (s: string) => (opts.secrets ?? []).filter((x) => x).reduce((acc, x) => acc.split(x).join("***"), s);
    const shown = mask(argv.join(" "));
    return new Promise((resolve, reject) => {
        // detached: the command leads a process group of its own, so a timeout
        // can take all of it (nixos-rebuild -> nix copy -> ssh), not only argv[0].
        const child = spawn(argv[0], argv.slice(1), {
            env: (opts.env ?? process.env) as NodeJS.ProcessEnv,
            cwd: opts.cwd,
            stdio: ["pipe", "pipe", "pipe"],
            detached: true,
        });
        const pgid = child.pid;
        // While it runs, the group is killed if this process exits (the
        // engine ends a provider by its own process group, which no longer
        // holds the command). One shared 'exit' listener for all commands.
        const g = globalThis as unknown as { __nixsparkGroups?: Set<number> };
        if (pgid !== undefined) {
            if (!g.__nixsparkGroups) {
                const groups = (g.__nixsparkGroups = new Set<number>());
                process.once("exit", () => {
                    for (const id of groups) {
                        try {
                            process.kill(-id, "SIGKILL");
                        } catch {
                            /* already gone */
                        }
                    }
                });
            }
            g.__nixsparkGroups.add(pgid);
        }
        const signalGroup = (sig: NodeJS.Signals): boolean => {
            if (pgid === undefined) return false;
            try {
                process.kill(-pgid, sig);
                return true;
            } catch {
                return false; // ESRCH: nobody left in the group
            }
        };
        const groupAlive = () => signalGroup(0 as unknown as NodeJS.Signals);
        let stdout = "";
        let stderr = "";
        let timedOut = false;
        const timers: NodeJS.Timeout[] = [];
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
        timers.push(
            setTimeout(() => {
                timedOut = true;
                signalGroup("SIGTERM");
                timers.push(
                    setTimeout(() => {
                        signalGroup("SIGKILL");
                        // A process that left the group but holds our pipes must not keep us waiting.
                        timers.push(
                            setTimeout(() => {
                                child.stdout.destroy();
                                child.stderr.destroy();
                            }, 10_000),
                        );
                    }, graceMs),
                );
            }, timeoutMs),
        );
        const done = () => {
            for (const t of timers) clearTimeout(t);
            if (pgid !== undefined) g.__nixsparkGroups?.delete(pgid);
        };
        child.on("error", (err: Error) => {
            done();
            reject(new Error(`${shown}: could not start: ${err.message}`));
        });
        child.on("close", async (code: number | null, signal: string | null) => {
            if (timedOut) {
                // Settle once the whole group is gone (killed, and reaped), bounded.
                signalGroup("SIGKILL");
                const deadline = Date.now() + 10_000;
                while (groupAlive() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
            }
            done();
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
        child.stdin.on("error", () => undefined); // EPIPE: the command exited without reading its input
        if (opts.input !== undefined) child.stdin.end(opts.input);
        else child.stdin.end();
    });
}
