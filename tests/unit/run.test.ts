import { run } from "../../providers/run";
import { roundTrip } from "../helpers/serialize";

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
        await expect(run(["sleep", "5"], { timeoutMs: 200 })).rejects.toThrow(/timed out/);
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
});
