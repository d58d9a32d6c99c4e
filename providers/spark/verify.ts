// Spark's word on a node after its switch: the `spark` input of a
// NixosDeployment (SparkCheck), its check, and the verdict on the master's
// state that the deployment polls for before the next rollout batch.
import { lastLines } from "../run";
import { privileged, remoteCommand, SshTarget } from "../ssh";
import { UNKNOWN } from "../unknown";
import { describeMaster, fetchMasterState, matchWorkers } from "./master";
import type { MasterState, MasterWorker } from "./master";

/**
 * What Spark must report about a node after its switch, and how a removed
 * worker is decommissioned. SparkCluster passes one per node.
 */
export interface SparkCheck {
    role: "master" | "worker";
    /** The master's web UI (http://MASTER:8080), whose /json/ is asked. */
    webUiUrl: string;
    /** The address the node's Spark daemon serves on (master) or registers from (worker). */
    address: string;
    /** A worker's cores and memory as its system offers them (cluster/rollout.ts workerOffer); checked when given. */
    cores?: number;
    memoryMiB?: number;
    /** The daemon's systemd unit: its journal goes into the error, a removed worker's gets SIGPWR. */
    unit: "spark-master" | "spark-worker";
    /** How long Spark gets to agree after the switch (deploy.rollout.verifyTimeoutSeconds). */
    timeoutSeconds: number;
    /** How long a removed worker's executors get after it is decommissioned (deploy.decommissionTimeoutSeconds). Default 120. */
    decommissionTimeoutSeconds?: number;
}

/** check: problems with the `spark` input (unknown values pass). */
export function checkSpark(spark: unknown): { property: string; reason: string }[] {
    if (spark === undefined || spark === null || spark === UNKNOWN) return [];
    const bad = (reason: string) => [{ property: "spark", reason }];
    if (typeof spark !== "object") return bad("spark must be an object {role, webUiUrl, address, unit, timeoutSeconds, ...}");
    const s = spark as Record<string, unknown>;
    const known = (k: string) => s[k] !== UNKNOWN && s[k] !== undefined;
    if (known("role") && s.role !== "master" && s.role !== "worker") return bad('spark.role must be "master" or "worker"');
    if (known("unit") && s.unit !== "spark-master" && s.unit !== "spark-worker") return bad('spark.unit must be "spark-master" or "spark-worker"');
    if (known("webUiUrl") && !/^https?:\/\/[^/]+\/?$/.test(String(s.webUiUrl))) return bad(`spark.webUiUrl must be http://HOST:PORT (the master's web UI), got ${JSON.stringify(s.webUiUrl)}`);
    if (known("address") && (typeof s.address !== "string" || s.address === "")) return bad("spark.address must be the node's address");
    for (const k of ["timeoutSeconds", "cores", "memoryMiB", "decommissionTimeoutSeconds"]) {
        if (known(k) && (typeof s[k] !== "number" || !Number.isInteger(s[k]) || (s[k] as number) < 0)) return bad(`spark.${k} must be a whole number`);
    }
    if (known("timeoutSeconds") && (s.timeoutSeconds as number) < 1) return bad("spark.timeoutSeconds must be at least 1");
    return [];
}

/** A worker's ALIVE registration right after its switch: the master must then hear from it again. */
export interface SparkBaseline {
    id: string;
    lastHeartbeat: number;
}

export interface SparkVerdict {
    ok: boolean;
    /** What Spark reported, for progress and errors. */
    said: string;
    baseline?: SparkBaseline;
}

/**
 * Whether Spark agrees that the node runs: the master's status is ALIVE; for
 * a worker, the master lists exactly one ALIVE worker at its address, with
 * the expected cores and memory, that the master heard from after the
 * switch (a registration other than the baseline, the one the master listed
 * when the switch had completed, or a newer heartbeat of it). The last rule
 * keeps a registration the master has not yet noticed is gone from passing
 * for a worker that died or hung in the activation.
 */
export function sparkVerdict(spark: SparkCheck, master: MasterState | undefined, error?: string, baseline?: SparkBaseline): SparkVerdict {
    if (!master) return { ok: false, said: describeMaster(undefined, error) };
    if (spark.role === "master") {
        return { ok: master.status === "ALIVE", said: master.status === "ALIVE" ? `master ALIVE at ${spark.webUiUrl}` : `master status ${master.status}, expected ALIVE` };
    }
    const report = matchWorkers([{ name: "this node", ip: spark.address }], master);
    const match = report.matches[0];
    const alive = [...(match.state === "ALIVE" && match.worker ? [match.worker] : []), ...report.undeclared.filter((w) => w.host === spark.address)];
    const context = describeMaster(master, error);
    if (master.status !== "ALIVE") return { ok: false, said: `master status ${master.status}, expected ALIVE; ${context}` };
    if (alive.length === 0) {
        const what = match.state === "MISSING" ? "no worker registered" : `the newest registration is ${match.state} (${match.worker?.id ?? "?"})`;
        return { ok: false, said: `no ALIVE worker at ${spark.address}: ${what}; ${context}` };
    }
    if (alive.length > 1) return { ok: false, said: `${alive.length} ALIVE workers at ${spark.address}, expected exactly one; ${context}` };
    const w = alive[0] as MasterWorker;
    const wrong: string[] = [];
    if (spark.cores !== undefined && w.cores !== spark.cores) wrong.push(`${w.cores} cores, expected ${spark.cores}`);
    if (spark.memoryMiB !== undefined && w.memoryMiB !== spark.memoryMiB) wrong.push(`${w.memoryMiB} MiB, expected ${spark.memoryMiB}`);
    if (wrong.length > 0) return { ok: false, said: `the worker at ${spark.address} (${w.id}) offers ${wrong.join(" and ")}; ${context}` };
    if (baseline && w.id === baseline.id && w.lastHeartbeat <= baseline.lastHeartbeat) {
        return { ok: false, said: `the worker at ${spark.address} (${w.id}) has not sent the master a heartbeat since the switch; ${context}` };
    }
    return { ok: true, said: `worker ALIVE at ${spark.address} (${w.id}) with ${w.cores} cores and ${w.memoryMiB} MiB` };
}

/** The worker's ALIVE registration now, if the master answers (undefined for the master role). */
export async function sparkBaseline(spark: SparkCheck): Promise<SparkBaseline | undefined> {
    if (spark.role !== "worker") return undefined;
    try {
        const m = await fetchMasterState(spark.webUiUrl, 5_000);
        const w = m.workers.find((x) => x.host === spark.address && x.state === "ALIVE");
        return w ? { id: w.id, lastHeartbeat: w.lastHeartbeat } : undefined;
    } catch {
        return undefined; // nothing registered that could pass for the new daemon
    }
}

/** Polls the master until sparkVerdict holds, at most timeoutSeconds; returns the last verdict. */
export async function waitForSpark(spark: SparkCheck, baseline: SparkBaseline | undefined, timeoutSeconds: number, log: (m: string) => void): Promise<SparkVerdict> {
    const started = Date.now();
    const deadline = started + timeoutSeconds * 1000;
    let last: SparkVerdict = { ok: false, said: "not asked yet" };
    let lastLogged = "";
    for (;;) {
        let master: MasterState | undefined;
        let error: string | undefined;
        try {
            master = await fetchMasterState(spark.webUiUrl, Math.max(500, Math.min(5_000, deadline - Date.now())));
        } catch (e) {
            error = (e as Error).message;
        }
        last = sparkVerdict(spark, master, error, baseline);
        if (last.ok || Date.now() + 1_000 > deadline) return last;
        if (last.said !== lastLogged) {
            log(`Spark: ${Math.round((Date.now() - started) / 1000)} s: ${last.said}`);
            lastLogged = last.said;
        }
        await new Promise((r) => setTimeout(r, 1_000));
    }
}

/** The last 20 lines of the daemon's journal on the node, for the error message; never throws. */
export async function daemonJournal(t: SshTarget, useSudo: boolean, unit: string): Promise<string> {
    try {
        const out = await remoteCommand(t, privileged(["journalctl", "-u", unit, "-n", "20", "--no-pager"], { useSudo }), 30_000);
        return lastLines(out, 20) || "(empty)";
    } catch (e) {
        return `(could not read it: ${(e as Error).message.split("\n")[0]})`;
    }
}

