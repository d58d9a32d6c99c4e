// A removed worker leaves through Spark before its VM stops: the delete of
// its NixosDeployment signals the daemon and waits for the master and the
// worker's own web UI to agree that it is gone.
import { privileged, remoteCommand, SshTarget } from "../ssh";
import { fetchMasterState } from "./master";
import type { MasterState } from "./master";
import type { SparkCheck } from "./verify";

/** Executors a worker runs, from its own web UI (/json/ of the address the master lists); 0 when it does not answer (gone). */
export function workerExecutors(webUiAddress: string, timeoutMs: number): Promise<number> {
    const http = require("node:http") as typeof import("node:http");
    return new Promise((resolve) => {
        if (!/^http:\/\//.test(webUiAddress)) return resolve(0);
        const req = http.get(`${webUiAddress.replace(/\/+$/, "")}/json/`, { timeout: timeoutMs }, (res) => {
            let body = "";
            res.setEncoding("utf8");
            res.on("data", (c: string) => (body += c));
            res.on("end", () => {
                try {
                    const j = JSON.parse(body) as { executors?: unknown[] };
                    resolve(Array.isArray(j.executors) ? j.executors.length : 0);
                } catch {
                    resolve(0);
                }
            });
            res.on("error", () => resolve(0));
        });
        req.on("timeout", () => req.destroy());
        req.on("error", () => resolve(0));
    });
}

/**
 * Decommissions a worker through Spark before its VM stops: SIGPWR to the
 * worker daemon (Spark 3.1+ with spark.decommission.enabled: the worker tells
 * the master, which stops placing executors there and tells the drivers; the
 * executors finish their tasks, hand over their blocks and exit), then waits
 * until the master lists no ALIVE worker at the address and the worker runs
 * no executor, at most decommissionTimeoutSeconds. Only the daemon's main
 * process gets the signal (--kill-whom=main): SIGPWR ends a process that does
 * not handle it, such as an executor's Python workers. Never throws: an
 * unreachable node or master is logged and the delete goes on.
 */
export async function decommissionWorker(t: SshTarget, useSudo: boolean, spark: SparkCheck, log: (m: string) => void): Promise<void> {
    const timeoutSeconds = spark.decommissionTimeoutSeconds ?? 120;
    let master: MasterState | undefined;
    try {
        master = await fetchMasterState(spark.webUiUrl, 5_000);
    } catch (e) {
        log(`decommission: the master does not answer (${(e as Error).message.split("\n")[0]}); signalling the worker anyway, nobody can confirm it`);
    }
    if (master && !master.workers.some((w) => w.host === spark.address && w.state === "ALIVE")) {
        log(`decommission: the master lists no ALIVE worker at ${spark.address}; nothing to decommission`);
        return;
    }
    const argv = privileged(["systemctl", "kill", "--kill-whom=main", "--signal=SIGPWR", spark.unit], { useSudo });
    try {
        await remoteCommand(t, argv, 30_000);
    } catch (e) {
        log(`decommission: could not signal the worker (${(e as Error).message.split("\n")[0]}); going on without it`);
        return;
    }
    if (!master) return;
    log(`decommission: sent SIGPWR to ${spark.unit}; waiting up to ${timeoutSeconds} s (deploy.decommissionTimeoutSeconds) until the master no longer lists it ALIVE and its executors are gone`);
    const started = Date.now();
    const deadline = started + timeoutSeconds * 1000;
    let said = "";
    for (;;) {
        let state = "";
        try {
            const m = await fetchMasterState(spark.webUiUrl, 5_000);
            const regs = m.workers.filter((w) => w.host === spark.address).sort((a, b) => b.lastHeartbeat - a.lastHeartbeat);
            const alive = regs.filter((w) => w.state === "ALIVE");
            if (alive.length > 0) state = `the master still lists it ALIVE (${alive.map((w) => w.id).join(", ")})`;
            else {
                const executors = regs.length > 0 ? await workerExecutors(regs[0].webUiAddress, 5_000) : 0;
                if (executors === 0) {
                    log(`decommission: done after ${Math.round((Date.now() - started) / 1000)} s: the master lists the worker as ${regs[0]?.state ?? "gone"} and it runs no executor`);
                    return;
                }
                state = `${regs[0].state} at the master, still running ${executors} executor(s)`;
            }
        } catch (e) {
            state = `the master does not answer: ${(e as Error).message.split("\n")[0]}`;
        }
        if (Date.now() + 1_000 > deadline) {
            log(`decommission did not finish within ${timeoutSeconds} s (deploy.decommissionTimeoutSeconds): ${state}; going on, the VM is stopped now`);
            return;
        }
        if (state !== said) {
            log(`decommission: ${Math.round((Date.now() - started) / 1000)} s: ${state}`);
            said = state;
        }
        await new Promise((r) => setTimeout(r, 1_000));
    }
}

