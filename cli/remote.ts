// Reaching nodes: which nodes a flag names, and the ssh/scp argv for them,
// with the stack's deploy key and known hosts (strict host keys, as the
// providers use them: providers/ssh.ts sshOptions).
import { destination, privileged, sshOptions, SshTarget } from "../providers/ssh";
import type { StackNode, StackOutputs, StackSsh } from "../cluster/sparkStatus";
import { UsageError } from "./common";

export function nodeNames(outputs: StackOutputs): string {
    return outputs.nodes.map((n) => n.name).join(", ");
}

/** One node by name (`flag` is how the user named it, for the message). */
export function nodeByName(outputs: StackOutputs, name: string, flag: string): StackNode {
    const n = outputs.nodes.find((x) => x.name === name);
    if (!n) throw new UsageError(`${flag}: the stack has no node ${JSON.stringify(name)}; its nodes are ${nodeNames(outputs)}`);
    return n;
}

/**
 * Nodes named by a selector: "all", "workers", "master", or a comma-separated
 * list of node names. Stack order, each node once.
 */
export function selectNodes(outputs: StackOutputs, selector: string, flag: string): StackNode[] {
    const words = selector.split(",").map((w) => w.trim()).filter((w) => w !== "");
    if (words.length === 0) throw new UsageError(`${flag}: no node named; give node names separated by commas, or all / workers`);
    const chosen = new Set<string>();
    for (const w of words) {
        if (w === "all") outputs.nodes.forEach((n) => chosen.add(n.name));
        else if (w === "workers") outputs.nodes.filter((n) => n.role === "worker").forEach((n) => chosen.add(n.name));
        else chosen.add(nodeByName(outputs, w, flag).name);
    }
    const nodes = outputs.nodes.filter((n) => chosen.has(n.name));
    if (nodes.length === 0) throw new UsageError(`${flag}: ${JSON.stringify(selector)} names no node; the stack's nodes are ${nodeNames(outputs)}`);
    return nodes;
}

export function targetOf(ssh: StackSsh, node: StackNode): SshTarget {
    // A machine of a hosts stack may have its own user and port (nixspark:hosts[i]).
    return { host: node.ip, user: node.sshUser ?? ssh.user, port: node.sshPort ?? ssh.port, identityFile: ssh.identityFile, knownHostsFile: ssh.knownHostsFile };
}

/**
 * A word as the remote shell must see it to get it back unchanged. ssh joins
 * the command words with spaces and the node's login shell parses the line,
 * so every word that is not plain is single-quoted: `exec -- ls 'a b'` runs
 * ls with the one argument "a b" on the node, like a local argv would.
 */
export function shellQuote(word: string): string {
    if (/^[A-Za-z0-9_./=:@%+,-]+$/.test(word)) return word;
    return `'${word.replace(/'/g, `'\\''`)}'`;
}

/** ssh argv running `command` (argv words) on the target; no command: an interactive login. */
export function remoteArgv(t: SshTarget, command: string[], opts: { tty?: boolean; extra?: string[] } = {}): string[] {
    return ["ssh", ...sshOptions(t, "strict"), ...(opts.tty ? ["-t"] : []), ...(opts.extra ?? []), destination(t), ...(command.length > 0 ? ["--", ...command.map(shellQuote)] : [])];
}

/** A remote path for scp: plain characters only, so no shell on either side reads anything into it. */
export function checkRemotePath(p: string, flag: string): string {
    if (!/^[A-Za-z0-9_./=:@%+,~-]+$/.test(p) || p.startsWith("-")) {
        throw new UsageError(`${flag}: the remote path ${JSON.stringify(p)} must be plain (letters, digits, and _ . / = : @ % + , ~ -); rename it or copy into a plain directory`);
    }
    return p;
}

/** scp argv copying the local `sources` to `dst` on the target (scp takes -P for the port where ssh takes -p). */
export function scpArgv(t: SshTarget, sources: string[], dst: string, opts: { recursive?: boolean } = {}): string[] {
    const o = sshOptions(t, "strict");
    const i = o.indexOf("-p");
    o[i] = "-P";
    return ["scp", "-q", "-p", ...(opts.recursive ? ["-r"] : []), ...o, "--", ...sources, `${destination(t)}:${dst}`];
}

/** A command as root on a node: through `sudo -n` when the stack's ssh user is not root (providers/ssh.ts, `privileged`). */
export function asRoot(user: string | undefined, command: string[]): string[] {
    return privileged(command, { useSudo: user !== "root" });
}

/** journalctl on a node, as root. */
export function journalArgv(user: string, opts: { unit?: string; lines: number; follow?: boolean }): string[] {
    return asRoot(user, ["journalctl", "--no-pager", ...(opts.unit ? ["-u", opts.unit] : []), "-n", String(opts.lines), ...(opts.follow ? ["-f"] : [])]);
}
