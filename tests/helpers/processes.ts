// Processes a test started: ended by their PID, never by name.
import type { ChildProcess } from "node:child_process";

/**
 * Ends a child this test started, by its PID: SIGTERM, then SIGKILL after
 * `graceMs`; resolves when it has exited (`exited`: its exit event, awaited
 * once). A child that already exited is left alone.
 */
export async function stopChild(child: ChildProcess | undefined, exited: Promise<void> | undefined, graceMs = 5_000): Promise<void> {
    if (child?.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
    process.kill(child.pid, "SIGTERM");
    const killer = setTimeout(() => {
        try {
            process.kill(child.pid as number, "SIGKILL");
        } catch {
            /* gone */
        }
    }, graceMs);
    await exited;
    clearTimeout(killer);
}
