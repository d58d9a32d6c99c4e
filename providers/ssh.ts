// SSH to a node: the target, the options and argv (strict host keys from the
// stack's own known-hosts file), what a failure means, and remote commands.
// The known-hosts file is ./knownHosts.ts, waiting for a VM and first contact
// ./sshContact.ts, the deploy key's file ./keyFile.ts.
//
// Every function requires its modules inside its body and uses only the one
// command runner, so a dynamic provider that calls these serializes to a
// self-contained closure (docs/design.md, Provider rules).
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
import { localPath } from "./paths";
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

export function lastLine(s: string): string {
    const lines = s.split("\n").map((l) => l.trim()).filter((l) => l !== "");
    return lines.slice(-3).join(" | ") || "(nothing)";
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
