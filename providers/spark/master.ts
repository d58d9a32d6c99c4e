// Spark's master, as the providers and the scripts ask it: one GET of its
// JSON endpoint (fetchMasterState), the parsed state, the declared workers
// matched against its registrations, and the health verdict. Used from below
// by the health gate (providers/sparkHealth.ts), a deployment's verification
// and decommission (./verify.ts, ./decommission.ts), `npm run status` and
// `npm run smoke` (scripts/, through cluster/sparkStatus.ts).
//
// Dynamic providers capture these functions into their serialized closures:
// keep them plain functions that import nothing at module level (no zod, no
// classes); node:http is required inside fetchMasterState.

/** A worker as the master's `/json/` endpoint lists it. */
export interface MasterWorker {
    id: string;
    host: string;
    port: number;
    webUiAddress: string;
    /** ALIVE, DEAD, DECOMMISSIONED or UNKNOWN. */
    state: string;
    cores: number;
    coresUsed: number;
    memoryMiB: number;
    memoryUsedMiB: number;
    /** Milliseconds since the epoch. */
    lastHeartbeat: number;
}

/** What the master reports about itself and its workers. */
export interface MasterState {
    url: string;
    /** ALIVE, STANDBY, RECOVERING, COMPLETING_RECOVERY. */
    status: string;
    workers: MasterWorker[];
    aliveWorkers: number;
    /** Cores and memory of the ALIVE workers, as the master sums them. */
    cores: number;
    memoryMiB: number;
    activeApps: number;
}

/** A worker the stack declares: its node name and the address it registers from. */
export interface ExpectedWorker {
    name: string;
    ip: string;
}

export type WorkerVerdict = "ALIVE" | "DEAD" | "MISSING" | string;

export interface WorkerMatch {
    name: string;
    ip: string;
    /** ALIVE, MISSING (never registered or forgotten by the master), or the master's state (DEAD, ...). */
    state: WorkerVerdict;
    /** The master's registration this declared worker was matched with. */
    worker?: MasterWorker;
}

export interface WorkerReport {
    matches: WorkerMatch[];
    /** Registered ALIVE workers that no declared worker accounts for. */
    undeclared: MasterWorker[];
}

function num(v: unknown): number {
    return typeof v === "number" && Number.isFinite(v) ? v : 0;
}

function str(v: unknown): string {
    return typeof v === "string" ? v : v === undefined || v === null ? "" : String(v);
}

/** Parses the body of `GET http://MASTER:8080/json/`; throws with a short excerpt when it is not the master's JSON. */
export function parseMasterJson(body: string): MasterState {
    let raw: unknown;
    try {
        raw = JSON.parse(body);
    } catch (e) {
        throw new Error(`the master's /json/ endpoint did not return JSON (${(e as Error).message}): ${body.slice(0, 200)}`);
    }
    if (typeof raw !== "object" || raw === null || Array.isArray(raw) || typeof (raw as { status?: unknown }).status !== "string") {
        throw new Error(`the master's /json/ endpoint returned JSON without a "status" field: ${body.slice(0, 200)}`);
    }
    const r = raw as Record<string, unknown>;
    const workers = (Array.isArray(r.workers) ? r.workers : []).map((w: Record<string, unknown>): MasterWorker => ({
        id: str(w.id),
        host: str(w.host),
        port: num(w.port),
        webUiAddress: str(w.webuiaddress),
        state: str(w.state) || "UNKNOWN",
        cores: num(w.cores),
        coresUsed: num(w.coresused),
        memoryMiB: num(w.memory),
        memoryUsedMiB: num(w.memoryused),
        lastHeartbeat: num(w.lastheartbeat),
    }));
    return {
        url: str(r.url),
        status: str(r.status),
        workers,
        aliveWorkers: typeof r.aliveworkers === "number" ? r.aliveworkers : workers.filter((w) => w.state === "ALIVE").length,
        cores: num(r.cores),
        memoryMiB: num(r.memory),
        activeApps: Array.isArray(r.activeapps) ? r.activeapps.length : 0,
    };
}

/**
 * Matches declared workers with the master's registrations by address.
 *
 * A restarted worker registers again under a new id while its old
 * registration lingers as DEAD for a while, so an ALIVE registration always
 * wins. Declared workers that share an address (several workers on one host)
 * take that address's registrations in order; those left over are MISSING,
 * or DEAD when a dead registration is left for them.
 */
export function matchWorkers(expected: ExpectedWorker[], master: MasterState | undefined): WorkerReport {
    const workers = master ? master.workers : [];
    const byHost = new Map<string, { alive: MasterWorker[]; other: MasterWorker[] }>();
    for (const w of workers) {
        const entry = byHost.get(w.host) ?? { alive: [], other: [] };
        (w.state === "ALIVE" ? entry.alive : entry.other).push(w);
        byHost.set(w.host, entry);
    }
    // Newest registration first among the non-alive ones: it says most about the present.
    for (const e of byHost.values()) e.other.sort((a, b) => b.lastHeartbeat - a.lastHeartbeat);
    const matches = expected.map((x): WorkerMatch => {
        const entry = byHost.get(x.ip);
        const alive = entry?.alive.shift();
        if (alive) return { name: x.name, ip: x.ip, state: "ALIVE", worker: alive };
        const other = entry?.other.shift();
        if (other) return { name: x.name, ip: x.ip, state: other.state, worker: other };
        return { name: x.name, ip: x.ip, state: "MISSING" };
    });
    const undeclared: MasterWorker[] = [];
    for (const e of byHost.values()) undeclared.push(...e.alive);
    return { matches, undeclared };
}

export interface HealthVerdict {
    healthy: boolean;
    report: WorkerReport;
    /** Declared workers that are not ALIVE, e.g. "worker-2 (10.77.0.12): DEAD". */
    problems: string[];
    aliveWorkers: number;
    /** Cores and memory of the declared workers that are ALIVE. */
    totalCores: number;
    totalMemoryMiB: number;
}

/** Whether the master is ALIVE and every declared worker is registered and ALIVE. */
export function healthVerdict(expected: ExpectedWorker[], master: MasterState | undefined, unreachable?: string): HealthVerdict {
    const report = matchWorkers(expected, master);
    const problems: string[] = [];
    if (!master) problems.push(`master: not answering${unreachable ? ` (${unreachable})` : ""}`);
    else if (master.status !== "ALIVE") problems.push(`master: status ${master.status}, expected ALIVE`);
    for (const m of report.matches) {
        if (m.state === "ALIVE") continue;
        problems.push(`${m.name} (${m.ip}): ${describeMatch(m)}`);
    }
    const alive = report.matches.filter((m) => m.state === "ALIVE" && m.worker);
    return {
        healthy: problems.length === 0,
        report,
        problems,
        aliveWorkers: alive.length,
        totalCores: alive.reduce((s, m) => s + (m.worker as MasterWorker).cores, 0),
        totalMemoryMiB: alive.reduce((s, m) => s + (m.worker as MasterWorker).memoryMiB, 0),
    };
}

export function describeMatch(m: WorkerMatch): string {
    if (m.state === "MISSING") return "missing: not registered with the master";
    if (m.state === "ALIVE") return "ALIVE";
    const why = m.state === "DEAD" ? "the master lost contact with it" : "not accepting work";
    return `${m.state}: ${why} (registration ${m.worker?.id ?? "?"})`;
}

/** One line that says what the master reported, for error messages and progress. */
export function describeMaster(master: MasterState | undefined, unreachable?: string): string {
    if (!master) return `the master did not answer${unreachable ? `: ${unreachable}` : ""}`;
    const regs = master.workers.length
        ? master.workers.map((w) => `${w.host} ${w.state}${w.id ? ` (${w.id})` : ""}`).join(", ")
        : "no workers registered";
    return `master status ${master.status}, ${master.aliveWorkers} alive worker(s), ${master.cores} cores, ${master.memoryMiB} MiB; registrations: ${regs}`;
}

/** One GET of `${webUiUrl}/json/`; resolves with the parsed state or rejects with why not. */
export function fetchMasterState(webUiUrl: string, timeoutMs: number): Promise<MasterState> {
    const http = require("node:http") as typeof import("node:http");
    const https = require("node:https") as typeof import("node:https");
    const url = `${webUiUrl.replace(/\/+$/, "")}/json/`;
    return new Promise((resolve, reject) => {
        let settled = false;
        const done = (err: Error | undefined, state?: MasterState) => {
            if (settled) return;
            settled = true;
            if (err) reject(err);
            else resolve(state as MasterState);
        };
        const client = url.startsWith("https:") ? https : http;
        const req = client.get(url, { timeout: timeoutMs, headers: { accept: "application/json" } }, (res) => {
            let body = "";
            res.setEncoding("utf8");
            res.on("data", (c: string) => (body += c));
            res.on("end", () => {
                if (res.statusCode !== 200) return done(new Error(`GET ${url}: HTTP ${res.statusCode}: ${body.slice(0, 200)}`));
                try {
                    done(undefined, parseMasterJson(body));
                } catch (e) {
                    done(e as Error);
                }
            });
            res.on("error", (e: Error) => done(new Error(`GET ${url}: ${e.message}`)));
        });
        req.on("timeout", () => {
            req.destroy();
            done(new Error(`GET ${url}: no answer within ${Math.round(timeoutMs / 1000)} s`));
        });
        req.on("error", (e: Error) => done(new Error(`GET ${url}: ${e.message}`)));
    });
}
