import { run } from "../../providers/run";
import { roundTrip } from "../helpers/serialize";

/** True while a process (or, for a negative id, any process of that group) exists, zombies included. */
function exists(pid: number): boolean {
    try {
        process.kill(pid, 0);
        return true;
    } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "ESRCH") return false;
        throw e;
    }
}

describe("run", () => {
    test("returns stdout of a successful command", async () => {
        const r = await run(["printf", "%s", "a b;c"]);
        expect(r.stdout).toBe("a b;c"); // no shell: metacharacters are data
    });
    test("rejects with stderr and exit code on failure", async () => {
        await expect(run(["sh", "-c", "echo boom >&2; exit 3"])).rejects.toThrow(/exit code 3\nboom/);
    });
    test("allowFailure resolves with the code", async () => {
        const r = await run(["false"], { allowFailure: true });
        expect(r.code).toBe(1);
    });
    test("kills on timeout", async () => {
        const started = Date.now();
        await expect(run(["sleep", "5"], { timeoutMs: 200 })).rejects.toThrow(/timed out/);
        expect(Date.now() - started).toBeGreaterThanOrEqual(200);
        expect(Date.now() - started).toBeLessThan(4_000); // sleep obeys SIGTERM: no wait for the grace period
    });
    test("on timeout the whole process group goes, even a grandchild that ignores SIGTERM", async () => {
        // The command (sh) starts a grandchild that ignores SIGTERM, keeps our
        // stdout open and would live 60 s; it prints its pid and process group.
        const script = `sh -c 'trap "" TERM; echo "$$ $(ps -o pgid= -p $$)"; exec sleep 60' & wait`;
        const lines: string[] = [];
        const started = Date.now();
        const err = await run(["sh", "-c", script], { timeoutMs: 1_000, killGraceMs: 500, onLine: (l) => lines.push(l) }).catch((e: Error) => e);
        const elapsed = Date.now() - started;
        expect(err).toBeInstanceOf(Error);
        expect((err as Error).message).toMatch(/timed out after 1 s/);
        const [pid, pgid] = lines[0].trim().split(/\s+/).map(Number);
        expect(pid).toBeGreaterThan(1);
        expect(pgid).not.toBe(process.pid); // its own group, not the test runner's
        expect(elapsed).toBeGreaterThanOrEqual(1_000);
        // Settled only once the grandchild and its group are gone.
        expect(exists(pid)).toBe(false);
        expect(exists(-pgid)).toBe(false);
        expect(elapsed).toBeLessThan(20_000);
    }, 30_000);
    test("a command that exits on its own leaves a daemon it started alone (only a timeout kills the group)", async () => {
        const r = await run(["sh", "-c", "sleep 30 >/dev/null 2>&1 </dev/null & echo $!"]);
        const pid = Number(r.stdout.trim());
        try {
            expect(exists(pid)).toBe(true);
        } finally {
            process.kill(pid, "SIGKILL");
        }
    });
    test("streams lines and masks secrets", async () => {
        const lines: string[] = [];
        await run(["sh", "-c", "echo one; echo hunter2 >&2; printf last"], { onLine: (l) => lines.push(l), secrets: ["hunter2"] });
        expect(lines.sort()).toEqual(["***", "last", "one"]);
    });
    test("rejects a string instead of argv", async () => {
        await expect(run("ls -l" as unknown as string[])).rejects.toThrow(/argv must be/);
    });
    test("survives closure serialization", async () => {
        const holder = await roundTrip({ go: () => run(["echo", "hi"]) });
        expect((await holder.go()).stdout).toBe("hi\n");
    });
    test("survives closure serialization with its timeout behaviour", async () => {
        const holder = await roundTrip({ go: () => run(["sleep", "5"], { timeoutMs: 200 }) });
        await expect(holder.go()).rejects.toThrow(/timed out/);
    });
});
