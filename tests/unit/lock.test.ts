// The one lock (providers/lock.ts) behind the stack's VM restart lock
// (providers/domain.ts withRestartLock) and the known-hosts/key-file lock
// (withFileLock). Its owner is a token: boot id, pid, the process's start
// time and a random part. A lock is taken over only when its owner is
// provably gone, and released only by the owner whose token it still holds.
import { spawn, ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { withRestartLock } from "../../providers/domain";
import { withFileLock } from "../../providers/lock";

const bootId = fs.readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
/** Field 22 of /proc/<pid>/stat: the process's start time in clock ticks since boot. */
function startTime(pid: number): string {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
}
const token = (pid: number, start: string, boot = bootId, nonce = "n0") => `${pid} ${start} ${boot} ${nonce} restarting dev-w9\n`;

let dir: string;
let child: ChildProcess | undefined;
beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-lock-"));
});
afterEach(() => {
    if (child?.pid && child.exitCode === null) process.kill(child.pid, "SIGKILL");
    child = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
});

async function liveChild(): Promise<number> {
    child = spawn("sleep", ["60"], { stdio: "ignore" });
    await new Promise((r) => child!.once("spawn", r));
    return child.pid as number;
}

describe("the stack's restart lock", () => {
    test("a lock whose PID now belongs to another process (a recycled PID) is taken over at once", async () => {
        const pid = await liveChild();
        const recycled = String(Number(startTime(pid)) - 1000);
        fs.writeFileSync(path.join(dir, "vm-restart.lock"), token(pid, recycled));
        const t0 = Date.now();
        await expect(withRestartLock(dir, "restarting dev-w1", 3_000, async () => "ran")).resolves.toBe("ran");
        expect(Date.now() - t0).toBeLessThan(2_000);
        expect(fs.existsSync(path.join(dir, "vm-restart.lock"))).toBe(false);
    });

    test("a lock written before the host rebooted is taken over", async () => {
        fs.writeFileSync(path.join(dir, "vm-restart.lock"), token(process.pid, startTime(process.pid), "00000000-0000-0000-0000-000000000000"));
        await expect(withRestartLock(dir, "restarting dev-w1", 3_000, async () => "ran")).resolves.toBe("ran");
    });

    test("a lock whose owner still runs is waited for, and the wait ends with an error naming the holder", async () => {
        const pid = await liveChild();
        fs.writeFileSync(path.join(dir, "vm-restart.lock"), token(pid, startTime(pid)));
        const said = jest.spyOn(console, "error").mockImplementation(() => undefined);
        try {
            await expect(withRestartLock(dir, "restarting dev-w1", 1_200, async () => "ran")).rejects.toThrow(/another VM of the stack is restarting .*restarting dev-w9/);
        } finally {
            said.mockRestore();
        }
        expect(fs.readFileSync(path.join(dir, "vm-restart.lock"), "utf8")).toBe(token(pid, startTime(pid)));
    });

    test("a lock whose process is gone is taken over", async () => {
        const gone = spawn("true");
        await new Promise((r) => gone.once("exit", r));
        fs.writeFileSync(path.join(dir, "vm-restart.lock"), token(gone.pid as number, "1"));
        await expect(withRestartLock(dir, "restarting dev-w1", 3_000, async () => "ran")).resolves.toBe("ran");
    });

    test("on release the lock is removed only if it still holds our token", async () => {
        const pid = await liveChild();
        const other = token(pid, startTime(pid), bootId, "someone-else");
        await withRestartLock(dir, "restarting dev-w1", 3_000, async () => {
            // Another owner holds the lock now (it judged ours stale, or an admin replaced it).
            fs.writeFileSync(path.join(dir, "vm-restart.lock"), other);
        });
        expect(fs.readFileSync(path.join(dir, "vm-restart.lock"), "utf8")).toBe(other);
    });
});

describe("the file lock (known-hosts file, deploy key file)", () => {
    test("serializes critical sections", async () => {
        const file = path.join(dir, "f");
        let inside = 0;
        let maxInside = 0;
        await Promise.all(
            Array.from({ length: 5 }, () =>
                withFileLock(file, async () => {
                    inside++;
                    maxInside = Math.max(maxInside, inside);
                    await new Promise((r) => setTimeout(r, 20));
                    inside--;
                }),
            ),
        );
        expect(maxInside).toBe(1);
        expect(fs.readdirSync(dir)).toEqual([]);
    });

    test("an old lock whose owner still runs is not taken over (its age says nothing)", async () => {
        const pid = await liveChild();
        const lock = path.join(dir, "known_hosts.lock");
        fs.writeFileSync(lock, token(pid, startTime(pid)));
        const old = new Date(Date.now() - 600_000);
        fs.utimesSync(lock, old, old);
        await expect(withFileLock(path.join(dir, "known_hosts"), async () => "ran", 1_000)).rejects.toThrow(/timed out after 1 s waiting for the lock .*known_hosts\.lock/);
        expect(fs.existsSync(lock)).toBe(true);
    });
});
