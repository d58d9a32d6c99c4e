// Finished and running applications, from the history server's REST API
// (Spark's monitoring API: GET <history>/api/v1/applications, newest first,
// each with its attempts' start/end, duration in ms and "completed"), for
// `status` and `submit`. An absent or unreachable history server is a note
// for the caller, never a failure.

export interface ApplicationRow {
    id: string;
    name: string;
    /** COMPLETED or RUNNING (the history server does not record success). */
    state: string;
    /** Seconds, of the last attempt (while running: so far, as the server reports it). */
    durationSeconds?: number;
    startTime?: string;
    user?: string;
    /** The history server's page for the application. */
    url: string;
}

export interface ApplicationsResult {
    applications: ApplicationRow[];
    /** Why there is no list (no history server in the stack, or it did not answer). */
    note?: string;
}

interface RestApp {
    id?: string;
    name?: string;
    attempts?: { completed?: boolean; duration?: number; startTime?: string; sparkUser?: string }[];
}

/** The history server's page for one application. */
export function historyAppUrl(historyUrl: string, appId: string): string {
    return `${historyUrl.replace(/\/+$/, "")}/history/${encodeURIComponent(appId)}/`;
}

export function parseApplications(historyUrl: string, body: unknown): ApplicationRow[] {
    if (!Array.isArray(body)) throw new Error("the answer is not a list of applications");
    return (body as RestApp[]).filter((a) => typeof a.id === "string").map((a) => {
        const last = (a.attempts ?? [])[0] ?? {};
        return {
            id: a.id as string,
            name: a.name ?? "",
            state: last.completed ? "COMPLETED" : "RUNNING",
            durationSeconds: typeof last.duration === "number" ? Math.round(last.duration / 1000) : undefined,
            startTime: last.startTime,
            user: last.sparkUser,
            url: historyAppUrl(historyUrl, a.id as string),
        };
    });
}

/** The last `limit` applications the history server at `historyUrl` lists. */
export async function fetchApplications(historyUrl: string | undefined, o: { limit: number; timeoutMs: number }): Promise<ApplicationsResult> {
    if (!historyUrl) return { applications: [], note: "applications: the stack has no history server (no historyUrl output)" };
    const url = `${historyUrl.replace(/\/+$/, "")}/api/v1/applications?limit=${o.limit}`;
    try {
        const res = await fetch(url, { signal: AbortSignal.timeout(o.timeoutMs) });
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        return { applications: parseApplications(historyUrl, await res.json()) };
    } catch (e) {
        return { applications: [], note: `applications: the history server at ${historyUrl} did not answer (${(e as Error).message}); nixspark logs master --unit spark-history shows why` };
    }
}

function duration(s: number | undefined): string {
    if (s === undefined) return "-";
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
    return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** A table: state, duration, id, name. */
export function renderApplications(r: ApplicationsResult): string {
    if (r.note) return r.note;
    if (r.applications.length === 0) return "applications: none yet";
    const rows = r.applications.map((a) => [a.state, duration(a.durationSeconds), a.id, a.name]);
    const header = ["STATE", "DURATION", "APPLICATION", "NAME"];
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
    const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join("  ").trimEnd();
    return ["applications (history server, newest first):", line(header), ...rows.map(line)].join("\n");
}
