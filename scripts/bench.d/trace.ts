// `scripts/bench --only preview --trace`: where the seconds of one `pulumi
// preview` go. Runs a preview with trace-preload.js in every Node.js process
// (NODE_OPTIONS=--require), reads the events it wrote (one clock for all
// processes and for this one), and cuts the preview into consecutive phases
// along its critical path; optionally also a sampled V8 CPU profile of the
// program and the provider, summarised by what the CPU did.
//
// Also the empty compiled program of the measurement (precompileProject):
// an empty TypeScript project turned into JavaScript compiled with tsc and
// Pulumi.yaml's runtime option typescript: false, the way nixspark itself runs.
import * as fs from "node:fs";
import * as path from "node:path";
import { run } from "../../providers/run";
import { PulumiCli, REPO } from "../../tests/helpers/pulumiCli";

export const PRELOAD = path.join(__dirname, "trace-preload.js");

interface Ev {
    pid: number;
    role: "program" | "provider" | "other";
    ev: string;
    t: number;
    end?: number;
    file?: string;
    method?: string;
    cpuUserMs?: number;
    cpuSystemMs?: number;
}

export interface Phase {
    phase: string;
    ms: number;
    how: string;
}

export interface TraceResult {
    label: string;
    totalMs: number;
    phases: Phase[];
    /** Counts and sums that are not on the critical path but explain it. */
    facts: Record<string, number>;
    /** Sampled CPU of the program process by activity (ms), when profiled. */
    programCpu?: Record<string, number>;
    providerCpu?: Record<string, number>;
}

/** One traced preview of `cli`; traceDir receives the events (and profiles). */
export async function tracedPreview(label: string, cli: PulumiCli, traceDir: string, profile: boolean): Promise<TraceResult> {
    const slug = label.replace(/[^A-Za-z0-9]+/g, "-");
    const file = path.join(traceDir, `${slug}.jsonl`);
    const profDir = path.join(traceDir, `${slug}.cpuprofile`);
    fs.rmSync(file, { force: true });
    fs.rmSync(profDir, { recursive: true, force: true });
    if (profile) fs.mkdirSync(profDir, { recursive: true });
    const env: Record<string, string | undefined> = {
        ...cli.opts.env,
        NIXSPARK_TRACE_FILE: file,
        NODE_OPTIONS: [cli.opts.env?.NODE_OPTIONS, `--require ${PRELOAD}`].filter(Boolean).join(" "),
        ...(profile ? { NIXSPARK_TRACE_CPU_PROFILE: profDir } : {}),
    };
    // The phases come from a run without the profiler (it adds its own
    // overhead); the CPU split from a second, profiled run.
    const traced = new PulumiCli({ ...cli.opts, env: { ...env, NIXSPARK_TRACE_CPU_PROFILE: undefined } });
    const t0 = Date.now();
    const p = await traced.preview();
    const t1 = Date.now();
    if (profile) await new PulumiCli({ ...cli.opts, env: { ...env, NIXSPARK_TRACE_FILE: `${file}.profiled` } }).preview();
    const events = fs
        .readFileSync(file, "utf8")
        .split("\n")
        .filter((l) => l.trim() !== "")
        .map((l) => JSON.parse(l) as Ev);
    const r = phasesOf(label, events, t0, t1);
    r.facts.resources = (p.summary.create ?? 0) + (p.summary.same ?? 0);
    if (profile) {
        for (const f of fs.readdirSync(profDir)) {
            const summary = summariseProfile(JSON.parse(fs.readFileSync(path.join(profDir, f), "utf8")));
            if (f.startsWith("program-") && summary.sampled > 1000) r.programCpu = summary.byActivity;
            if (f.startsWith("provider-")) r.providerCpu = summary.byActivity;
        }
    }
    return r;
}

/**
 * Consecutive phases from the CLI's start to its exit. Each phase ends at a
 * mark that the next one starts from; a mark that a program does not reach
 * (the empty program registers nothing) leaves its time to the next phase.
 */
export function phasesOf(label: string, events: Ev[], t0: number, t1: number): TraceResult {
    const prog = events.filter((e) => e.role === "program");
    // The program process is the one that ran cmd/run and loaded the program.
    const pid = prog.find((e) => e.ev === "program-module")?.pid ?? prog.find((e) => e.ev === "rpc.client")?.pid;
    const p = prog.filter((e) => e.pid === pid);
    const prov = events.filter((e) => e.role === "provider");
    const first = (xs: Ev[], ev: string) => xs.find((e) => e.ev === ev);
    const all = (xs: Ev[], ev: string, method?: string) => xs.filter((e) => e.ev === ev && (method === undefined || e.method === method));
    const maxEnd = (xs: Ev[]) => (xs.length ? Math.max(...xs.map((e) => e.end ?? e.t)) : undefined);
    const minT = (xs: Ev[]) => (xs.length ? Math.min(...xs.map((e) => e.t)) : undefined);

    const modules = all(p, "program-module");
    // The entry module is the program file loaded first (it loads the others).
    const entry = modules.length ? modules.reduce((a, b) => (b.t < a.t ? b : a)) : undefined;
    const compiles = all(p, "ts.compile");
    const entryCompile = compiles.find((c) => entry && c.file === entry.file);
    const otherCompileMs = compiles.filter((c) => c !== entryCompile).reduce((a, c) => a + (c.end! - c.t), 0);
    const nix = first(p, "nixspark.prepareNix");
    const cluster = first(p, "nixspark.SparkCluster");
    const serial = all(p, "serializeFunction");
    const checks = all(prov, "rpc.server", "check");
    const provStart = first(prov, "start");
    const provFirstRpc = minT(all(prov, "rpc.server"));
    const progStart = first(p, "start");
    const progExit = first(p, "exit") ?? first(p, "signal");
    const register = first(p, "ts-node.register");

    const marks: { at: number | undefined; phase: string; how: string }[] = [
        { at: progStart?.t, phase: "CLI, engine and language host start, up to the program's node process", how: "CLI start → program process start (its performance.timeOrigin)" },
        {
            at: register ? register.end : entry?.t,
            phase: "node and @pulumi/pulumi's cmd/run start (with TypeScript: ts-node, which loads typescript)",
            how: "program process start → ts-node registered (or, without ts-node, the program's first require)",
        },
        { at: entryCompile?.end, phase: "TypeScript: compile the entry file (the type check pulls in every type it imports)", how: "ts-node service.compile(index.ts)" },
        { at: entry?.end, phase: "load the program's modules (compile and type check each, @pulumi/pulumi, zod, ...)", how: "→ the entry file's require() returns" },
        { at: nix?.t, phase: "config (parse, validate, ssh key)", how: "→ prepareNix called" },
        { at: nix?.end, phase: "Nix step (evaluation cache)", how: "prepareNix" },
        { at: cluster?.end, phase: "SparkCluster constructor: register the resources in the SDK", how: "new SparkCluster(...)" },
        { at: maxEnd(serial), phase: "serialize the dynamic providers' closures (rest of)", how: "serializeFunction, last end" },
        { at: provStart?.t, phase: "engine: first dynamic resource, start the provider plugin", how: "→ provider process start" },
        { at: provFirstRpc, phase: "dynamic-provider plugin boot (node, @pulumi/pulumi, typescript)", how: "provider process start → its first RPC" },
        { at: maxEnd(checks), phase: "engine ↔ provider: Check of every dynamic resource, steps", how: "first RPC → last Check answered" },
        { at: progExit?.t, phase: "program finishes (outputs, shutdown)", how: "→ program process exit" },
        { at: t1, phase: "engine finishes the preview, CLI exits", how: "→ CLI exit" },
    ];
    // A mark the program never reaches (the empty program registers nothing)
    // is left out; one reached before the previous mark (overlapping work) is
    // named in the phase that covers it.
    const phases: Phase[] = [];
    let from = t0;
    let overlapped: string[] = [];
    for (const m of marks) {
        if (m.at === undefined) continue;
        if (m.at < from) {
            overlapped.push(m.phase);
            continue;
        }
        const what = m.phase + (overlapped.length ? ` (includes: ${overlapped.join("; ")})` : "");
        phases.push({ phase: what, ms: m.at - from, how: m.how });
        from = m.at;
        overlapped = [];
    }
    const sum = (xs: Ev[]) => xs.reduce((a, e) => a + ((e.end ?? e.t) - e.t), 0);
    const facts: Record<string, number> = {
        programCpuMs: progExit ? (progExit.cpuUserMs ?? 0) + (progExit.cpuSystemMs ?? 0) : NaN,
        providerCpuMs: (() => {
            const x = first(prov, "exit") ?? first(prov, "signal");
            return x ? (x.cpuUserMs ?? 0) + (x.cpuSystemMs ?? 0) : 0;
        })(),
        tsCompiles: compiles.length,
        tsCompileMs: sum(compiles),
        entryCompileMs: entryCompile ? entryCompile.end! - entryCompile.t : 0,
        otherCompileMs,
        serializeCalls: serial.length,
        serializeSpanMs: serial.length ? maxEnd(serial)! - minT(serial)! : 0,
        registerResourceCalls: all(p, "rpc.client", "/pulumirpc.ResourceMonitor/RegisterResource").length,
        checkCalls: checks.length,
        checkInProviderMs: sum(checks),
        diffCalls: all(prov, "rpc.server", "diff").length,
    };
    return { label, totalMs: t1 - t0, phases, facts };
}

interface CpuProfile {
    nodes: { id: number; callFrame: { functionName: string; url: string }; children?: number[] }[];
    samples: number[];
    timeDeltas: number[];
}

/**
 * Sampled CPU by activity: each sample goes to the first activity found
 * walking from the sampled function towards the root (so nested activities
 * are not counted twice), else "other".
 */
export function summariseProfile(prof: CpuProfile): { sampled: number; byActivity: Record<string, number> } {
    const nodes = new Map(prof.nodes.map((n) => [n.id, n]));
    const parent = new Map<number, number>();
    for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
    const activities: [string, (f: { functionName: string; url: string }) => boolean][] = [
        ["idle (waiting: engine, I/O)", (f) => f.functionName === "(idle)"],
        ["garbage collection", (f) => f.functionName === "(garbage collector)"],
        // The SDK takes a stack trace for every promise it makes (debuggablePromise)
        // and every resource; source-map-support (ts-node's, or cmd/run's for
        // JavaScript) maps each frame.
        ["stack traces mapped through source maps (the SDK's per-promise and per-resource stacks)", (f) => f.url.includes("source-map-support")],
        ["closure serialization (serializeFunction)", (f) => f.url.includes("/runtime/closure/")],
        ["TypeScript compile / type check (ts-node)", (f) => f.url.includes("/ts-node/") && /compile|getOutput/.test(f.functionName)],
        ["module loading (require)", (f) => f.url === "node:internal/modules/cjs/loader" && f.functionName === "Module._load"],
        ["gRPC / protobuf", (f) => /@grpc|google-protobuf/.test(f.url)],
        ["Pulumi SDK (resources, outputs)", (f) => f.url.includes("/@pulumi/pulumi/")],
        ["the program's own code", (f) => /\/(index|cluster\/.*|providers\/.*)\.ts$/.test(f.url)],
    ];
    const byActivity: Record<string, number> = {};
    const memo = new Map<number, string>();
    const activityOf = (id: number): string => {
        const known = memo.get(id);
        if (known) return known;
        let a = "other";
        for (let x: number | undefined = id; x !== undefined; x = parent.get(x)) {
            const f = nodes.get(x)!.callFrame;
            const hit = activities.find(([, test]) => test(f));
            if (hit) {
                a = hit[0];
                break;
            }
        }
        memo.set(id, a);
        return a;
    };
    let sampled = 0;
    prof.samples.forEach((id, i) => {
        const ms = (prof.timeDeltas[i] ?? 0) / 1000;
        sampled += ms;
        const a = activityOf(id);
        byActivity[a] = (byActivity[a] ?? 0) + ms;
    });
    return { sampled, byActivity };
}

/**
 * Turns the empty program's project (index.ts: `export {};`) into compiled
 * JavaScript: tsc emits index.js next to it and Pulumi.yaml runs that with
 * the runtime option typescript: false (no ts-node), as nixspark runs bin/.
 */
export async function precompileProject(dir: string): Promise<void> {
    const tsc = path.join(REPO, "node_modules", ".bin", "tsc");
    await run([tsc, "--noCheck", "--outDir", ".", "--target", "ES2022", "--module", "commonjs", "--moduleResolution", "node", "--skipLibCheck", "--types", "node", "index.ts"], {
        cwd: dir,
        timeoutMs: 10 * 60_000,
    });
    const yaml = path.join(dir, "Pulumi.yaml");
    const text = fs.readFileSync(yaml, "utf8");
    const out = text
        .replace(/^runtime: nodejs$/m, "runtime:\n  name: nodejs\n  options:\n    typescript: false")
        .replace(/^main: index\.ts$/m, "main: index.js");
    if (out === text || !out.includes("main: index.js")) throw new Error(`${yaml}: no "runtime: nodejs" / "main: index.ts" lines to rewrite`);
    fs.writeFileSync(yaml, out);
}

const sec = (ms: number) => (ms / 1000).toFixed(2);

/** The breakdown as a Markdown table, one column per traced program. */
export function traceReport(traces: TraceResult[]): string {
    const lines: string[] = [];
    for (const t of traces) {
        lines.push(`**${t.label}**: ${sec(t.totalMs)} s`);
        lines.push("");
        lines.push("| phase | seconds | share | how measured |");
        lines.push("| --- | --- | --- | --- |");
        for (const ph of t.phases) lines.push(`| ${ph.phase} | ${sec(ph.ms)} | ${Math.round((100 * ph.ms) / t.totalMs)} % | ${ph.how} |`);
        const f = t.facts;
        lines.push("");
        lines.push(
            `CPU: program ${sec(f.programCpuMs)} s, dynamic-provider plugin ${sec(f.providerCpuMs)} s. ` +
                `${f.tsCompiles} TypeScript compiles, ${sec(f.tsCompileMs)} s (entry file ${sec(f.entryCompileMs)} s, the others ${sec(f.otherCompileMs)} s); ` +
                `${f.serializeCalls} provider closures serialized (${sec(f.serializeSpanMs)} s from the first start to the last end); ` +
                `${f.registerResourceCalls} RegisterResource, ${f.checkCalls} Check (${sec(f.checkInProviderMs)} s inside the provider), ${f.diffCalls} Diff.`,
        );
        for (const [what, cpu] of [
            ["program", t.programCpu],
            ["provider", t.providerCpu],
        ] as const) {
            if (!cpu) continue;
            const total = Object.values(cpu).reduce((a, b) => a + b, 0);
            const parts = Object.entries(cpu)
                .sort((a, b) => b[1] - a[1])
                .map(([k, v]) => `${k} ${sec(v)} s (${Math.round((100 * v) / total)} %)`);
            lines.push("");
            lines.push(`Sampled CPU profile of the ${what} process (${sec(total)} s): ${parts.join("; ")}.`);
        }
        lines.push("");
    }
    return lines.join("\n");
}
