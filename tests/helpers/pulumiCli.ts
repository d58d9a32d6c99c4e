// Drives the real Pulumi CLI, the way a user does, for the e2e tests and the
// benchmarks: argv arrays, a timeout on every command, a local file backend,
// no network (docs/benchmarks.md, "The test host": Pulumi), and optionally inside a network
// namespace (`ip netns exec NS pulumi ...`) so that the program, its dynamic
// providers and the nixos-rebuild / ssh they start reach the bench's guests.
//
//     await installPulumi();                       // scripts/install-pulumi, idempotent
//     const cli = new PulumiCli({ cwd, stack, backendDir, netns, env: { NIX_CONFIG } });
//     await cli.stackInit();
//     const p = await cli.preview();               // p.steps: [{op, type, name}], p.counts
//     await cli.up();
//
// Every command is run with --non-interactive and --color never; the ones
// whose result the tests read (preview, up, refresh, destroy, stack output,
// stack export) use --json where the CLI offers it.
import * as fs from "node:fs";
import * as path from "node:path";
import { run, RunResult } from "../../providers/run";

export const REPO = path.resolve(__dirname, "..", "..");
export const TOOLS_BIN = path.join(REPO, ".tools", "bin");
/** @pulumi/pulumi ships the dynamic provider launcher (pulumi-resource-pulumi-nodejs). */
export const SDK_BIN = path.join(REPO, "node_modules", "@pulumi", "pulumi");

/** Builds (or finds) the Pulumi CLI and the language host: scripts/install-pulumi is idempotent (~4 min cold). */
export async function installPulumi(log: (line: string) => void = () => undefined): Promise<void> {
    const t = Date.now();
    await run(["bash", path.join(REPO, "scripts", "install-pulumi")], { timeoutMs: 30 * 60_000, onLine: (l) => log(l) });
    log(`install-pulumi: ${Date.now() - t} ms`);
}

/** The pulumi executable: .tools/bin when built there, else the one on PATH. */
export function pulumiExecutable(): string {
    const local = path.join(TOOLS_BIN, "pulumi");
    if (fs.existsSync(local)) return local;
    for (const dir of (process.env.PATH ?? "").split(":")) {
        const p = path.join(dir, "pulumi");
        if (dir && fs.existsSync(p)) return p;
    }
    throw new Error("no pulumi executable: run scripts/install-pulumi");
}

export interface PulumiCliOptions {
    /** The project directory (Pulumi.yaml). */
    cwd: string;
    stack: string;
    /** Local file backend directory (created if missing). */
    backendDir: string;
    /** Run the CLI inside this network namespace. */
    netns?: string;
    /** PULUMI_HOME; default <backendDir>/../pulumi-home, so tests never touch ~/.pulumi. */
    pulumiHome?: string;
    /** Default "e2e-passphrase": stack secrets are encrypted with it. */
    passphrase?: string;
    /** More environment for the CLI and everything it starts (NIX_CONFIG, stand-in settings). */
    env?: Record<string, string | undefined>;
    /** Progress lines of the commands (each line of stdout/stderr), for long runs. */
    log?: (line: string) => void;
    /** Default timeout per command. */
    timeoutMs?: number;
}

export interface CommandResult extends RunResult {
    argv: string[];
    /** Wall time in milliseconds. */
    ms: number;
}

/** One step of a preview or update, as `--json` reports it. */
export interface Step {
    op: string;
    urn: string;
    /** Resource type token, e.g. "pulumi-nodejs:dynamic:Resource" or "nixspark:index:SparkCluster". */
    type: string;
    /** Resource name (the last URN component). */
    name: string;
    /** The last part of the type: "Volume", "Domain", "NixosDeployment", "SparkCluster", "Stack", ... */
    kind: string;
    /** Property names that differ (when the engine reports them). */
    diffs?: string[];
    replaceReasons?: string[];
}

export interface OperationResult extends CommandResult {
    steps: Step[];
    /** The engine's change summary: {"create": 13, "same": 2, ...}. */
    summary: Record<string, number>;
    /** Diagnostics (messages of the program and of the providers). */
    diagnostics: { severity: string; message: string; urn?: string }[];
    /** The parsed JSON document, for anything else. */
    json: any;
}

export class PulumiCliError extends Error {
    constructor(readonly result: CommandResult, readonly json?: any) {
        super(
            `pulumi ${result.argv.join(" ")}: exit code ${result.code} after ${(result.ms / 1000).toFixed(1)} s\n` +
                `${tail(result.stderr, 40)}\n${tail(result.stdout, 60)}`.trimEnd(),
        );
        this.name = "PulumiCliError";
    }
}

function tail(text: string, n: number): string {
    return text.split("\n").filter((l) => l.trim() !== "").slice(-n).join("\n");
}

/** The resource name in a URN: urn:pulumi:stack::project::type$type::name. */
export function urnName(urn: string): string {
    return urn.slice(urn.lastIndexOf("::") + 2);
}

/** The resource type in a URN (the last type of the parent chain). */
export function urnType(urn: string): string {
    const parts = urn.split("::");
    const types = parts[2] ?? "";
    return types.slice(types.lastIndexOf("$") + 1);
}

export class PulumiCli {
    readonly env: Record<string, string | undefined>;
    readonly executable: string;

    constructor(readonly opts: PulumiCliOptions) {
        fs.mkdirSync(opts.backendDir, { recursive: true });
        const home = opts.pulumiHome ?? path.join(path.dirname(path.resolve(opts.backendDir)), "pulumi-home");
        fs.mkdirSync(home, { recursive: true });
        this.executable = pulumiExecutable();
        this.env = {
            ...process.env,
            PATH: [TOOLS_BIN, SDK_BIN, process.env.PATH ?? "/usr/bin:/bin"].join(":"),
            PULUMI_HOME: home,
            PULUMI_BACKEND_URL: `file://${path.resolve(opts.backendDir)}`,
            PULUMI_CONFIG_PASSPHRASE: opts.passphrase ?? "e2e-passphrase",
            PULUMI_SKIP_UPDATE_CHECK: "1",
            PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION: "true",
            // No "Do you want to perform this update?" (every command also gets --non-interactive).
            PULUMI_SKIP_CONFIRMATIONS: "1",
            ...opts.env,
        };
    }

    get stack(): string {
        return this.opts.stack;
    }

    /** Runs `pulumi ARGS` (with --non-interactive --color never); rejects on a non-zero exit unless allowFailure. */
    async run(args: string[], o: { timeoutMs?: number; allowFailure?: boolean; stack?: boolean } = {}): Promise<CommandResult> {
        const argv = [...args, "--non-interactive", "--color", "never", ...(o.stack === false ? [] : ["--stack", this.opts.stack])];
        const cmd = this.opts.netns ? ["ip", "netns", "exec", this.opts.netns, this.executable, ...argv] : [this.executable, ...argv];
        const t = Date.now();
        const log = this.opts.log;
        const r = await run(cmd, {
            cwd: this.opts.cwd,
            env: this.env,
            timeoutMs: o.timeoutMs ?? this.opts.timeoutMs ?? 10 * 60_000,
            allowFailure: true,
            onLine: log ? (line) => log(line) : undefined,
        });
        const result: CommandResult = { ...r, argv, ms: Date.now() - t };
        if (r.code !== 0 && !o.allowFailure) throw new PulumiCliError(result);
        return result;
    }

    /** Creates the stack (in the file backend) if it does not exist yet. */
    async stackInit(): Promise<void> {
        const r = await this.run(["stack", "select", "--create"], { timeoutMs: 120_000, stack: true });
        if (r.code !== 0) throw new PulumiCliError(r);
    }

    /** Writes Pulumi.<stack>.yaml with these `nixspark:*` values (JSON is YAML); replaces the file. */
    writeStackConfig(config: Record<string, unknown>, namespace = "nixspark"): string {
        const file = path.join(this.opts.cwd, `Pulumi.${this.opts.stack}.yaml`);
        const values: Record<string, unknown> = {};
        for (const [k, v] of Object.entries(config)) values[k.includes(":") ? k : `${namespace}:${k}`] = v;
        const current = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "";
        // Keep the encryption salt `pulumi stack init` wrote.
        const salt = /^encryptionsalt:\s*(\S+)/m.exec(current)?.[1];
        fs.writeFileSync(file, JSON.stringify({ ...(salt ? { encryptionsalt: salt } : {}), config: values }, null, 2) + "\n");
        return file;
    }

    /** `pulumi config set --path KEY VALUE` (KEY without the namespace, e.g. "workers.count"). */
    async configSet(key: string, value: string, namespace = "nixspark"): Promise<void> {
        await this.run(["config", "set", "--path", `${namespace}:${key}`, value], { timeoutMs: 60_000 });
    }

    /** `pulumi config get --path KEY --json` → the value. */
    async configGet(key: string, namespace = "nixspark"): Promise<unknown> {
        const r = await this.run(["config", "get", "--path", `${namespace}:${key}`, "--json"], { timeoutMs: 60_000 });
        return JSON.parse(r.stdout).value;
    }

    /** `pulumi preview --json`; rejects when the preview fails unless allowFailure. */
    preview(o: { allowFailure?: boolean; timeoutMs?: number; extra?: string[] } = {}): Promise<OperationResult> {
        return this.operation(["preview", "--json", ...(o.extra ?? [])], o);
    }

    /** `pulumi up --yes --skip-preview --json`. */
    up(o: { allowFailure?: boolean; timeoutMs?: number; extra?: string[] } = {}): Promise<OperationResult> {
        return this.operation(["up", "--yes", "--skip-preview", "--json", ...(o.extra ?? [])], o);
    }

    /** `pulumi refresh --yes --skip-preview --json`. */
    refresh(o: { allowFailure?: boolean; timeoutMs?: number; extra?: string[] } = {}): Promise<OperationResult> {
        return this.operation(["refresh", "--yes", "--skip-preview", "--json", ...(o.extra ?? [])], o);
    }

    /** `pulumi destroy --yes --skip-preview --json`. */
    destroy(o: { allowFailure?: boolean; timeoutMs?: number; extra?: string[] } = {}): Promise<OperationResult> {
        return this.operation(["destroy", "--yes", "--skip-preview", "--json", ...(o.extra ?? [])], o);
    }

    /** `pulumi stack output --json`. */
    async outputs(): Promise<Record<string, any>> {
        const r = await this.run(["stack", "output", "--json", "--show-secrets"], { timeoutMs: 60_000 });
        return JSON.parse(r.stdout);
    }

    /** `pulumi stack export`: the checkpoint's deployment (resources with type, urn, inputs, outputs). */
    async exportState(): Promise<{ resources?: any[] } & Record<string, any>> {
        const r = await this.run(["stack", "export"], { timeoutMs: 60_000 });
        const doc = JSON.parse(r.stdout);
        return doc.deployment ?? {};
    }

    /** `pulumi stack rm --yes --force` (state only; use after destroy). */
    async stackRm(): Promise<void> {
        await this.run(["stack", "rm", "--yes", "--force"], { timeoutMs: 60_000, allowFailure: true });
    }

    private async operation(args: string[], o: { allowFailure?: boolean; timeoutMs?: number }): Promise<OperationResult> {
        const r = await this.run(args, { timeoutMs: o.timeoutMs, allowFailure: true });
        let json: any;
        try {
            json = parseJsonOutput(r.stdout);
        } catch {
            json = undefined;
        }
        const result: OperationResult = { ...r, json, steps: stepsOf(json), summary: summaryOf(json), diagnostics: diagnosticsOf(json) };
        if (r.code !== 0 && !o.allowFailure) throw new PulumiCliError(r, json);
        return result;
    }
}

/**
 * What `--json` prints: `pulumi preview --json` one JSON document
 * ({steps, diagnostics, changeSummary}); `up`, `refresh` and `destroy --json`
 * a stream of engine events, one JSON object per line
 * ({resourcePreEvent}, {resOutputsEvent}, {resOpFailedEvent},
 * {diagnosticEvent}, {summaryEvent}, ...). Both are turned into the same
 * shape: {steps, diagnostics, changeSummary, failed}.
 */
export function parseJsonOutput(stdout: string): any {
    const t = stdout.trim();
    if (t === "") throw new Error("no JSON in pulumi's output");
    try {
        const doc = JSON.parse(t);
        if (doc && typeof doc === "object" && !("sequence" in doc)) return doc;
    } catch {
        /* an event stream */
    }
    const events = t
        .split("\n")
        .map((l) => l.trim())
        .filter((l) => l.startsWith("{"))
        .map((l) => {
            try {
                return JSON.parse(l);
            } catch {
                return undefined;
            }
        })
        .filter((e) => e !== undefined);
    const steps = new Map<string, any>();
    const failed: any[] = [];
    const diagnostics: any[] = [];
    let changeSummary: Record<string, number> | undefined;
    let result: string | undefined;
    for (const e of events) {
        const meta = e.resourcePreEvent?.metadata ?? e.resOutputsEvent?.metadata;
        if (meta?.urn) {
            // Keyed by op and URN: a replacement is several steps on one URN.
            steps.set(`${meta.op} ${meta.urn}`, { op: meta.op, urn: meta.urn, newState: meta.new, oldState: meta.old, diffs: meta.diffs, replaceReasons: meta.replaceReasons });
        }
        if (e.resOpFailedEvent?.metadata) failed.push(e.resOpFailedEvent.metadata);
        if (e.diagnosticEvent) diagnostics.push(e.diagnosticEvent);
        if (e.summaryEvent) {
            changeSummary = e.summaryEvent.resourceChanges ?? {};
            result = e.summaryEvent.result;
        }
    }
    return { steps: [...steps.values()], diagnostics, changeSummary: changeSummary ?? {}, failed, result, events: events.length };
}

function stepsOf(json: any): Step[] {
    const steps: any[] = Array.isArray(json?.steps) ? json.steps : [];
    return steps.map((s) => {
        const urn = String(s.urn ?? "");
        return {
            op: String(s.op),
            urn,
            type: String(s.newState?.type ?? s.oldState?.type ?? urnType(urn)),
            name: urnName(urn),
            kind: kindOf(String(s.newState?.type ?? s.oldState?.type ?? urnType(urn))),
            diffs: Array.isArray(s.diffs) ? s.diffs : undefined,
            replaceReasons: Array.isArray(s.replaceReasons) ? s.replaceReasons : undefined,
        };
    });
}

function summaryOf(json: any): Record<string, number> {
    const s = json?.changeSummary ?? {};
    const out: Record<string, number> = {};
    for (const [k, v] of Object.entries(s)) if (typeof v === "number") out[k] = v;
    return out;
}

/** Diagnostics above debug level (the engine's own, the program's and the providers' messages). */
function diagnosticsOf(json: any): { severity: string; message: string; urn?: string }[] {
    const d: any[] = Array.isArray(json?.diagnostics) ? json.diagnostics : [];
    return d
        .filter((x) => x.severity !== "debug")
        .map((x) => ({ severity: String(x.severity ?? ""), message: String(x.message ?? ""), urn: x.urn }));
}

/** "pulumi-nodejs:dynamic/nixspark:Volume" -> "Volume", "pulumi:pulumi:Stack" -> "Stack". */
export function kindOf(type: string): string {
    return type.slice(type.lastIndexOf(":") + 1);
}

/** "op Kind" of every step, sorted, e.g. ["create Domain", "update Network"]: compare with an expected list. */
export function opKinds(steps: Step[], filter: (s: Step) => boolean = () => true): string[] {
    return steps.filter(filter).map((s) => `${s.op} ${s.kind}`).sort();
}

/** Steps grouped as "op name" strings, sorted: easy to compare with an expected list. */
export function stepList(steps: Step[], filter: (s: Step) => boolean = () => true): string[] {
    return steps.filter(filter).map((s) => `${s.op} ${s.name}`).sort();
}

/** How many steps have each op: {create: 13, same: 0, ...}. */
export function opCounts(steps: Step[]): Record<string, number> {
    const out: Record<string, number> = {};
    for (const s of steps) out[s.op] = (out[s.op] ?? 0) + 1;
    return out;
}
