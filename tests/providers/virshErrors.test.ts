// How the libvirt providers read virsh's failures, against a stand-in virsh
// on PATH that answers with libvirt 9's exact wording (checked against the
// bench's libvirtd; virsh 9 prints no "Domain not found" for a failed domain
// lookup, only "failed to get domain"):
//   - "gone" only on libvirt's not-found error for that kind of object (for a
//     domain: its absence from a successful `virsh list --all`),
//   - every other failure is an error naming the object with libvirt's message,
//   - transient failures (a held state-change lock, a restarting libvirtd)
//     are tried again a few times with a short backoff.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as vm from "node:vm";
import { domainProvider } from "../../providers/domain";
import { networkProvider } from "../../providers/network";
import { poolProvider } from "../../providers/pool";
import { volumeProvider } from "../../providers/volume";
import { isGone, lookup, virsh } from "../../providers/virsh";
import { roundTrip } from "../helpers/serialize";

let dir: string;
let savedPath: string | undefined;
// Jest hands test code a copy of `process`; a provider loaded from its
// serialized text runs against the real one, so PATH is set on both.
const realEnv = (vm.runInThisContext("process") as NodeJS.Process).env;
const realSavedPath = realEnv.PATH;

// The stand-in: each call appends its argv to calls.log and answers from
// answers/<n> (n = call number, 1-based; "rc\nstdout-file\nstderr text") or
// answers/default.
const STANDIN = `#!/bin/sh
d=$(dirname "$0")
echo "$*" >>"$d/calls.log"
n=$(wc -l <"$d/calls.log" | tr -d ' ')
a="$d/answers/$n"; [ -f "$a" ] || a="$d/answers/default"
rc=$(sed -n 1p "$a"); out=$(sed -n 2p "$a"); err=$(sed -n '3,$p' "$a")
[ -n "$out" ] && printf '%s\\n' "$out"
[ -n "$err" ] && printf '%s\\n' "$err" >&2
exit "$rc"
`;

function answer(n: number | "default", rc: number, stderr = "", stdout = "") {
    fs.writeFileSync(path.join(dir, "answers", String(n)), `${rc}\n${stdout}\n${stderr}`);
}
function calls(): string[] {
    try {
        return fs.readFileSync(path.join(dir, "calls.log"), "utf8").split("\n").filter(Boolean);
    } catch {
        return [];
    }
}

beforeAll(() => {
    savedPath = process.env.PATH;
});
beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-virsh-"));
    fs.mkdirSync(path.join(dir, "answers"));
    fs.writeFileSync(path.join(dir, "virsh"), STANDIN, { mode: 0o755 });
    process.env.PATH = `${dir}:${savedPath}`;
    realEnv.PATH = `${dir}:${realSavedPath}`;
});
afterEach(() => {
    process.env.PATH = savedPath;
    realEnv.PATH = realSavedPath;
    fs.rmSync(dir, { recursive: true, force: true });
});

const URI = "qemu:///system";
const LOCK = "error: Timed out during operation: cannot acquire state change lock (held by monitor=remoteDispatchDomainCreate)";
const NO_SOCKET = "error: failed to connect to the hypervisor\nerror: Failed to connect socket to '/run/libvirt/libvirt-sock': No such file or directory";
const EOF_ = "error: End of file while reading data: Input/output error";

describe("virsh: transient failures are tried again, a few times", () => {
    test.each([["a held state-change lock", LOCK], ["a restarting libvirtd", NO_SOCKET], ["a closed connection", EOF_]])("%s", async (_what, stderr) => {
        answer(1, 1, stderr);
        answer(2, 1, stderr);
        answer("default", 0, "", "running");
        const r = await virsh(URI, ["domstate", "dev-master"], { backoffMs: 10 });
        expect(r.stdout.trim()).toBe("running");
        expect(calls()).toHaveLength(3);
    });

    test("bounded: after the last try the error names the object and says what libvirt said", async () => {
        answer("default", 1, LOCK);
        await expect(virsh(URI, ["start", "dev-master"], { backoffMs: 10, tries: 3, what: 'libvirt domain "dev-master"' })).rejects.toThrow(
            /^libvirt domain "dev-master": virsh start dev-master failed \(exit code 1\): Timed out during operation: cannot acquire state change lock/,
        );
        expect(calls()).toHaveLength(3);
    });

    test("anything else fails at once", async () => {
        answer("default", 1, "error: Requested operation is not valid: network 'dev-net' is not active");
        await expect(virsh(URI, ["start", "dev-master"], { backoffMs: 10 })).rejects.toThrow(/network 'dev-net' is not active/);
        expect(calls()).toHaveLength(1);
    });
});

describe("gone means libvirt's not-found error for that kind of object", () => {
    test.each([
        ["network", "error: failed to get network 'x'\nerror: Network not found: no network with matching name 'x'"],
        ["pool", "error: failed to get pool 'x'\nerror: Storage pool not found: no storage pool with matching name 'x'"],
        ["volume", "error: failed to get vol 'x'\nerror: Storage volume not found: no storage vol with matching path 'x'"],
    ] as const)("%s not found: gone", async (kind, stderr) => {
        await expect(isGone(URI, kind, "x", stderr)).resolves.toBe(true);
    });

    test("another kind's not-found error is not enough (a volume whose pool is missing is not 'gone')", async () => {
        const poolMissing = "error: failed to get pool 'p'\nerror: Storage pool not found: no storage pool with matching name 'p'";
        await expect(isGone(URI, "volume", "x", poolMissing)).resolves.toBe(false);
        await expect(isGone(URI, "network", "x", poolMissing)).resolves.toBe(false);
    });

    test("a domain: 'failed to get domain' alone is not enough; libvirt's list of all domains decides", async () => {
        answer("default", 0, "", "dev-master");
        await expect(isGone(URI, "domain", "dev-master", "error: failed to get domain 'dev-master'")).resolves.toBe(false);
        await expect(isGone(URI, "domain", "dev-worker-1", "error: failed to get domain 'dev-worker-1'")).resolves.toBe(true);
        expect(calls()).toEqual([`--quiet -c ${URI} list --all --name`, `--quiet -c ${URI} list --all --name`]);
    });

    test("a domain whose list cannot be read is an error, not gone", async () => {
        answer("default", 1, "error: failed to connect to the hypervisor\nerror: authentication failed");
        await expect(isGone(URI, "domain", "dev-master", "error: failed to get domain 'dev-master'")).rejects.toThrow(/authentication failed/);
    });

    test("lookup: any other failure names the object and carries libvirt's message", async () => {
        answer("default", 1, "error: failed to get network 'dev-net'\nerror: operation failed: network is being modified");
        await expect(lookup(URI, "network", "dev-net", ["net-dumpxml", "dev-net"])).rejects.toThrow(/libvirt network "dev-net": virsh net-dumpxml dev-net failed .*network is being modified/);
        expect(calls()).toHaveLength(1);
    });
});

describe("the providers, serialized, on errors", () => {
    test("read keeps nothing it cannot prove gone: a broken connection is an error for every kind", async () => {
        answer("default", 1, "error: failed to connect to the hypervisor\nerror: authentication failed: access denied");
        const p = { dom: await roundTrip(domainProvider), net: await roundTrip(networkProvider), pool: await roundTrip(poolProvider), vol: await roundTrip(volumeProvider) };
        await expect(p.dom.read!("dev-master", { uri: URI, name: "dev-master" })).rejects.toThrow(/libvirt domain "dev-master".*access denied/);
        await expect(p.net.read!("dev-net", { uri: URI, name: "dev-net" })).rejects.toThrow(/libvirt network "dev-net".*access denied/);
        await expect(p.pool.read!("dev-pool", { uri: URI, name: "dev-pool" })).rejects.toThrow(/libvirt storage pool "dev-pool".*access denied/);
        await expect(p.vol.read!("dev-pool/v", { uri: URI, pool: "dev-pool", name: "v" })).rejects.toThrow(/libvirt storage volume "dev-pool\/v".*access denied/);
        await expect(p.dom.delete!("dev-master", { uri: URI, name: "dev-master" })).rejects.toThrow(/access denied/);
    });

    test("read of what libvirt says does not exist: gone (refresh drops it)", async () => {
        const p = { net: await roundTrip(networkProvider), vol: await roundTrip(volumeProvider) };
        answer("default", 1, "error: failed to get network 'dev-net'\nerror: Network not found: no network with matching name 'dev-net'");
        expect((await p.net.read!("dev-net", { uri: URI, name: "dev-net" })).id).toBeFalsy();
        answer("default", 1, "error: failed to get vol 'v'\nerror: Storage volume not found: no storage vol with matching path 'v'");
        expect((await p.vol.read!("dev-pool/v", { uri: URI, pool: "dev-pool", name: "v" })).id).toBeFalsy();
    });
});
