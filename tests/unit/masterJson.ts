// Fabricated answers of the master's /json/ endpoint, for the tests of
// providers/spark/master.ts and of the status view built on it.
import { parseMasterJson } from "../../providers/spark/master";
import type { MasterState } from "../../providers/spark/master";

/** A body as Spark 3.5's MasterPage.renderJson writes it. */
export function body(workers: object[], status = "ALIVE"): string {
    return JSON.stringify({
        url: "spark://10.77.0.10:7077",
        workers,
        aliveworkers: workers.filter((w: any) => w.state === "ALIVE").length,
        cores: 4,
        coresused: 1,
        memory: 6144,
        memoryused: 512,
        resources: [{}],
        resourcesused: [{}],
        activeapps: [{ id: "app-1" }],
        completedapps: [],
        activedrivers: [],
        completeddrivers: [],
        status,
    });
}
export function w(host: string, state = "ALIVE", id = `worker-20260101000000-${host}-4000`, lastheartbeat = 1000) {
    return { id, host, port: 4000, webuiaddress: `http://${host}:8081`, cores: 2, coresused: 1, coresfree: 1, memory: 3072, memoryused: 512, memoryfree: 2560, resources: {}, state, lastheartbeat };
}
export const master = (workers: object[], status = "ALIVE"): MasterState => parseMasterJson(body(workers, status));
export const declared = [
    { name: "worker-1", ip: "10.77.0.11" },
    { name: "worker-2", ip: "10.77.0.12" },
];

