// `npm run status [-- OPTIONS]`: what state is the cluster in, right now?
//
// Reads the stack outputs, then asks each source in parallel: libvirt for
// every domain's state, every node over SSH which NixOS system it runs, and
// the Spark master's JSON for worker state, cores and memory. Prints a table
// and exits non-zero when anything is degraded. The logic (matching,
// verdicts, rendering) is pure and lives in providers/spark/master.ts and
// cluster/sparkStatus.ts; this file
// only does I/O, and every source can be overridden or switched off, so a
// missing virsh or ssh makes a column "unknown" instead of a crash.
//
// Options:
//   --stack NAME        the Pulumi stack (default: the selected one)
//   --outputs FILE      read the stack outputs from a JSON file instead of pulumi
//   --web-ui URL        ask this Spark master web UI instead of the webUiUrl output
//   --no-libvirt        do not ask libvirt (column "n/a")
//   --no-ssh            do not ask the nodes over SSH (column "n/a")
//   --virsh PATH        the virsh executable (default: virsh)
//   --json              print the report as JSON instead of a table
//   --timeout SECONDS   per probe (default 10)
// Exit codes: 0 healthy, 1 degraded, 2 the outputs could not be read or bad usage.
import * as fs from "node:fs";
import * as path from "node:path";
import { run } from "../providers/run";
import { sshArgv, classifySshFailure } from "../providers/ssh";
import type { MasterState } from "../providers/spark/master";
import { fetchMasterState } from "../providers/spark/master";
import {
    buildStatusReport,
    parseStackOutputs,
    renderStatus,
    NodeObservation,
    Probe,
    StackNode,
    StackOutputs,
    StackSsh,
    StatusReport,
} from "../cluster/sparkStatus";

export const REPO = path.resolve(__dirname, "..");

export class UsageError extends Error {}

/** A tiny argv parser: --flag, --key value, --key=value. */
export function parseArgs(argv: string[], flags: string[], valued: string[]): Record<string, string | boolean> {
    const out: Record<string, string | boolean> = {};
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
        if (!m) throw new UsageError(`unexpected argument ${JSON.stringify(a)}`);
        const [, key, inline] = m;
        if (flags.includes(key) && inline === undefined) out[key] = true;
        else if (valued.includes(key)) {
            const v = inline ?? argv[++i];
            if (v === undefined) throw new UsageError(`--${key} needs a value`);
            out[key] = v;
        } else throw new UsageError(`unknown option --${key}; options: ${[...flags, ...valued].map((k) => `--${k}`).join(" ")}`);
    }
    return out;
}

/**
 * The environment for the Pulumi CLI, like scripts/pulumi-env: the project's
 * own CLI and the local state directory when nothing else is configured.
 */
function pulumiEnv(): Record<string, string | undefined> {
    const env: Record<string, string | undefined> = { ...process.env };
    env.PATH = [path.join(REPO, ".tools/bin"), path.join(REPO, "node_modules/@pulumi/pulumi"), env.PATH].join(":");
    if (!env.PULUMI_BACKEND_URL && fs.existsSync(path.join(REPO, ".pulumi-state"))) env.PULUMI_BACKEND_URL = `file://${path.join(REPO, ".pulumi-state")}`;
    env.PULUMI_CONFIG_PASSPHRASE = env.PULUMI_CONFIG_PASSPHRASE ?? "";
    env.PULUMI_SKIP_UPDATE_CHECK = "1";
    return env;
}

/** The stack outputs: from --outputs FILE (or $NIXSPARK_OUTPUTS), else `pulumi stack output --json`. */
export async function loadStackOutputs(opts: { outputsFile?: string; stack?: string }): Promise<StackOutputs> {
    const file = opts.outputsFile ?? process.env.NIXSPARK_OUTPUTS;
    if (file) {
        let text: string;
        try {
            text = fs.readFileSync(file, "utf8");
        } catch (e) {
            throw new UsageError(`--outputs ${file}: ${(e as Error).message}`);
        }
        try {
            return parseStackOutputs(JSON.parse(text), file);
        } catch (e) {
            throw new UsageError((e as Error).message);
        }
    }
    const argv = ["pulumi", "stack", "output", "--json", ...(opts.stack ? ["--stack", opts.stack] : [])];
    const r = await run(argv, { timeoutMs: 60_000, cwd: REPO, env: pulumiEnv(), allowFailure: true }).catch((e: Error) => {
        throw new UsageError(`could not run pulumi: ${e.message}. Install it (see README) or pass --outputs FILE`);
    });
    if (r.code !== 0) {
        throw new UsageError(
            `${argv.join(" ")} failed (exit ${r.code}): ${(r.stderr.trim() || r.stdout.trim()).split("\n").slice(-3).join(" | ")}\n` +
                "Run it where the stack lives (e.g. after `source scripts/pulumi-env`, with --stack NAME), or pass --outputs FILE",
        );
    }
    try {
        return parseStackOutputs(JSON.parse(r.stdout), `stack ${opts.stack ?? "(selected)"} outputs`);
    } catch (e) {
        throw new UsageError((e as Error).message);
    }
}

type LibvirtProbe = Probe | { missing: true };

/** `virsh -c URI domstate NAME`: the state, {missing} when libvirt has no such domain, {ok:false} when libvirt could not be asked. */
export async function libvirtState(virsh: string, uri: string, domain: string, timeoutMs: number): Promise<LibvirtProbe> {
    try {
        const r = await run([virsh, "-c", uri, "domstate", domain], { timeoutMs, allowFailure: true });
        if (r.code === 0) return { ok: true, value: r.stdout.trim().split("\n")[0] || "unknown" };
        if (/failed to get domain|Domain not found|no domain with matching name/i.test(r.stderr)) return { missing: true };
        return { ok: false, error: (r.stderr.trim().split("\n").pop() ?? `exit ${r.code}`).replace(/^error:\s*/, "") };
    } catch (e) {
        return { ok: false, error: /could not start/.test((e as Error).message) ? `${virsh} is not installed` : (e as Error).message };
    }
}

/** The NixOS system a node runs: `readlink -f /run/current-system` over SSH with the stack's key and known hosts. */
export async function runningSystem(ssh: StackSsh, node: StackNode, timeoutMs: number): Promise<Probe> {
    try {
        const target = { host: node.ip, user: ssh.user, port: ssh.port, identityFile: ssh.identityFile, knownHostsFile: ssh.knownHostsFile };
        const argv = sshArgv(target, "strict", ["readlink", "-f", "/run/current-system"], Math.max(1, Math.round(timeoutMs / 2000)));
        const r = await run(argv, { timeoutMs, allowFailure: true });
        if (r.code === 0 && r.stdout.trim().startsWith("/nix/store/")) return { ok: true, value: r.stdout.trim() };
        if (r.code === 0) return { ok: false, error: `not a NixOS system: /run/current-system is ${JSON.stringify(r.stdout.trim())}` };
        const last = r.stderr.trim().split("\n").pop() ?? "";
        return { ok: false, error: `ssh ${ssh.user}@${node.ip}: ${classifySshFailure(r.stderr)}${last ? `: ${last}` : ""}` };
    } catch (e) {
        return { ok: false, error: /could not start/.test((e as Error).message) ? "ssh is not installed" : (e as Error).message };
    }
}

export interface StatusOptions {
    stack?: string;
    outputsFile?: string;
    webUiUrl?: string;
    libvirt: boolean;
    ssh: boolean;
    virsh: string;
    timeoutMs: number;
}

/** Asks every source and builds the report. */
export async function collectStatus(outputs: StackOutputs, opts: StatusOptions): Promise<StatusReport> {
    const webUiUrl = opts.webUiUrl ?? outputs.webUiUrl;
    const masterPromise = fetchMasterState(webUiUrl, opts.timeoutMs).then(
        (state): { state?: MasterState; error?: string } => ({ state }),
        (e: Error) => ({ error: e.message }),
    );
    const observations = await Promise.all(
        outputs.nodes.map(async (node): Promise<NodeObservation> => {
            const [libvirt, system] = await Promise.all([
                opts.libvirt && outputs.libvirtUri && node.libvirtName ? libvirtState(opts.virsh, node.libvirtUri ?? outputs.libvirtUri, node.libvirtName, opts.timeoutMs) : undefined,
                opts.ssh && outputs.ssh ? runningSystem(outputs.ssh, node, opts.timeoutMs) : undefined,
            ]);
            return { node, ...(libvirt ? { libvirt } : {}), ...(system ? { system } : {}) };
        }),
    );
    return buildStatusReport(observations, { ...(await masterPromise), webUiUrl });
}

export async function main(argv: string[], out: (s: string) => void = (s) => process.stdout.write(s), err: (s: string) => void = (s) => process.stderr.write(s)): Promise<number> {
    try {
        const a = parseArgs(argv, ["no-libvirt", "no-ssh", "json", "help"], ["stack", "outputs", "web-ui", "virsh", "timeout"]);
        if (a.help) {
            out(fs.readFileSync(__filename, "utf8").split("\n").filter((l) => l.startsWith("//")).map((l) => l.slice(3)).join("\n") + "\n");
            return 0;
        }
        const timeout = a.timeout === undefined ? 10 : Number(a.timeout);
        if (!(timeout > 0)) throw new UsageError(`--timeout must be a positive number of seconds, got ${a.timeout}`);
        const opts: StatusOptions = {
            stack: a.stack as string | undefined,
            outputsFile: a.outputs as string | undefined,
            webUiUrl: (a["web-ui"] as string | undefined) ?? process.env.NIXSPARK_WEB_UI_URL,
            libvirt: !a["no-libvirt"],
            ssh: !a["no-ssh"],
            virsh: (a.virsh as string | undefined) ?? "virsh",
            timeoutMs: timeout * 1000,
        };
        const outputs = await loadStackOutputs(opts);
        const report = await collectStatus(outputs, opts);
        out(a.json ? JSON.stringify(report, null, 2) + "\n" : renderStatus(report) + "\n");
        return report.degraded ? 1 : 0;
    } catch (e) {
        err(`status: ${(e as Error).message}\n`);
        return e instanceof UsageError ? 2 : 1;
    }
}

if (require.main === module) {
    main(process.argv.slice(2)).then((code) => process.exit(code));
}
