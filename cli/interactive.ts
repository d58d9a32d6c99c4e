// A command that owns the terminal (an ssh login, `journalctl -f`): its
// stdin, stdout and stderr are ours, it has no timeout, and Ctrl-C reaches
// it (same process group) while this process waits for it to end.
import { spawn } from "node:child_process";

/** Runs argv attached to this terminal; resolves with its exit code (128+N when killed by signal N). */
export function attached(argv: string[]): Promise<number> {
    return new Promise((resolve, reject) => {
        const child = spawn(argv[0], argv.slice(1), { stdio: "inherit" });
        const ignore = () => undefined;
        // The child gets the terminal's SIGINT itself; this process waits for its end.
        process.on("SIGINT", ignore);
        const done = () => process.removeListener("SIGINT", ignore);
        child.once("error", (e) => {
            done();
            reject(new Error(`${argv[0]}: could not start: ${e.message}`));
        });
        child.once("exit", (code, signal) => {
            done();
            const os = require("node:os") as typeof import("node:os");
            resolve(code ?? 128 + (signal ? (os.constants.signals as Record<string, number>)[signal] ?? 0 : 0));
        });
    });
}
