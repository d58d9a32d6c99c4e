// The preview tracer of scripts/bench (--only preview --trace): the preload
// must not change what a traced process does, and the phases must add up to
// the measured preview.
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { phasesOf, PRELOAD, summariseProfile } from "../../scripts/bench.d/trace";

describe("trace-preload.js", () => {
    let dir: string;
    beforeEach(() => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "nxs-trace-test-"));
        fs.writeFileSync(path.join(dir, "lib.js"), "exports.n = 41; exports.loaded = (exports.loaded || 0) + 1;\n");
        fs.writeFileSync(
            path.join(dir, "main.js"),
            [
                "const a = require('./lib'); const b = require('./lib');",
                "let missing = '';",
                "try { require('./no-such-module'); } catch (e) { missing = e.code; }",
                "process.stdout.write(JSON.stringify({ n: a.n + 1, same: a === b, loaded: a.loaded, missing }));",
            ].join("\n"),
        );
    });
    afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

    const runMain = (env: Record<string, string>) =>
        execFileSync(process.execPath, [path.join(dir, "main.js")], { cwd: dir, encoding: "utf8", env: { ...process.env, NODE_OPTIONS: `--require ${PRELOAD}`, ...env } });

    it("leaves a process's behaviour alone, traced or not", () => {
        const untraced = runMain({});
        const file = path.join(dir, "events.jsonl");
        const traced = runMain({ NIXSPARK_TRACE_FILE: file });
        expect(JSON.parse(untraced)).toEqual({ n: 42, same: true, loaded: 1, missing: "MODULE_NOT_FOUND" });
        expect(traced).toBe(untraced);
        const events = fs.readFileSync(file, "utf8").trim().split("\n").map((l) => JSON.parse(l));
        expect(events.map((e) => e.ev)).toEqual(expect.arrayContaining(["start", "preload", "exit"]));
        const exit = events.find((e) => e.ev === "exit");
        expect(exit.code).toBe(0);
        expect(exit.moduleSelfMs.other).toBeGreaterThanOrEqual(0);
    });
});

describe("phasesOf", () => {
    const ev = (role: "program" | "provider", e: string, t: number, end?: number, more: object = {}) => ({ pid: role === "program" ? 1 : 2, role, ev: e, t, end, ...more });

    it("cuts a preview into consecutive phases that add up to its wall time", () => {
        const events = [
            ev("program", "start", 1000),
            ev("program", "ts-node.register", 1500, 1600),
            ev("program", "program-module", 1700, 5000, { file: "/p/index.ts" }),
            ev("program", "ts.compile", 1700, 4000, { file: "/p/index.ts" }),
            ev("program", "ts.compile", 4100, 4500, { file: "/p/cluster/config.ts" }),
            ev("program", "nixspark.prepareNix", 5010, 5011),
            ev("program", "nixspark.SparkCluster", 5011, 6000),
            ev("program", "serializeFunction", 5100, 7000),
            ev("program", "rpc.client", 5200, 9000, { method: "/pulumirpc.ResourceMonitor/RegisterResource" }),
            ev("provider", "start", 7300),
            ev("provider", "rpc.server", 8000, 8001, { method: "handshake" }),
            ev("provider", "rpc.server", 8100, 8110, { method: "check" }),
            ev("provider", "rpc.server", 8800, 8810, { method: "check" }),
            ev("program", "exit", 9100, undefined, { cpuUserMs: 3000, cpuSystemMs: 100 }),
        ];
        const r = phasesOf("x", events, 0, 9500);
        expect(r.totalMs).toBe(9500);
        expect(r.phases.reduce((a, p) => a + p.ms, 0)).toBeCloseTo(9500, 6);
        expect(r.phases.every((p) => p.ms >= 0)).toBe(true);
        expect(r.phases[0]).toMatchObject({ ms: 1000 });
        expect(r.phases.find((p) => p.phase.startsWith("TypeScript: compile the entry file"))?.ms).toBe(2400);
        expect(r.phases.find((p) => p.phase.startsWith("serialize"))?.ms).toBe(1000);
        expect(r.facts).toMatchObject({ tsCompiles: 2, entryCompileMs: 2300, otherCompileMs: 400, serializeCalls: 1, checkCalls: 2, registerResourceCalls: 1, programCpuMs: 3100 });
    });

    it("leaves out what a program never does (the empty program registers nothing)", () => {
        const events = [
            ev("program", "start", 500),
            ev("program", "ts-node.register", 900, 1000),
            ev("program", "program-module", 1100, 2000, { file: "/e/index.ts" }),
            ev("program", "ts.compile", 1100, 1990, { file: "/e/index.ts" }),
            ev("program", "rpc.client", 1050, 1060, { method: "/pulumirpc.ResourceMonitor/RegisterResource" }),
            ev("program", "exit", 2100),
        ];
        const r = phasesOf("empty", events, 0, 2200);
        expect(r.phases.map((p) => p.ms).reduce((a, b) => a + b, 0)).toBeCloseTo(2200, 6);
        expect(r.phases.some((p) => /SparkCluster|provider plugin|Check/.test(p.phase))).toBe(false);
    });
});

describe("summariseProfile", () => {
    it("gives each sample to the innermost activity on its stack", () => {
        const frame = (functionName: string, url = "") => ({ functionName, url });
        const prof = {
            nodes: [
                { id: 1, callFrame: frame("(root)"), children: [2, 4] },
                { id: 2, callFrame: frame("compile", "file:///x/node_modules/ts-node/dist/index.js"), children: [3] },
                { id: 3, callFrame: frame("checkSourceFile", "file:///x/node_modules/typescript/lib/typescript.js") },
                { id: 4, callFrame: frame("(idle)") },
            ],
            samples: [3, 3, 4, 1],
            timeDeltas: [1000, 1000, 2000, 500],
        };
        const s = summariseProfile(prof);
        expect(s.sampled).toBe(4.5);
        expect(s.byActivity).toEqual({ "TypeScript compile / type check (ts-node)": 2, "idle (waiting: engine, I/O)": 2, other: 0.5 });
    });
});
