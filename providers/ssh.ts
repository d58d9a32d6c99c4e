// SSH helpers for providers that talk to a node: argv building, the per-stack
// known-hosts file, waiting for a freshly booted VM, and remote commands.
//
// Every function requires its modules inside its body and uses only the one
// command runner, so a dynamic provider that calls these serializes to a
// self-contained closure (DESIGN.md, "Dynamic providers").
//
// Host keys, in one paragraph: each stack has its own known-hosts file and
// nothing else is consulted (GlobalKnownHostsFile=/dev/null). Ordinary
// connections are StrictHostKeyChecking=yes, so a changed or unknown key is an
// error. Only "first contact" with a VM this stack has just created accepts a
// key: it connects with accept-new into a private temporary file, then, under
// a lock, removes any stale entry for the address (a replaced domain comes
// back at the same IP with a new key) and appends the new one.
//
// The known-hosts file and the deploy key file are caches (.nixspark/<stack>/
// may be lost at any time): the keys a deployment pinned are its outputs in
// the Pulumi state, and the stack's deploy key is a secret there
// (providers/deployKey.ts). restoreHostKeys and ensureKeyFile put them back
// into the files when a checkout lacks them.
import { withFileLock } from "./lock";
import { run } from "./run";

export interface SshTarget {
    host: string;
    user: string;
    port: number;
    /** Private key; "~/" is expanded, a relative path is the project directory's (the program's and the providers' working directory). */
    identityFile: string;
    /** The stack's known-hosts file; "~/" is expanded, relative as identityFile. */
    knownHostsFile: string;
}

/** "strict": the key must already be in the known-hosts file and match. "accept-new": record an unknown key, refuse a changed one. */
export type HostKeyPolicy = "strict" | "accept-new";

export type SshFailureKind = "host-key-changed" | "host-key-unknown" | "auth" | "unreachable";

export function expandHome(path: string): string {
    const os = require("node:os") as typeof import("node:os");
    if (path === "~") return os.homedir();
    if (path.startsWith("~/")) return `${os.homedir()}${path.slice(1)}`;
    return path;
}

/**
 * A key or known-hosts path as ssh is given it: "~/" expanded, and a relative
 * path made absolute against the working directory. The engine starts the
 * program and the dynamic providers in the project directory, so the stack's
 * own files are named relative to it (".nixspark/<stack>/known_hosts"): what
 * the state records then means this checkout in every checkout.
 */
export function localPath(file: string): string {
    const path = require("node:path") as typeof import("node:path");
    return path.resolve(expandHome(file));
}

/**
 * The ssh options for a target, as argv words. They are also what goes into
 * NIX_SSHOPTS, which both nixos-rebuild generations split on whitespace (the
 * shell script by unquoted expansion, nixos-rebuild-ng with shlex.split and
 * then " ".join for nix-copy-closure), so no word may contain whitespace,
 * quotes or glob characters: those are rejected with the offending key named.
 */
export function sshOptions(t: SshTarget, policy: HostKeyPolicy, connectTimeoutSeconds = 10): string[] {
    const identity = localPath(t.identityFile);
    const knownHosts = localPath(t.knownHostsFile);
    checkOptionWord("ssh port", String(t.port));
    checkOptionWord("identity file", identity);
    checkOptionWord("known-hosts file", knownHosts);
    if (!Number.isInteger(t.port) || t.port < 1 || t.port > 65535) throw new Error(`ssh port must be a whole number from 1 to 65535, got ${t.port}`);
    return [
        "-p", String(t.port),
        "-i", identity,
        "-o", "IdentitiesOnly=yes",
        "-o", `UserKnownHostsFile=${knownHosts}`,
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", `StrictHostKeyChecking=${policy === "strict" ? "yes" : "accept-new"}`,
        "-o", "HashKnownHosts=no",
        "-o", "BatchMode=yes",
        "-o", `ConnectTimeout=${Math.max(1, Math.round(connectTimeoutSeconds))}`,
        // A node that vanishes mid-command (crashed, network gone) ends the
        // connection after about a minute instead of hanging until the timeout.
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=4",
        "-o", "LogLevel=ERROR",
    ];
}

function checkOptionWord(what: string, word: string): void {
    if (word === "" || /[\s'"\\*?[\]$`]/.test(word)) {
        throw new Error(
            `${what} ${JSON.stringify(word)} cannot be passed to nixos-rebuild: NIX_SSHOPTS is split on whitespace without quoting, ` +
                `so it must not contain spaces, quotes, '\\', '$', '\`' or glob characters; use a path without them`,
        );
    }
}

/** NIX_SSHOPTS for nixos-rebuild (both generations): the same options, space-separated. */
export function nixSshOpts(t: SshTarget, policy: HostKeyPolicy): string {
    return sshOptions(t, policy).join(" ");
}

export function destination(t: Pick<SshTarget, "user" | "host">): string {
    if (!/^[A-Za-z0-9._-]+$/.test(t.user)) throw new Error(`ssh user ${JSON.stringify(t.user)} is not a plain user name`);
    if (!/^[A-Za-z0-9.:_-]+$/.test(t.host) || t.host.startsWith("-")) throw new Error(`ssh host ${JSON.stringify(t.host)} is not a plain host name or address`);
    return `${t.user}@${t.host}`;
}

/**
 * argv for running `command` on the target. The remote words are joined by
 * ssh and parsed by the remote shell, so only plain words are allowed.
 */
export function sshArgv(t: SshTarget, policy: HostKeyPolicy, command: string[], connectTimeoutSeconds = 10): string[] {
    for (const w of command) {
        if (!/^[A-Za-z0-9_./=:@%+,-]+$/.test(w)) throw new Error(`remote command word ${JSON.stringify(w)} needs shell quoting; refusing to send it`);
    }
    return ["ssh", ...sshOptions(t, policy, connectTimeoutSeconds), destination(t), "--", ...command];
}

/** What an ssh failure means, from its stderr (OpenSSH's wording). */
export function classifySshFailure(stderr: string): SshFailureKind {
    if (/REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed/i.test(stderr)) return "host-key-changed";
    if (/No [A-Z0-9-]+ host key is known for|Host key verification failed/i.test(stderr)) return "host-key-unknown";
    if (/Permission denied|Too many authentication failures/i.test(stderr)) return "auth";
    return "unreachable";
}

/** The names a host's key is filed under in known_hosts (ssh writes "[host]:port" for ports other than 22). */
export function knownHostNames(host: string, port: number): string[] {
    return port === 22 ? [host] : [`[${host}]:${port}`, host];
}

/** Explains a host-key failure and tells the user the fix. */
export function hostKeyError(t: SshTarget, kind: "host-key-changed" | "host-key-unknown", context: string, stderr: string): Error {
    const file = localPath(t.knownHostsFile);
    const name = knownHostNames(t.host, t.port)[0];
    // The file's entry for an address wins over the key the state pinned
    // (restoreHostKeys only fills a missing one), so editing the file is how
    // a user accepts a machine's new key; the next deploy records it.
    const why =
        kind === "host-key-changed"
            ? `the SSH host key of ${t.host}:${t.port} has CHANGED since this stack recorded it in ${file}. ` +
              `It is refused, never accepted silently: someone may be intercepting the connection, or the machine was re-installed outside Pulumi. ` +
              `If you know why the key changed, replace the old entry with the machine's new key after verifying its fingerprint ` +
              `(\`ssh-keygen -R '${name}' -f ${file} && ssh-keyscan -p ${t.port} ${t.host} >> ${file}\`) and run again: the deployment then records that key in the stack's state ` +
              `(or replace the node's domain, whose create records the new key)`
            : `no SSH host key for ${t.host}:${t.port} is recorded in this stack's known-hosts file ${file}, nor pinned in the stack's state. ` +
              `Keys are recorded only on first contact with a VM this stack creates; ` +
              `check the machine's key out of band and add it (e.g. \`ssh-keyscan -p ${t.port} ${t.host} >> ${file}\` after verifying the fingerprint)`;
    return new Error(`${context}: ${why}\nssh said: ${lastLine(stderr)}`);
}

function lastLine(s: string): string {
    const lines = s.split("\n").map((l) => l.trim()).filter((l) => l !== "");
    return lines.slice(-3).join(" | ") || "(nothing)";
}

/** Creates the known-hosts file (mode 600) and its directory (mode 700) if missing. */
export function ensureKnownHostsFile(file: string): string {
    const fs = require("node:fs") as typeof import("node:fs");
    const path = require("node:path") as typeof import("node:path");
    const f = localPath(file);
    fs.mkdirSync(path.dirname(f), { recursive: true, mode: 0o700 });
    if (!fs.existsSync(f)) fs.writeFileSync(f, "", { mode: 0o600 });
    return f;
}

/** Removes every entry for host:port from the known-hosts file (ssh-keygen -R). Call with the file lock held. */
export async function forgetHostKeys(file: string, host: string, port: number): Promise<void> {
    const f = localPath(file);
    for (const name of knownHostNames(host, port)) {
        // Exit 0 whether or not the name was present; non-zero only for real errors.
        await run(["ssh-keygen", "-R", name, "-f", f], { timeoutMs: 30_000 });
    }
    const fs = require("node:fs") as typeof import("node:fs");
    fs.rmSync(`${f}.old`, { force: true }); // ssh-keygen's backup copy
}

/**
 * Replaces the known-hosts entries of host:port with `lines` (a fresh VM's
 * key, learnt on first contact), under the file lock.
 */
export async function replaceHostKeys(file: string, host: string, port: number, lines: string[]): Promise<void> {
    const fs = require("node:fs") as typeof import("node:fs");
    const f = ensureKnownHostsFile(file);
    await withFileLock(f, async () => {
        await forgetHostKeys(f, host, port);
        const text = lines.map((l) => l.trim()).filter((l) => l !== "").join("\n");
        if (text) {
            const current = fs.readFileSync(f, "utf8");
            fs.appendFileSync(f, `${current === "" || current.endsWith("\n") ? "" : "\n"}${text}\n`);
        }
    });
}

/** Whether a known_hosts line is filed under one of host:port's names (its first field, comma-separated). */
function namesHost(line: string, host: string, port: number): boolean {
    const names = line.trim().split(/\s+/)[0]?.split(",") ?? [];
    const want = knownHostNames(host, port);
    return names.some((n) => want.includes(n));
}

/**
 * The entries the known-hosts file holds for host:port, as written (what a
 * deployment records as its pinned host keys). Empty when the file is missing.
 */
export function hostKeyLines(file: string, host: string, port: number): string[] {
    const fs = require("node:fs") as typeof import("node:fs");
    let text = "";
    try {
        text = fs.readFileSync(localPath(file), "utf8");
    } catch {
        return [];
    }
    return text.split("\n").map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#") && !l.startsWith("@") && namesHost(l, host, port));
}

/**
 * Puts the host keys the stack's state pinned for host:port back into the
 * known-hosts file when the file has no entry for that address (a new
 * checkout, `git clean`, rm -rf .nixspark). An entry the file has is kept as
 * it is, even another key: editing the file is how a user accepts a machine's
 * new key (see hostKeyError). Only lines naming host:port are written.
 * Returns true when it wrote some.
 */
export async function restoreHostKeys(file: string, host: string, port: number, pinned: unknown): Promise<boolean> {
    const fs = require("node:fs") as typeof import("node:fs");
    const lines = (Array.isArray(pinned) ? pinned : []).filter((l): l is string => typeof l === "string").map((l) => l.trim()).filter((l) => l !== "" && namesHost(l, host, port));
    if (lines.length === 0) return false;
    const f = ensureKnownHostsFile(file);
    if (hostKeyLines(f, host, port).length > 0) return false;
    return withFileLock(f, async () => {
        if (hostKeyLines(f, host, port).length > 0) return false;
        const current = fs.readFileSync(f, "utf8");
        fs.appendFileSync(f, `${current === "" || current.endsWith("\n") ? "" : "\n"}${lines.join("\n")}\n`);
        return true;
    });
}

/**
 * Makes `file` hold `privateKey` (the stack's deploy key, from the Pulumi
 * state) for `ssh -i`: written 0600 in a 0700 directory when missing, with
 * `publicKey` as its .pub; left alone when it holds that key already. A file
 * holding another key is never overwritten or deleted: it is renamed to
 * FILE.not-in-state-<time> (its .pub with it) and the state's key written.
 */
export function ensureKeyFile(file: string, privateKey: string, publicKey?: string): { action: "kept" | "written" | "moved-aside"; file: string; movedTo?: string } {
    const fs = require("node:fs") as typeof import("node:fs");
    const path = require("node:path") as typeof import("node:path");
    const f = localPath(file);
    const want = privateKey.endsWith("\n") ? privateKey : `${privateKey}\n`;
    let action: "kept" | "written" | "moved-aside" = "written";
    let movedTo: string | undefined;
    let current: string | undefined;
    try {
        current = fs.readFileSync(f, "utf8");
    } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
    }
    if (current !== undefined && current.trim() === want.trim()) {
        action = "kept";
    } else {
        fs.mkdirSync(path.dirname(f), { recursive: true, mode: 0o700 });
        if (current !== undefined) {
            movedTo = `${f}.not-in-state-${new Date().toISOString().replace(/[:.]/g, "-")}`;
            fs.renameSync(f, movedTo);
            if (fs.existsSync(`${f}.pub`)) fs.renameSync(`${f}.pub`, `${movedTo}.pub`);
            action = "moved-aside";
        }
        try {
            // wx: never over a file another process wrote meanwhile (parallel deployments restore the same key).
            fs.writeFileSync(f, want, { mode: 0o600, flag: "wx" });
        } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== "EEXIST" || fs.readFileSync(f, "utf8").trim() !== want.trim()) throw e;
        }
    }
    const pub = `${f}.pub`;
    if (publicKey && (action !== "kept" || !fs.existsSync(pub))) fs.writeFileSync(pub, `${publicKey.trim()}\n`, { mode: 0o644 });
    return { action, file: f, movedTo };
}

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
export async function verifiedFirstContact(t: SshTarget, consoleLog: string, opts: Omit<WaitOptions, "policy">): Promise<void> {
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
            log = fs.readFileSync(consoleLog, "utf8");
        } catch (e) {
            if ((e as NodeJS.ErrnoException).code === "EACCES") {
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

/** Runs a command on the target (strict host keys) and returns its trimmed stdout; errors name the target. */
export async function remoteCommand(t: SshTarget, command: string[], timeoutMs = 60_000): Promise<string> {
    const r = await run(sshArgv(t, "strict", command), { timeoutMs, allowFailure: true });
    if (r.code !== 0) {
        const kind = classifySshFailure(r.stderr);
        const ctx = `\`${command.join(" ")}\` on ${destination(t)} port ${t.port}`;
        if (r.code === 255 && (kind === "host-key-changed" || kind === "host-key-unknown")) throw hostKeyError(t, kind, ctx, r.stderr);
        throw new Error(`${ctx} failed with exit code ${r.code}: ${lastLine(r.stderr || r.stdout)}`);
    }
    return r.stdout.trim();
}

/**
 * A command as it runs on a node with privileges: under `sudo -n` (never a
 * password prompt) when the deploy user is not root (useSudo), as root
 * otherwise; `user` runs it as that user instead of root.
 */
export function privileged(command: string[], opts: { useSudo: boolean; user?: string }): string[] {
    if (!opts.useSudo) return command;
    return ["sudo", "-n", ...(opts.user ? ["-u", opts.user] : []), ...command];
}
