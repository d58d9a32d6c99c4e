// virsh, the way every libvirt provider calls it: argv arrays, the stack's
// connection URI, a timeout, and XML handed over in a private temp file.
import { run, RunResult } from "./run";
import { isUnknown } from "./unknown";

export const VIRSH_TIMEOUT_MS = 60_000;

export function virsh(uri: string, args: string[], opts: { timeoutMs?: number; allowFailure?: boolean } = {}): Promise<RunResult> {
    return run(["virsh", "--quiet", "-c", uri, ...args], {
        timeoutMs: opts.timeoutMs ?? VIRSH_TIMEOUT_MS,
        allowFailure: opts.allowFailure,
        // virsh prints translated messages otherwise; errors must stay greppable.
        env: { ...process.env, LC_ALL: "C" },
    });
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

/** The XML of a libvirt object, or undefined when it does not exist. */
export async function dumpXml(uri: string, args: string[]): Promise<string | undefined> {
    const r = await virsh(uri, args, { allowFailure: true });
    if (r.code === 0) return r.stdout;
    if (/not found|no (network|domain|storage pool|storage vol)|failed to get/i.test(r.stderr)) return undefined;
    throw new Error(`virsh ${args.join(" ")}: exit code ${r.code}\n${r.stderr.trim()}`);
}


/**
 * The diff every libvirt provider answers: keys whose change replaces the
 * object, keys whose change is an in-place update, everything else ignored
 * (`__provider` among them, so a code edit alone never touches a resource).
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
    return { changes: replaces.length + updates.length > 0, replaces, deleteBeforeReplace: true };
}

export function sleep(ms: number): Promise<void> {
    return new Promise((r) => setTimeout(r, ms));
}
