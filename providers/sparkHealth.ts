// SparkHealth: the health gate at the end of every `pulumi up`.
//
// A cluster whose VMs run but whose workers never registered is broken, so
// after all NixOS deployments this resource polls the Spark master's JSON
// endpoint until the master is ALIVE and every declared worker is registered
// and ALIVE (matched by address), bounded by timeoutSeconds. On timeout it
// fails with the workers that are missing or dead and what the master said.
//
// It has no remote object of its own: create and update both run the gate,
// diff says "update" whenever an input changes (the `trigger` input carries
// the deployed systems and the topology), and read re-polls once so that
// `pulumi refresh` records the cluster as it is now.
//
// Serialization (docs/design.md, Provider rules): the provider object uses
// only functions from ./spark/master.ts (plain, import-free, node:http
// required inside) and never touches `pulumi` itself.
import * as pulumi from "@pulumi/pulumi";
import { describeMaster, fetchMasterState, healthVerdict } from "./spark/master";
import type { ExpectedWorker, HealthVerdict, MasterState } from "./spark/master";
import { isUnknown, keptOutputs, providerCodeChanged } from "./unknown";
import { providerRef } from "./codeRef";

export type { ExpectedWorker } from "./spark/master";
// For callers that fetched the master's state from here before (scripts/bench.d/rollout.ts).
export { fetchMasterState } from "./spark/master";

/** The resource's inputs as the provider sees them. */
export interface SparkHealthInputs {
    /** spark://MASTER_IP:7077 */
    masterUrl: string;
    /** http://MASTER_IP:8080 : the master's web UI, whose /json/ endpoint is polled. */
    webUiUrl: string;
    /** Every worker the stack declares; matched with the master's registrations by ip. */
    expectedWorkers: ExpectedWorker[];
    /** How long to wait for the master and every worker to be ALIVE. */
    timeoutSeconds: number;
    /** Anything whose change must re-run the gate: the deployed systems and the topology. */
    trigger?: unknown;
    /** deploy.decommissionTimeoutSeconds, for preview's word on removed workers (not a reason to check again). */
    decommissionTimeoutSeconds?: number;
}

/** What each declared worker looked like at the last check. */
export interface WorkerHealth {
    name: string;
    ip: string;
    state: string;
    id: string;
    cores: number;
    memoryMiB: number;
}

export interface SparkHealthOutputs extends SparkHealthInputs {
    /** Declared workers that are ALIVE. */
    aliveWorkers: number;
    /** Cores and memory (MiB) of the ALIVE declared workers. */
    totalCores: number;
    totalMemoryMiB: number;
    /** ISO time of the check. */
    checkedAt: string;
    /** The master's own status at the check (ALIVE, STANDBY, ... or "UNREACHABLE"). */
    masterStatus: string;
    workers: WorkerHealth[];
}

/** The arguments of `new SparkHealth(...)`. */
export interface SparkHealthArgs {
    masterUrl: pulumi.Input<string>;
    webUiUrl: pulumi.Input<string>;
    expectedWorkers: pulumi.Input<pulumi.Input<{ name: pulumi.Input<string>; ip: pulumi.Input<string> }>[]>;
    /** Default 300 (nixspark:health.timeoutSeconds). */
    timeoutSeconds?: pulumi.Input<number>;
    trigger?: pulumi.Input<any>;
    /** deploy.decommissionTimeoutSeconds: named in preview for each removed worker. */
    decommissionTimeoutSeconds?: pulumi.Input<number>;
}

export const DEFAULT_HEALTH_TIMEOUT_SECONDS = 300;

const INPUT_KEYS = ["masterUrl", "webUiUrl", "expectedWorkers", "timeoutSeconds", "trigger"] as const;
const POLL_INTERVAL_MS = 2_000;
const REQUEST_TIMEOUT_MS = 5_000;
/** Repeat an unchanged progress line at most this often. */
const PROGRESS_EVERY_MS = 15_000;


/** JSON with sorted keys, so that key order never reads as a change. */
function canonical(v: unknown): string {
    if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
    if (v && typeof v === "object") {
        const o = v as Record<string, unknown>;
        return `{${Object.keys(o)
            .filter((k) => o[k] !== undefined)
            .sort()
            .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
            .join(",")}}`;
    }
    return JSON.stringify(v) ?? "null";
}

function outputsOf(inputs: SparkHealthInputs, verdict: HealthVerdict, master: MasterState | undefined): SparkHealthOutputs {
    return {
        masterUrl: inputs.masterUrl,
        webUiUrl: inputs.webUiUrl,
        expectedWorkers: inputs.expectedWorkers,
        timeoutSeconds: inputs.timeoutSeconds,
        ...(inputs.trigger !== undefined ? { trigger: inputs.trigger } : {}),
        aliveWorkers: verdict.aliveWorkers,
        totalCores: verdict.totalCores,
        totalMemoryMiB: verdict.totalMemoryMiB,
        checkedAt: new Date().toISOString(),
        masterStatus: master ? master.status : "UNREACHABLE",
        workers: verdict.report.matches.map((m) => ({
            name: m.name,
            ip: m.ip,
            state: m.state,
            id: m.worker ? m.worker.id : "",
            cores: m.worker ? m.worker.cores : 0,
            memoryMiB: m.worker ? m.worker.memoryMiB : 0,
        })),
    };
}

function normalize(raw: Record<string, unknown>): SparkHealthInputs {
    const t = Number(raw.timeoutSeconds);
    return {
        masterUrl: String(raw.masterUrl),
        webUiUrl: String(raw.webUiUrl),
        expectedWorkers: (Array.isArray(raw.expectedWorkers) ? raw.expectedWorkers : []).map((w: { name: unknown; ip: unknown }) => ({
            name: String(w.name),
            ip: String(w.ip),
        })),
        timeoutSeconds: Number.isFinite(t) && t > 0 ? t : DEFAULT_HEALTH_TIMEOUT_SECONDS,
        ...(raw.trigger !== undefined ? { trigger: raw.trigger } : {}),
        ...(typeof raw.decommissionTimeoutSeconds === "number" ? { decommissionTimeoutSeconds: raw.decommissionTimeoutSeconds } : {}),
    };
}

/**
 * Polls until healthy or timeoutSeconds pass. Progress goes to stderr: the
 * Pulumi engine shows a dynamic provider's stderr lines as diagnostics while
 * the resource is being created or updated.
 */
export async function waitForHealthy(inputs: SparkHealthInputs, log: (line: string) => void = (l) => console.error(l)): Promise<SparkHealthOutputs> {
    const start = Date.now();
    const deadline = start + inputs.timeoutSeconds * 1000;
    const n = inputs.expectedWorkers.length;
    let lastLine = "";
    let lastLogged = 0;
    log(`SparkHealth: waiting up to ${inputs.timeoutSeconds} s for the Spark master ${inputs.masterUrl} and ${n} worker(s) to be ALIVE`);
    for (;;) {
        let master: MasterState | undefined;
        let error: string | undefined;
        const remaining = deadline - Date.now();
        try {
            master = await fetchMasterState(inputs.webUiUrl, Math.max(500, Math.min(REQUEST_TIMEOUT_MS, remaining)));
        } catch (e) {
            error = (e as Error).message;
        }
        const verdict = healthVerdict(inputs.expectedWorkers, master, error);
        const elapsed = Math.round((Date.now() - start) / 1000);
        if (verdict.healthy) {
            log(`SparkHealth: healthy after ${elapsed} s: master ALIVE, ${verdict.aliveWorkers}/${n} worker(s) ALIVE, ${verdict.totalCores} cores, ${verdict.totalMemoryMiB} MiB`);
            return outputsOf(inputs, verdict, master);
        }
        if (Date.now() + POLL_INTERVAL_MS > deadline) {
            throw new Error(
                `Spark health check failed after ${elapsed} s (nixspark:health.timeoutSeconds = ${inputs.timeoutSeconds}): ` +
                    `${n - verdict.aliveWorkers} of ${n} declared worker(s) not ALIVE at ${inputs.masterUrl}\n` +
                    verdict.problems.map((p) => `  - ${p}`).join("\n") +
                    `\nWhat the master said (${inputs.webUiUrl}/json/): ${describeMaster(master, error)}\n` +
                    `On an affected node: systemctl status spark-worker (or spark-master); journalctl -u spark-worker -n 50; ` +
                    `then run \`pulumi up\` again, or \`npm run status\` to see every node.`,
            );
        }
        const line = master
            ? `${verdict.aliveWorkers}/${n} worker(s) ALIVE; not yet: ${verdict.problems.join("; ")}`
            : `master not answering yet (${error})`;
        if (line !== lastLine || Date.now() - lastLogged >= PROGRESS_EVERY_MS) {
            log(`SparkHealth: ${elapsed} s: ${line}`);
            lastLine = line;
            lastLogged = Date.now();
        }
        await new Promise((r) => setTimeout(r, POLL_INTERVAL_MS));
    }
}

/** Workers of the old expectation that the new one no longer has (by name and address): a scale-down's. */
export function removedWorkers(olds: unknown, news: unknown): { name: string; ip: string }[] {
    if (!Array.isArray(olds) || !Array.isArray(news) || isUnknown(news)) return [];
    const kept = new Set(news.filter((w) => w && typeof w === "object").map((w: { name?: unknown; ip?: unknown }) => `${String(w.name)}@${String(w.ip)}`));
    return olds
        .filter((w): w is { name: string; ip: string } => !!w && typeof w === "object" && typeof w.name === "string" && typeof w.ip === "string")
        .filter((w) => !kept.has(`${w.name}@${w.ip}`))
        .map((w) => ({ name: w.name, ip: w.ip }));
}

/** True when the gate must run again: an input changed (or is unknown), or a refresh found the cluster degraded. */
function needsCheck(olds: any, news: any): boolean {
    for (const k of INPUT_KEYS) {
        if (isUnknown(news[k]) || canonical(olds[k]) !== canonical(news[k])) return true;
    }
    const expected = Array.isArray(olds.expectedWorkers) ? olds.expectedWorkers.length : 0;
    return typeof olds.aliveWorkers === "number" && olds.aliveWorkers < expected;
}

export const sparkHealthProvider: pulumi.dynamic.ResourceProvider = {
    async check(_olds: any, news: any) {
        const failures: { property: string; reason: string }[] = [];
        const known = (k: string) => news[k] !== undefined && !isUnknown(news[k]);
        if (known("masterUrl") && !/^spark:\/\/[^/:]+:\d+$/.test(String(news.masterUrl))) {
            failures.push({ property: "masterUrl", reason: `expected spark://HOST:PORT, got ${JSON.stringify(news.masterUrl)}` });
        }
        if (known("webUiUrl") && !/^https?:\/\/[^/]+\/?$/.test(String(news.webUiUrl))) {
            failures.push({ property: "webUiUrl", reason: `expected http://HOST:PORT (the master's web UI), got ${JSON.stringify(news.webUiUrl)}` });
        }
        if (known("expectedWorkers")) {
            const ws = news.expectedWorkers;
            if (!Array.isArray(ws) || ws.some((w: any) => !w || typeof w.name !== "string" || typeof w.ip !== "string" || !w.name || !w.ip)) {
                failures.push({ property: "expectedWorkers", reason: "expected a list of {name, ip} with non-empty strings" });
            }
        }
        if (known("timeoutSeconds") && !(Number(news.timeoutSeconds) > 0)) {
            failures.push({ property: "timeoutSeconds", reason: `expected a positive number of seconds, got ${JSON.stringify(news.timeoutSeconds)}` });
        }
        return { inputs: news, failures };
    },

    async diff(_id: string, olds: any, news: any) {
        // Preview names the workers a scale-down removes: their deployments'
        // delete decommissions them through Spark before their VMs stop.
        for (const w of removedWorkers(olds.expectedWorkers, news.expectedWorkers)) {
            const t = typeof news.decommissionTimeoutSeconds === "number" ? `${news.decommissionTimeoutSeconds} s` : "deploy.decommissionTimeoutSeconds";
            console.error(`[${w.name}] will be decommissioned through Spark (its running executors get up to ${t} to finish or hand over their blocks), then its VM is stopped and deleted`);
        }
        // New provider code alone is an update too, one that keeps the outputs (see update).
        return { changes: needsCheck(olds, news) || providerCodeChanged(olds, news), replaces: [], deleteBeforeReplace: false };
    },

    async create(raw: any) {
        const inputs = normalize(raw);
        const outs = await waitForHealthy(inputs);
        return { id: `spark-health:${inputs.masterUrl}`, outs };
    },

    async update(_id: string, olds: any, news: any) {
        if (!needsCheck(olds, news)) return { outs: keptOutputs(olds) }; // only the provider code changed
        return { outs: await waitForHealthy(normalize(news)) };
    },

    async read(id: string, props: any) {
        const inputs = normalize(props);
        let master: MasterState | undefined;
        let error: string | undefined;
        try {
            master = await fetchMasterState(inputs.webUiUrl, REQUEST_TIMEOUT_MS);
        } catch (e) {
            error = (e as Error).message;
        }
        const verdict = healthVerdict(inputs.expectedWorkers, master, error);
        if (!verdict.healthy) console.error(`SparkHealth: refresh: ${verdict.problems.join("; ")}`);
        return { id, props: { ...props, ...outputsOf(inputs, verdict, master) } };
    },

    async delete() {
        // Nothing to remove: the gate only observes the cluster.
    },
};

export class SparkHealth extends pulumi.dynamic.Resource {
    declare readonly masterUrl: pulumi.Output<string>;
    declare readonly webUiUrl: pulumi.Output<string>;
    declare readonly aliveWorkers: pulumi.Output<number>;
    declare readonly totalCores: pulumi.Output<number>;
    declare readonly totalMemoryMiB: pulumi.Output<number>;
    declare readonly checkedAt: pulumi.Output<string>;
    declare readonly masterStatus: pulumi.Output<string>;
    declare readonly workers: pulumi.Output<WorkerHealth[]>;

    constructor(name: string, args: SparkHealthArgs, opts?: pulumi.CustomResourceOptions) {
        const props = {
            masterUrl: args.masterUrl,
            webUiUrl: args.webUiUrl,
            expectedWorkers: args.expectedWorkers,
            timeoutSeconds: args.timeoutSeconds ?? DEFAULT_HEALTH_TIMEOUT_SECONDS,
            trigger: args.trigger ?? null,
            // Outputs, declared so that they are readable on the resource.
            aliveWorkers: undefined,
            totalCores: undefined,
            totalMemoryMiB: undefined,
            checkedAt: undefined,
            masterStatus: undefined,
            workers: undefined,
        };
        super(providerRef("SparkHealth", sparkHealthProvider), name, props, opts, "nixspark", "SparkHealth");
    }
}
