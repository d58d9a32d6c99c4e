// Drivers in cluster deploy mode, followed through the Spark master's JSON
// (its web UI's /json/: Spark's MasterPage renders JsonProtocol's master
// state, whose "activedrivers" and "completeddrivers" carry each driver's
// id, state and the id of the worker that runs it, and "workers" each
// worker's id and host). A worker keeps a driver's files in its work
// directory, <workDir>/<driver id>/ (Spark's DriverRunner: stdout, stderr,
// the fetched jar); on the nodes that is NixOS's services.spark.worker.workDir,
// whose default (nixpkgs nixos/modules/services/cluster/spark/default.nix,
// modelled by tests/fixtures/nix-stub-nixpkgs/nixos/modules/spark.nix) the
// roles keep.
import type { StackNode } from "../cluster/sparkStatus";

/** Where a node's Spark worker keeps its drivers' directories. */
export const NODE_SPARK_WORK_DIR = "/var/lib/spark";

/** Spark's DriverState values in which a driver has ended. */
export const FINAL_DRIVER_STATES = ["FINISHED", "FAILED", "ERROR", "KILLED"] as const;

export interface DriverInfo {
    id: string;
    state: string;
    /** The worker's id ("None" in Spark's JSON while none runs it). */
    worker?: string;
    mainClass?: string;
}

export interface DriverView {
    driver?: DriverInfo;
    /** The host of the worker that runs (or ran) the driver, from the master's workers. */
    workerHost?: string;
}

/** The driver id spark-submit reports in cluster mode (Spark's Client: "Driver successfully submitted as driver-…"). */
export function driverIdOf(line: string): string | undefined {
    return /submitted as (driver-\d+-\d+)/.exec(line)?.[1];
}

/** The driver `id` in the master's /json/ body, and the host of its worker. */
export function findDriver(body: unknown, id: string): DriverView {
    const j = (body ?? {}) as { activedrivers?: unknown[]; completeddrivers?: unknown[]; workers?: { id?: string; host?: string }[] };
    const all = [...(j.activedrivers ?? []), ...(j.completeddrivers ?? [])] as { id?: string; state?: string; worker?: string; mainclass?: string }[];
    const d = all.find((x) => x.id === id);
    if (!d) return {};
    const driver: DriverInfo = { id, state: String(d.state ?? "UNKNOWN"), worker: d.worker && d.worker !== "None" ? d.worker : undefined, mainClass: d.mainclass };
    let workerHost = driver.worker ? (j.workers ?? []).find((w) => w.id === driver.worker)?.host : undefined;
    // A worker's id is worker-<date>-<host>-<port> (Spark's Worker), should the worker be gone from the list.
    if (!workerHost && driver.worker) workerHost = /^worker-\d+-(.+)-\d+$/.exec(driver.worker)?.[1];
    return { driver, workerHost };
}

export function isFinal(state: string): boolean {
    return (FINAL_DRIVER_STATES as readonly string[]).includes(state);
}

/** The stack node whose address is the worker's host. */
export function nodeOfWorker(nodes: StackNode[], host: string | undefined): StackNode | undefined {
    return host === undefined ? undefined : nodes.find((n) => n.ip === host);
}

async function masterJson(webUiUrl: string, timeoutMs: number): Promise<unknown> {
    const url = `${webUiUrl.replace(/\/+$/, "")}/json/`;
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
    return res.json();
}

/**
 * Polls the master until driver `id` is in a final state; `onChange` hears
 * every new state. Throws when the master does not know the driver or the
 * time is up (the driver keeps running then).
 */
export async function followDriver(
    webUiUrl: string,
    id: string,
    o: { timeoutMs: number; intervalMs?: number; onChange?: (v: DriverView) => void },
): Promise<DriverView> {
    const deadline = Date.now() + o.timeoutMs;
    let last = "";
    let lastError = "";
    let unknownSince: number | undefined;
    for (;;) {
        try {
            const v = findDriver(await masterJson(webUiUrl, 10_000), id);
            lastError = "";
            if (!v.driver) {
                unknownSince ??= Date.now();
                // The master lists a submitted driver at once; a short grace for a master that restarts.
                if (Date.now() - unknownSince > 60_000) throw new DriverUnknown(`the master at ${webUiUrl} does not know the driver ${id}`);
            } else {
                unknownSince = undefined;
                const key = `${v.driver.state} ${v.workerHost ?? ""}`;
                if (key !== last) {
                    last = key;
                    o.onChange?.(v);
                }
                if (isFinal(v.driver.state)) return v;
            }
        } catch (e) {
            if (e instanceof DriverUnknown) throw e;
            lastError = (e as Error).message;
        }
        if (Date.now() > deadline) {
            throw new Error(`the driver ${id} did not end within the timeout${lastError ? ` (last error asking the master: ${lastError})` : ""}; it may still run: see the master's UI at ${webUiUrl}`);
        }
        await new Promise((r) => setTimeout(r, o.intervalMs ?? 2_000));
    }
}

class DriverUnknown extends Error {}
