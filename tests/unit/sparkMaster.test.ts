// The master's JSON as Spark writes it, matching declared workers by address,
// and the health verdict (providers/spark/master.ts), with fabricated inputs.
import { healthVerdict, matchWorkers, parseMasterJson } from "../../providers/spark/master";
import { body, declared, master, w } from "./masterJson";

describe("parseMasterJson", () => {
    test("reads status, workers and totals", () => {
        const m = master([w("10.77.0.11")]);
        expect(m).toMatchObject({ url: "spark://10.77.0.10:7077", status: "ALIVE", aliveWorkers: 1, cores: 4, memoryMiB: 6144, activeApps: 1 });
        expect(m.workers[0]).toEqual({
            id: "worker-20260101000000-10.77.0.11-4000",
            host: "10.77.0.11",
            port: 4000,
            webUiAddress: "http://10.77.0.11:8081",
            state: "ALIVE",
            cores: 2,
            coresUsed: 1,
            memoryMiB: 3072,
            memoryUsedMiB: 512,
            lastHeartbeat: 1000,
        });
    });
    test("says what it got when the body is not the master's JSON", () => {
        expect(() => parseMasterJson("<html>proxy error</html>")).toThrow(/did not return JSON.*<html>proxy error/);
        expect(() => parseMasterJson('{"hello":1}')).toThrow(/without a "status" field/);
    });
});

describe("matchWorkers and healthVerdict", () => {
    test("healthy when every declared worker is ALIVE; totals count declared ALIVE workers only", () => {
        const v = healthVerdict(declared, master([w("10.77.0.11"), w("10.77.0.12"), w("10.77.0.99")]));
        expect(v).toMatchObject({ healthy: true, problems: [], aliveWorkers: 2, totalCores: 4, totalMemoryMiB: 6144 });
        expect(v.report.undeclared.map((x) => x.host)).toEqual(["10.77.0.99"]);
    });
    test("names missing and dead workers with their address", () => {
        const v = healthVerdict(declared, master([w("10.77.0.12", "DEAD")]));
        expect(v.healthy).toBe(false);
        expect(v.problems).toEqual([
            "worker-1 (10.77.0.11): missing: not registered with the master",
            "worker-2 (10.77.0.12): DEAD: the master lost contact with it (registration worker-20260101000000-10.77.0.12-4000)",
        ]);
    });
    test("a restarted worker's fresh ALIVE registration wins over its old DEAD one", () => {
        const r = matchWorkers(declared, master([w("10.77.0.11"), w("10.77.0.12", "DEAD", "old", 1), w("10.77.0.12", "ALIVE", "new", 2)]));
        expect(r.matches.map((m) => [m.name, m.state, m.worker?.id])).toEqual([
            ["worker-1", "ALIVE", "worker-20260101000000-10.77.0.11-4000"],
            ["worker-2", "ALIVE", "new"],
        ]);
        expect(r.undeclared).toEqual([]);
    });
    test("workers sharing one address take its registrations in turn", () => {
        const same = [
            { name: "worker-1", ip: "127.0.0.1" },
            { name: "worker-2", ip: "127.0.0.1" },
        ];
        const r = matchWorkers(same, master([w("127.0.0.1", "ALIVE", "a")]));
        expect(r.matches.map((m) => m.state)).toEqual(["ALIVE", "MISSING"]);
    });
    test("a master that is not ALIVE or not answering is a problem in itself", () => {
        expect(healthVerdict([], master([], "STANDBY")).problems).toEqual(["master: status STANDBY, expected ALIVE"]);
        expect(healthVerdict(declared, undefined, "ECONNREFUSED").problems[0]).toBe("master: not answering (ECONNREFUSED)");
    });
});

