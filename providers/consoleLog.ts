// Reading a VM's serial console log on the libvirt host that runs it: the
// file itself when that host is this machine (a URI without a host part:
// qemu:///system, qemu+unix:///system?socket=...), over ssh when it is
// another, with the login libvirt makes for that URI: user, port, `keyfile`
// and `no_verify=1` for every ssh transport; `known_hosts` only for
// qemu+libssh2 and qemu+libssh, because libvirt's qemu+ssh (the ssh binary)
// ignores it and checks the user's own known hosts (libvirt's
// virNetClientNewSSH takes no known-hosts path; its LibSSH2 and LibSSH
// clients do). Other transports cannot be read from here.
import { run } from "./run";
import { onThisMachine } from "./virsh";

/** Where a console log is read: this machine, or another over ssh. */
export type ConsoleLogPlace = { local: true } | { local: false; user?: string; host: string; port?: number; keyfile?: string; knownHosts?: string; noVerify?: boolean };

/** Where the console logs of a libvirt host are read, from its connection URI; throws for a transport nixspark cannot read them over. */
export function consoleLogPlace(uri: string | undefined): ConsoleLogPlace {
    if (!uri || onThisMachine(uri)) return { local: true };
    const m = /^([a-z0-9]+)(?:\+([a-z0-9]+))?:\/\/([^/?]+)(\/[^?]*)?(?:\?(.*))?$/i.exec(uri);
    if (!m) throw new Error(`cannot tell the host of libvirt URI ${uri}`);
    const [, , transport, authority, , query] = m;
    const t = (transport ?? "").toLowerCase();
    if (t !== "ssh" && t !== "libssh2" && t !== "libssh") {
        throw new Error(
            `the VMs of ${uri} log their consoles on that host, which nixspark reads only over ssh (qemu+ssh://..., qemu+libssh2://..., qemu+libssh://...) or locally: ` +
                `use a qemu+ssh URI, or set nixspark:ssh.hostKeys to "first-use"`,
        );
    }
    const a = /^(?:([^@]+)@)?(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(authority);
    if (!a) throw new Error(`cannot tell the host of libvirt URI ${uri}`);
    const params = new URLSearchParams(query ?? "");
    return {
        local: false,
        ...(a[1] ? { user: decodeURIComponent(a[1]) } : {}),
        host: a[2].replace(/^\[|\]$/g, ""),
        ...(a[3] ? { port: Number(a[3]) } : {}),
        ...(params.get("keyfile") ? { keyfile: params.get("keyfile")! } : {}),
        // libvirt's own URI parameters for the host key: a known-hosts file (libssh transports only), or none checked at all.
        ...(t !== "ssh" && params.get("known_hosts") ? { knownHosts: params.get("known_hosts")! } : {}),
        ...(params.get("no_verify") === "1" || (t !== "ssh" && params.get("known_hosts_verify") === "ignore") ? { noVerify: true } : {}),
    };
}

/** The ssh command that prints `file` on a remote libvirt host (argv; BatchMode; the URI's known hosts, else the user's own, as virsh). */
export function remoteCatArgv(place: Exclude<ConsoleLogPlace, { local: true }>, file: string): string[] {
    return onHostArgv(place, ["cat", "--", file]);
}

/** The ssh command that runs `command` (argv words, no shell) on a remote libvirt host with the URI's login. */
export function onHostArgv(place: Exclude<ConsoleLogPlace, { local: true }>, command: string[]): string[] {
    for (const w of command) if (!/^[A-Za-z0-9_.,:/=+@%-]+$/.test(w)) throw new Error(`cannot pass ${JSON.stringify(w)} to ssh safely (the remote shell would read it)`);
    return [
        "ssh",
        "-o", "BatchMode=yes",
        "-o", "ConnectTimeout=10",
        ...(place.port ? ["-p", String(place.port)] : []),
        ...(place.keyfile ? ["-i", place.keyfile] : []),
        ...(place.knownHosts ? ["-o", `UserKnownHostsFile=${place.knownHosts}`] : []),
        ...(place.noVerify ? ["-o", "StrictHostKeyChecking=no"] : []),
        "--",
        place.user ? `${place.user}@${place.host}` : place.host,
        ...command,
    ];
}

/** The console log's text ("" while it does not exist yet); EACCES surfaces as the error it is, for the caller's fallback. */
export async function readConsoleLog(file: string, uri?: string): Promise<string> {
    const place = consoleLogPlace(uri);
    if (place.local) {
        const fs = require("node:fs") as typeof import("node:fs");
        try {
            return fs.readFileSync(file, "utf8");
        } catch (e) {
            if ((e as NodeJS.ErrnoException).code === "ENOENT") return "";
            throw e;
        }
    }
    const r = await run(remoteCatArgv(place, file), { timeoutMs: 30_000, allowFailure: true });
    if (r.code === 0) return r.stdout;
    // ssh's own failure (no connection, login refused, an unknown or changed host key): said, not waited out.
    if (r.code === 255) {
        throw new Error(
            `cannot read the console log ${file} on ${place.host} over ssh (${uri}): ${r.stderr.trim().split("\n").pop()}; ` +
                `the VM's host key is checked against it. Make \`ssh ${place.user ? `${place.user}@` : ""}${place.host}\` work without a prompt (its host key in known_hosts, a key that logs in), or set nixspark:ssh.hostKeys to "first-use"`,
        );
    }
    // Not there yet (the VM has not started writing): nothing printed yet.
    return "";
}
