// What `npm run status` and `npm run smoke` (scripts/) make of a stack: the
// status table from the stack outputs, libvirt, the nodes and the master
// (whose JSON and verdicts come from providers/spark/master.ts), the stack
// outputs as the scripts read them, and the smoke job's output. No I/O here,
// so everything is unit-tested with fabricated inputs.
import { describeMatch, matchWorkers } from "../providers/spark/master";
import type { MasterState } from "../providers/spark/master";

// ---------------------------------------------------------------------------
// The status view (`npm run status`)

/** A node as the stack outputs describe it (SparkCluster's `nodes` output). */
export interface StackNode {
    name: string;
    role: string;
    ip: string;
    /** libvirt domain name; absent for nodes that are not libvirt VMs. */
    libvirtName?: string;
    /** The libvirt host that runs it, when the stack has several (nixspark:libvirt.hosts); else the stack's libvirtUri. */
    libvirtUri?: string;
    /** The NixOS system store path the stack deployed to this node. */
    system?: string;
    /** How this node is reached when it differs from the stack's `ssh` output (target hosts: nixspark:hosts[i].sshUser / sshPort). */
    sshUser?: string;
    sshPort?: number;
}

/** What one source said about one node. `undefined` = not asked (not applicable). */
export type Probe = { ok: true; value: string } | { ok: false; error: string };

export interface NodeObservation {
    node: StackNode;
    /** `virsh domstate`: "running", "shut off", ...; `{ok:false}` when libvirt could not be asked. */
    libvirt?: Probe | { missing: true };
    /** readlink /run/current-system over ssh. */
    system?: Probe;
}

export interface StatusRow {
    node: string;
    role: string;
    address: string;
    libvirt: string;
    system: string;
    spark: string;
    cores: string;
    memory: string;
    problems: string[];
}

export interface StatusReport {
    rows: StatusRow[];
    master: string;
    degraded: boolean;
    /** Every reason the cluster is degraded, naming the node. */
    problems: string[];
    /** Things that could not be checked (not degradation). */
    notes: string[];
}

/** "/nix/store/abc...-nixos-system-host-24.11" -> "abc1234 (nixos-system-host-24.11)". */
export function shortSystem(path: string): string {
    const m = /^\/nix\/store\/([0-9a-z]{32})-(.*)$/.exec(path.trim());
    return m ? `${m[1].slice(0, 7)} ${m[2]}` : path.trim();
}

export function buildStatusReport(
    observations: NodeObservation[],
    master: { state?: MasterState; error?: string; webUiUrl: string },
): StatusReport {
    const problems: string[] = [];
    const notes: string[] = [];
    const workers = observations.filter((o) => o.node.role === "worker").map((o) => ({ name: o.node.name, ip: o.node.ip }));
    const report = matchWorkers(workers, master.state);
    const matchOf = new Map(report.matches.map((m) => [m.name, m]));

    let masterLine: string;
    if (!master.state) {
        masterLine = `master ${master.webUiUrl}: UNREACHABLE (${master.error ?? "no answer"})`;
        problems.push(`master: the Spark master's web UI ${master.webUiUrl} did not answer: ${master.error ?? "no answer"}`);
    } else {
        const s = master.state;
        masterLine = `master ${s.url || master.webUiUrl}: ${s.status}, ${s.aliveWorkers} alive worker(s), ${s.cores} cores, ${s.memoryMiB} MiB, ${s.activeApps} running app(s)`;
        if (s.status !== "ALIVE") problems.push(`master: Spark master status is ${s.status}, expected ALIVE`);
    }

    const rows = observations.map((o): StatusRow => {
        const n = o.node;
        const rowProblems: string[] = [];
        const label = `${n.name} (${n.ip})`;

        let libvirt = "n/a";
        if (o.libvirt && "missing" in o.libvirt) {
            libvirt = "MISSING";
            rowProblems.push(`${label}: libvirt domain ${n.libvirtName ?? "?"} does not exist`);
        } else if (o.libvirt && o.libvirt.ok) {
            libvirt = o.libvirt.value;
            if (o.libvirt.value !== "running") rowProblems.push(`${label}: VM is ${o.libvirt.value}, expected running`);
        } else if (o.libvirt && !o.libvirt.ok) {
            libvirt = "unknown";
            notes.push(`${n.name}: libvirt state unknown: ${o.libvirt.error}`);
        }

        let system = "n/a";
        if (o.system && o.system.ok) {
            const running = o.system.value.trim();
            if (!n.system) system = shortSystem(running);
            else if (running === n.system.trim()) system = `current ${shortSystem(running).split(" ")[0]}`;
            else {
                system = `DRIFT ${shortSystem(running).split(" ")[0]} != ${shortSystem(n.system).split(" ")[0]}`;
                rowProblems.push(`${label}: runs NixOS system ${running}, the stack deployed ${n.system}`);
            }
        } else if (o.system && !o.system.ok) {
            system = "unknown";
            notes.push(`${n.name}: running NixOS system unknown: ${o.system.error}`);
        }

        let spark = "-";
        let cores = "-";
        let memory = "-";
        if (n.role === "master") {
            spark = master.state ? `master ${master.state.status}` : "UNREACHABLE";
            if (master.state) {
                cores = `${master.state.cores}`;
                memory = `${master.state.memoryMiB} MiB`;
            }
        } else if (n.role === "worker") {
            const m = matchOf.get(n.name);
            if (!master.state) spark = "unknown";
            else if (m) {
                spark = m.state;
                if (m.worker) {
                    cores = `${m.worker.coresUsed}/${m.worker.cores}`;
                    memory = `${m.worker.memoryUsedMiB}/${m.worker.memoryMiB} MiB`;
                }
                if (m.state !== "ALIVE") rowProblems.push(`${label}: Spark worker ${describeMatch(m)}`);
            }
        }
        problems.push(...rowProblems);
        return { node: n.name, role: n.role, address: n.ip, libvirt, system, spark, cores, memory, problems: rowProblems };
    });

    for (const w of report.undeclared) {
        rows.push({
            node: "(undeclared)",
            role: "worker",
            address: w.host,
            libvirt: "n/a",
            system: "n/a",
            spark: w.state,
            cores: `${w.coresUsed}/${w.cores}`,
            memory: `${w.memoryUsedMiB}/${w.memoryMiB} MiB`,
            problems: [],
        });
        notes.push(`an undeclared worker is registered with the master: ${w.host} (${w.id})`);
    }

    return { rows, master: masterLine, degraded: problems.length > 0, problems, notes };
}

const COLUMNS: [keyof StatusRow, string][] = [
    ["node", "NODE"],
    ["role", "ROLE"],
    ["address", "ADDRESS"],
    ["libvirt", "LIBVIRT"],
    ["system", "NIXOS SYSTEM"],
    ["spark", "SPARK"],
    ["cores", "CORES"],
    ["memory", "MEMORY"],
];

/** The table and the verdict as `npm run status` prints them. */
export function renderStatus(report: StatusReport): string {
    const cells = report.rows.map((r) => COLUMNS.map(([k]) => String(r[k])));
    const widths = COLUMNS.map(([, h], i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
    const line = (vals: string[]) => vals.map((v, i) => v.padEnd(widths[i])).join("  ").trimEnd();
    const out = [line(COLUMNS.map(([, h]) => h)), ...cells.map(line), "", report.master];
    if (report.degraded) {
        out.push("", `DEGRADED: ${report.problems.length} problem(s)`);
        for (const p of report.problems) out.push(`  - ${p}`);
    } else {
        out.push("", "OK: every node is running and every declared Spark worker is ALIVE");
    }
    if (report.notes.length) {
        out.push("", "Not checked:");
        for (const n of report.notes) out.push(`  - ${n}`);
    }
    return out.join("\n");
}

// ---------------------------------------------------------------------------
// Stack outputs, as `npm run status` and `npm run smoke` read them

/** The SSH settings the stack deploys with (SshTarget of providers/ssh.ts, less the host). */
export interface StackSsh {
    user: string;
    port: number;
    identityFile: string;
    knownHostsFile: string;
}

/** The stack outputs the scripts rely on (`pulumi stack output --json`). */
export interface StackOutputs {
    masterUrl: string;
    webUiUrl: string;
    /** The history server; absent in stacks from before it. */
    historyUrl?: string;
    /** Absent when the nodes are not libvirt VMs (existing NixOS hosts). */
    libvirtUri?: string;
    nodes: StackNode[];
    /** Absent: the running NixOS systems are not checked. */
    ssh?: StackSsh;
    /** Spark authentication: jobs on a node then run as `spark`, who may read the secret configuration. */
    security?: { authenticate: boolean };
}

/** Validates `pulumi stack output --json`; the error names the output and says how to fix it. */
export function parseStackOutputs(raw: unknown, source: string): StackOutputs {
    const fail = (what: string): never => {
        throw new Error(`${source}: ${what}. Run \`pulumi up\` for this stack first, or pass --outputs FILE with the stack's outputs as JSON`);
    };
    if (!raw || typeof raw !== "object" || Array.isArray(raw)) return fail("expected a JSON object of stack outputs");
    const o = raw as Record<string, unknown>;
    const text = (k: string, re: RegExp, example: string): string => {
        const v = o[k];
        if (typeof v !== "string" || !re.test(v)) return fail(`output "${k}" is ${v === undefined ? "missing" : JSON.stringify(v)}; expected for example ${example}`);
        return v;
    };
    const masterUrl = text("masterUrl", /^spark:\/\/[^/:]+:\d+$/, "spark://10.77.0.10:7077");
    const webUiUrl = text("webUiUrl", /^https?:\/\/[^/]+\/?$/, "http://10.77.0.10:8080");
    if (!Array.isArray(o.nodes)) return fail(`output "nodes" is ${o.nodes === undefined ? "missing" : "not a list"}; expected a list of {name, role, ip, libvirtName, system}`);
    const nodes = o.nodes.map((n: unknown, i: number): StackNode => {
        const x = (n ?? {}) as Record<string, unknown>;
        for (const k of ["name", "role", "ip"]) if (typeof x[k] !== "string" || !x[k]) fail(`output "nodes[${i}].${k}" is missing`);
        return {
            name: x.name as string,
            role: x.role as string,
            ip: x.ip as string,
            ...(typeof x.libvirtName === "string" && x.libvirtName ? { libvirtName: x.libvirtName } : {}),
            ...(typeof x.libvirtUri === "string" && x.libvirtUri ? { libvirtUri: x.libvirtUri } : {}),
            ...(typeof x.system === "string" && x.system ? { system: x.system } : {}),
            ...(typeof x.sshUser === "string" && x.sshUser ? { sshUser: x.sshUser } : {}),
            ...(typeof x.sshPort === "number" ? { sshPort: x.sshPort } : {}),
        };
    });
    const out: StackOutputs = { masterUrl, webUiUrl, nodes };
    if (typeof o.libvirtUri === "string" && o.libvirtUri) out.libvirtUri = o.libvirtUri;
    if (o.historyUrl !== undefined) out.historyUrl = text("historyUrl", /^https?:\/\/[^/]+\/?$/, "http://10.77.0.10:18080");
    if (o.ssh && typeof o.ssh === "object") {
        const s = o.ssh as Record<string, unknown>;
        const port = typeof s.port === "string" ? Number(s.port) : s.port;
        if (typeof s.user !== "string" || typeof s.identityFile !== "string" || typeof s.knownHostsFile !== "string" || typeof port !== "number") {
            fail(`output "ssh" must be {user, port, identityFile, knownHostsFile}, got ${JSON.stringify(o.ssh)}`);
        }
        out.ssh = { user: s.user as string, port: port as number, identityFile: s.identityFile as string, knownHostsFile: s.knownHostsFile as string };
    }
    if (o.security && typeof o.security === "object" && typeof (o.security as Record<string, unknown>).authenticate === "boolean") {
        out.security = { authenticate: (o.security as Record<string, boolean>).authenticate };
    }
    return out;
}

// ---------------------------------------------------------------------------
// The smoke job's output (scripts/jobs/sum_of_squares.py)

export const SMOKE_N = 100000;
export const SMOKE_PARTITIONS = 4;
/** sum of i*i for i = 1..100000 */
export const SMOKE_EXPECTED_SUM = "333338333350000";

export interface SmokeTask {
    partition: number;
    worker: string;
    executor: string;
    host: string;
    sum: string;
}

export interface SmokeVerdict {
    ok: boolean;
    sum?: string;
    tasks: SmokeTask[];
    /** Distinct workers that ran tasks, with their partitions. */
    workers: { worker: string; partitions: number[] }[];
    problems: string[];
}

function fields(line: string): Record<string, string> {
    const out: Record<string, string> = {};
    for (const m of line.matchAll(/(\w+)=(\S*)/g)) out[m[1]] = m[2];
    return out;
}

/** Reads the job's NIXSPARK_TASK / NIXSPARK_RESULT lines and checks the result and the spread over workers. */
export function verifySmokeOutput(stdout: string, minWorkers: number): SmokeVerdict {
    const problems: string[] = [];
    const tasks: SmokeTask[] = [];
    let sum: string | undefined;
    for (const line of stdout.split("\n")) {
        const t = line.trim();
        if (t.startsWith("NIXSPARK_TASK ")) {
            const f = fields(t);
            tasks.push({ partition: Number(f.partition), worker: f.worker ?? "?", executor: f.executor ?? "?", host: f.host ?? "?", sum: f.sum ?? "" });
        } else if (t.startsWith("NIXSPARK_RESULT ")) {
            sum = fields(t).sum;
        }
    }
    const byWorker = new Map<string, number[]>();
    for (const t of tasks) byWorker.set(t.worker, [...(byWorker.get(t.worker) ?? []), t.partition]);
    const workers = [...byWorker.entries()].map(([worker, partitions]) => ({ worker, partitions: partitions.sort((a, b) => a - b) }));
    if (sum === undefined) problems.push("the job printed no NIXSPARK_RESULT line: it did not finish (see its output above)");
    else if (sum !== SMOKE_EXPECTED_SUM) problems.push(`wrong result: the job computed ${sum}, expected ${SMOKE_EXPECTED_SUM}`);
    if (tasks.length !== SMOKE_PARTITIONS) problems.push(`expected ${SMOKE_PARTITIONS} task lines (one per partition), the job printed ${tasks.length}`);
    if (workers.length < minWorkers) {
        problems.push(
            `tasks ran on ${workers.length} worker(s) (${workers.map((w) => w.worker).join(", ") || "none"}), expected at least ${minWorkers}: ` +
                "the other workers did not get executors (see `npm run status`, and the master's web UI for the application)",
        );
    }
    return { ok: problems.length === 0, sum, tasks, workers, problems };
}
