// Reaching a node over SSH when it may still be booting: waiting for it
// (strict host keys), first contact with a VM this stack created (its key
// recorded), and the host keys a new VM prints to its console, checked
// against what it answers with before any key is trusted.
import { withFileLock } from "./lock";
import { localPath } from "./paths";
import { run } from "./run";
import { readConsoleLog } from "./consoleLog";
import { replaceHostKeys } from "./knownHosts";
import { classifySshFailure, destination, hostKeyError, HostKeyPolicy, knownHostNames, lastLine, sshArgv, SshTarget } from "./ssh";


export interface WaitOptions {
    /** Total time allowed, in seconds. */
    timeoutSeconds: number;
    policy: HostKeyPolicy;
    /** Called with a short message on each failed attempt (progress). */
    log?: (message: string) => void;
    /** Pause between attempts, in milliseconds. */
    retryDelayMs?: number;
}

/**
 * Waits until `ssh ... true` succeeds on the target, bounded in time. Refused
 * or timed-out connections are retried (a VM that is still booting); a
 * host-key or authentication failure ends the wait at once with an error that
 * says why, since waiting does not fix those.
 */
export async function waitForSsh(t: SshTarget, opts: WaitOptions): Promise<void> {
    const started = Date.now();
    const deadline = started + opts.timeoutSeconds * 1000;
    const where = `${destination(t)} port ${t.port}`;
    let attempts = 0;
    let lastError = "";
    for (;;) {
        attempts++;
        const remaining = Math.max(1, Math.ceil((deadline - Date.now()) / 1000));
        const connectTimeout = Math.min(5, remaining);
        let stderr = "";
        let ok = false;
        try {
            const r = await run(sshArgv(t, opts.policy, ["true"], connectTimeout), { timeoutMs: (connectTimeout + 10) * 1000, allowFailure: true });
            ok = r.code === 0;
            stderr = r.stderr;
        } catch (e) {
            stderr = (e as Error).message; // timed out
        }
        if (ok) {
            if (attempts > 1) opts.log?.(`SSH on ${where} answered after ${Math.round((Date.now() - started) / 1000)} s`);
            return;
        }
        const kind = classifySshFailure(stderr);
        if (kind === "host-key-changed" || kind === "host-key-unknown") throw hostKeyError(t, kind, `SSH to ${where}`, stderr);
        if (kind === "auth") {
            throw new Error(
                `SSH to ${where}: authentication failed with the key ${localPath(t.identityFile)}; ` +
                    `check ssh.privateKeyPath and that the image authorizes its public key for user ${t.user}\nssh said: ${lastLine(stderr)}`,
            );
        }
        lastError = lastLine(stderr);
        if (Date.now() >= deadline) {
            throw new Error(
                `SSH on ${where} did not answer within ${opts.timeoutSeconds} s (${attempts} attempts); last error: ${lastError}. ` +
                    `Is the VM running and did it get its address? Raise deploy.sshWaitSeconds for slow boots.`,
            );
        }
        if (attempts === 1 || attempts % 10 === 0) opts.log?.(`waiting for SSH on ${where}: ${lastError}`);
        await new Promise((r) => setTimeout(r, Math.max(0, Math.min(opts.retryDelayMs ?? 1000, deadline - Date.now()))));
    }
}

/**
 * First contact with a VM this stack just created: wait for SSH accepting its
 * key into a private temporary file, then record that key in the stack's
 * known-hosts file in place of any stale entry for the same address.
 */
export async function firstContact(t: SshTarget, opts: Omit<WaitOptions, "policy">): Promise<void> {
    const fs = require("node:fs") as typeof import("node:fs");
    const os = require("node:os") as typeof import("node:os");
    const path = require("node:path") as typeof import("node:path");
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-kh-"));
    try {
        const scratch = path.join(dir, "known_hosts");
        fs.writeFileSync(scratch, "", { mode: 0o600 });
        await waitForSsh({ ...t, knownHostsFile: scratch }, { ...opts, policy: "accept-new" });
        const lines = fs.readFileSync(scratch, "utf8").split("\n").filter((l) => l.trim() !== "");
        if (lines.length === 0) throw new Error(`SSH to ${destination(t)} port ${t.port} succeeded but recorded no host key`);
        await replaceHostKeys(t.knownHostsFile, t.host, t.port, lines);
    } finally {
        fs.rmSync(dir, { recursive: true, force: true });
    }
}

/**
 * The SHA256 fingerprint of a public key line ("[host] type base64 [comment]"),
 * as `ssh-keygen -l -E sha256` prints it: "SHA256:" and the unpadded base64
 * of the key blob's SHA-256. Undefined for a line that holds no key.
 */
export function keyFingerprint(line: string): { type: string; fingerprint: string } | undefined {
    const crypto = require("node:crypto") as typeof import("node:crypto");
    const words = line.trim().split(/\s+/);
    const i = words.findIndex((w) => /^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com)$/.test(w));
    if (i < 0 || !words[i + 1] || !/^[A-Za-z0-9+/]+=*$/.test(words[i + 1])) return undefined;
    const blob = Buffer.from(words[i + 1], "base64");
    return { type: words[i], fingerprint: `SHA256:${crypto.createHash("sha256").update(blob).digest("base64").replace(/=+$/, "")}` };
}

/** Where nixosModules.host copies each VM's latest host key line from libvirt's root-only console logs. */
export const PUBLISHED_HOST_KEYS = "/run/nixspark/host-keys";

/** The marker every nixspark node prints to its serial console at boot, followed by its host key fingerprints (nix/modules/guest.nix). */
export const CONSOLE_HOST_KEYS_MARKER = "nixspark-host-keys:";

/**
 * The host key fingerprints the VM printed to its serial console at its
 * latest boot: the last marker line of the console log libvirt writes on the
 * host (the log is appended to across boots). A guest on the network cannot
 * write there. Undefined when the VM has printed none (yet).
 */
export function consoleHostKeys(log: string): string[] | undefined {
    let last: string | undefined;
    for (const line of log.split(/\r?\n/)) {
        const at = line.indexOf(CONSOLE_HOST_KEYS_MARKER);
        if (at >= 0) last = line.slice(at + CONSOLE_HOST_KEYS_MARKER.length);
    }
    if (last === undefined) return undefined;
    const fps = last.split(/\s+/).filter((w) => /^SHA256:[A-Za-z0-9+/]+$/.test(w));
    return fps.length > 0 ? fps : undefined;
}

/** `ssh-keyscan` of the target: its public key lines, without logging in (empty while nothing answers). */
export async function scanHostKeys(t: SshTarget, timeoutSeconds = 5): Promise<string[]> {
    const r = await run(["ssh-keyscan", "-T", String(timeoutSeconds), "-p", String(t.port), t.host], { timeoutMs: (timeoutSeconds + 10) * 1000, allowFailure: true });
    return r.stdout.split("\n").filter((l) => l.trim() !== "" && !l.startsWith("#") && keyFingerprint(l) !== undefined);
}

/**
 * First contact with a VM this stack just created, without trusting on first
 * use: the host keys that answer at its address are pinned only when one of
 * them is among the fingerprints the VM printed to its own serial console
 * (`consoleLog`, written by libvirt on this host). Waits, within the time
 * allowed, for the VM to boot and print; a mismatch that lasts until then is
 * refused naming both sides, since another machine answers at the address.
 */
export async function verifiedFirstContact(t: SshTarget, consoleLog: string, opts: Omit<WaitOptions, "policy"> & { consoleLogHost?: string }): Promise<void> {
    const fs = require("node:fs") as typeof import("node:fs");
    const started = Date.now();
    const deadline = started + opts.timeoutSeconds * 1000;
    const where = `${destination(t)} port ${t.port}`;
    let printed: string[] | undefined;
    let answered: { line: string; fingerprint: string }[] = [];
    let attempts = 0;
    for (;;) {
        attempts++;
        let log = "";
        try {
            log = await readConsoleLog(consoleLog, opts.consoleLogHost);
        } catch (e) {
            // Only permission is worked around; anything else (an unreachable
            // host, a transport nixspark cannot read over) is said at once,
            // not waited out as "printed nothing".
            if ((e as NodeJS.ErrnoException).code !== "EACCES") throw e;
            // libvirt's logs are root's; nixosModules.host publishes each
            // VM's latest host key line (public information) here.
            const published = `${PUBLISHED_HOST_KEYS}/${require("node:path").basename(consoleLog)}`;
            try {
                log = fs.readFileSync(published, "utf8");
            } catch {
                throw new Error(
                    `cannot read the console log ${consoleLog} (permission denied), nor ${published}: the host key of ${where} is checked against it. ` +
                        `On NixOS, import nixosModules.host (it publishes the host key lines); elsewhere run pulumi as a user who may read libvirt's console logs, or set nixspark:ssh.hostKeys to "first-use"`,
                );
            }
        }
        printed = consoleHostKeys(log);
        answered = (await scanHostKeys(t)).map((line) => ({ line, fingerprint: keyFingerprint(line)!.fingerprint }));
        if (printed && answered.length > 0) {
            const matching = answered.filter((a) => printed!.includes(a.fingerprint));
            if (matching.length > 0) {
                // Pin only the keys the console vouches for, then log in with them.
                await replaceHostKeys(t.knownHostsFile, t.host, t.port, matching.map((m) => m.line));
                opts.log?.(`host key of ${where} matches the VM's console (${matching.map((m) => m.fingerprint).join(", ")}); pinned`);
                await waitForSsh(t, { ...opts, timeoutSeconds: Math.max(1, Math.ceil((deadline - Date.now()) / 1000)), policy: "strict" });
                return;
            }
        }
        if (Date.now() >= deadline) {
            if (printed && answered.length > 0) {
                throw new Error(
                    `host key mismatch at ${where}: the VM printed ${printed.join(", ")} on its serial console (${consoleLog}), ` +
                        `but the machine answering at that address presents ${[...new Set(answered.map((a) => a.fingerprint))].join(", ")}. ` +
                        `Another machine answers at the node's address; nothing was pinned or deployed.`,
                );
            }
            throw new Error(
                printed
                    ? `SSH on ${where} did not answer within ${opts.timeoutSeconds} s; the VM's console shows its host keys (${printed.join(", ")}). Is it on the network? Raise deploy.sshWaitSeconds for slow boots.`
                    : `the VM printed no host keys (${CONSOLE_HOST_KEYS_MARKER}) to its console log ${consoleLog} within ${opts.timeoutSeconds} s, so the key at ${where} cannot be verified. ` +
                          `Does its image print them (nix/modules/guest.nix)? For an image of your own that does not, set nixspark:ssh.hostKeys to "first-use".`,
            );
        }
        if (attempts === 1 || attempts % 10 === 0) {
            opts.log?.(`waiting for the VM to print its host keys and answer on ${where} (${printed ? "console: yes" : "console: not yet"}, ssh: ${answered.length > 0 ? "answers" : "not yet"})`);
        }
        await new Promise((r) => setTimeout(r, Math.max(0, Math.min(opts.retryDelayMs ?? 1000, deadline - Date.now()))));
    }
}
