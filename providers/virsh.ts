// virsh, the way every libvirt provider calls it: argv arrays, the stack's
// connection URI, a timeout, a bounded retry on libvirt's transient failures,
// XML handed over in a private temp file, and errors that name the object and
// carry libvirt's own message.
//
// "Gone" (docs/design.md, Provider rules) is decided from libvirt's not-found errors for the kind
// of object asked about, nothing else: VIR_ERR_NO_NETWORK "Network not found",
// VIR_ERR_NO_STORAGE_POOL "Storage pool not found", VIR_ERR_NO_STORAGE_VOL
// "Storage volume not found", VIR_ERR_NO_DOMAIN "Domain not found". virsh 9
// prints no libvirt message for a failed domain lookup (only its own "failed
// to get domain 'x'", which it also says when the connection broke), so a
// domain counts as gone only when libvirt's own list of every domain, read
// successfully, does not hold its name.
import { run, RunResult } from "./run";
import { isUnknown, providerCodeChanged } from "./unknown";

export const VIRSH_TIMEOUT_MS = 60_000;

export type LibvirtKind = "domain" | "network" | "pool" | "volume";

export interface VirshOptions {
    timeoutMs?: number;
    /** Resolve with the result instead of throwing on failure (after the retries). */
    allowFailure?: boolean;
    /** The object, for error messages: `storage pool "dev-pool"` (see label()). */
    what?: string;
    /** Attempts when libvirt fails transiently (default 4). */
    tries?: number;
    /** First pause between attempts, doubled each time (default 500 ms). */
    backoffMs?: number;
}

/** Whether a libvirt URI names this machine (no host part: qemu:///system, qemu+unix:///system?socket=...). */
export function onThisMachine(uri: string): boolean {
    return /^[a-z0-9+]+:\/\/\//i.test(uri);
}

/** How error messages name an object: `domain "dev-master"`, `storage pool "dev-pool"`, ... */
export function label(kind: LibvirtKind, name: string): string {
    const noun = { domain: "domain", network: "network", pool: "storage pool", volume: "storage volume" }[kind];
    return `libvirt ${noun} "${name}"`;
}

/**
 * A failure worth another try: nothing was done and a moment later it may
 * work. A state-change lock held by another job on the same domain
 * (VIR_ERR_OPERATION_TIMEOUT), a libvirtd that is restarting (its socket not
 * there yet, or the connection closed under us).
 */
export function isTransient(stderr: string): boolean {
    return /cannot acquire state change lock|Failed to connect socket|End of file while reading data|Cannot recv data|Connection reset by peer|client socket is closed|Cannot write data: Broken pipe/i.test(stderr);
}

/** libvirt's not-found error for that kind of object (and only that kind). */
export function isNotFound(kind: LibvirtKind, stderr: string): boolean {
    const re = { domain: /\bDomain not found\b/, network: /\bNetwork not found\b/, pool: /\bStorage pool not found\b/, volume: /\bStorage volume not found\b/ }[kind];
    return re.test(stderr);
}

/** virsh's or libvirt's word that a pool (or the pool of a volume) is not running. */
export function isPoolInactive(stderr: string): boolean {
    return /pool '[^']*' is not active|storage pool is not active|storage pool '[^']*' is not active/i.test(stderr);
}

/** virsh's lines without the "error: " prefixes, one line: what libvirt said. */
export function libvirtMessage(stderr: string): string {
    const lines = stderr.split("\n").map((l) => l.trim().replace(/^error:\s*/, "")).filter((l) => l !== "");
    return lines.join("; ") || "(no message)";
}

export function virshError(args: string[], r: RunResult, what?: string): Error {
    return new Error(`${what ? `${what}: ` : ""}virsh ${args.join(" ")} failed (exit code ${r.code}): ${libvirtMessage(r.stderr || r.stdout)}`);
}

export async function virsh(uri: string, args: string[], opts: VirshOptions = {}): Promise<RunResult> {
    const tries = Math.max(1, opts.tries ?? 4);
    let pause = opts.backoffMs ?? 500;
    for (let attempt = 1; ; attempt++) {
        const r = await run(["virsh", "--quiet", "-c", uri, ...args], {
            timeoutMs: opts.timeoutMs ?? VIRSH_TIMEOUT_MS,
            allowFailure: true,
            // virsh prints translated messages otherwise; errors must stay greppable.
            env: { ...process.env, LC_ALL: "C" },
        });
        if (r.code === 0) return r;
        if (attempt < tries && isTransient(r.stderr)) {
            console.error(`${opts.what ?? "libvirt"}: virsh ${args[0]}: ${libvirtMessage(r.stderr)}; trying again in ${pause} ms (${attempt}/${tries - 1})`);
            await sleep(pause);
            pause *= 2;
            continue;
        }
        if (opts.allowFailure) return r;
        throw virshError(args, r, opts.what);
    }
}

/**
 * True when a failed lookup of the object means it does not exist: libvirt's
 * not-found error for its kind, or for a domain (whose not-found message
 * virsh drops) its absence from a successful `virsh list --all --name`.
 */
export async function isGone(uri: string, kind: LibvirtKind, name: string, stderr: string): Promise<boolean> {
    if (isNotFound(kind, stderr)) return true;
    if (kind === "domain" && /failed to get domain/.test(stderr)) {
        const all = await virsh(uri, ["list", "--all", "--name"], { what: label(kind, name) });
        return !all.stdout.split("\n").map((l) => l.trim()).includes(name);
    }
    return false;
}

/**
 * Runs a read-only virsh command about one object: its stdout, or undefined
 * when the object does not exist. Any other failure is an error naming the
 * object with libvirt's message.
 */
export async function lookup(uri: string, kind: LibvirtKind, name: string, args: string[]): Promise<string | undefined> {
    const what = label(kind, name);
    const r = await virsh(uri, args, { allowFailure: true, what });
    if (r.code === 0) return r.stdout;
    if (await isGone(uri, kind, name, r.stderr)) return undefined;
    throw virshError(args, r, what);
}

/** Runs `fn` with the XML written to a fresh private file, removed afterwards. */
export async function withXmlFile<T>(xml: string, fn: (path: string) => Promise<T>): Promise<T> {
    const fs = require("node:fs") as typeof import("node:fs");
    const os = require("node:os") as typeof import("node:os");
    const path = require("node:path") as typeof import("node:path");
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-xml-"));
    const file = path.join(dir, "object.xml");
    fs.writeFileSync(file, xml, { mode: 0o600 });
    try {
        return await fn(file);
    } finally {
        fs.rmSync(dir, { recursive: true, force: true });
    }
}

/** `virsh net-info` / `pool-info` lines as a map: "Active" -> "yes", "State" -> "running", ... */
export function infoFields(stdout: string): Record<string, string> {
    const out: Record<string, string> = {};
    for (const line of stdout.split("\n")) {
        const m = /^([A-Za-z ]+):\s*(.*)$/.exec(line.trim());
        if (m) out[m[1].trim()] = m[2].trim();
    }
    return out;
}

/**
 * The diff every libvirt provider answers: keys whose change replaces the
 * object, keys whose change is an in-place update, everything else ignored.
 * Provider code that differs from the code the resource was last written
 * with (`__provider`) is an update on its own, so fixes reach existing
 * resources (the update keeps the outputs).
 */
export function diffByKeys(
    olds: Record<string, unknown>,
    news: Record<string, unknown>,
    replaceKeys: string[],
    updateKeys: string[],
): { changes: boolean; replaces: string[]; deleteBeforeReplace: boolean } {
    const differs = (k: string) => isUnknown(news[k]) || JSON.stringify(olds[k] ?? null) !== JSON.stringify(news[k] ?? null);
    const replaces = replaceKeys.filter(differs);
    const updates = updateKeys.filter(differs);
    return { changes: replaces.length + updates.length > 0 || providerCodeChanged(olds, news), replaces, deleteBeforeReplace: true };
}

export function sleep(ms: number): Promise<void> {
    return new Promise((r) => setTimeout(r, ms));
}
