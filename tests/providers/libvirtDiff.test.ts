// Which changes update, which replace, which are no-ops: answered by each
// provider's diff, also after the provider went through Pulumi's
// serialize -> load path (the only way the engine ever calls it). A change
// libvirt applies by redefining and restarting the domain is an update; the
// Domain's update is then run against a stand-in virsh (the definition it
// writes passes virt-xml-validate; the restart goes to the deployment, or is
// done here without one), and the deployment's `vm` input decides its
// restart in rollout order.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { domainProvider } from "../../providers/domain";
import { dhcpHostXml, dnsHostXml, domainXml, guestResilience, networkXml, readDomain } from "../../providers/libvirtXml";
import { deploymentDiff, sameVmIdentity } from "../../providers/deployment/diff";
import { definitionChanges, restartForDefinition } from "../../providers/vmPower";
import { ensureHostTools } from "../helpers/hostTools";
import { networkProvider, planHostChanges } from "../../providers/network";
import { poolProvider } from "../../providers/pool";
import { volumeProvider } from "../../providers/volume";
import { UNKNOWN } from "../../providers/unknown";
import { roundTrip } from "../helpers/serialize";

const hosts = [
    { mac: "02:00:00:00:00:01", ip: "10.77.0.10", name: "dev-master" },
    { mac: "02:00:00:00:00:02", ip: "10.77.0.11", name: "dev-worker-1" },
];
const net = { uri: "qemu:///system", name: "dev-net", bridge: "nxs-dev", gateway: "10.77.0.1", netmask: "255.255.255.0", dhcpStart: "10.77.0.192", dhcpEnd: "10.77.0.254", hosts, autostart: true };
const netOut = { ...net, uuid: "u-1", active: true, __provider: "old code" };
const dom = {
    uri: "qemu:///system", name: "dev-master", domainType: "qemu" as "qemu" | "kvm", vcpus: 1, memoryMiB: 1024, diskPath: "/p/dev-master.qcow2",
    mac: "02:00:00:00:00:01", network: "dev-net", consoleLog: "/l/dev-master.log", autostart: true, shutdownTimeoutSeconds: 60,
};
const domOut = { ...dom, uuid: "d-1", state: "running", pendingRestart: false, __provider: "old code" };
/** Everything libvirt applies by redefining the domain and restarting it, and a new value for each. */
const restartChanges: [string, unknown, RegExp][] = [
    ["memoryMiB", 2048, /^memory 1024 -> 2048 MiB: the VM restarts/],
    ["vcpus", 4, /^vCPUs 1 -> 4: the VM restarts/],
    ["domainType", "kvm", /^domain type qemu -> kvm: the VM restarts/],
    ["kernel", "/boot/vmlinuz-2", /^kernel \(none\) -> \/boot\/vmlinuz-2: the VM restarts/],
    ["consoleLog", "/l2/dev-master.log", /^console log \/l\/dev-master\.log -> \/l2\/dev-master\.log: the VM restarts/],
    ["network", "dev-net2", /^network dev-net -> dev-net2: the VM restarts/],
    ["hostname", "dev-master", /^host name \(none\) -> dev-master: the VM restarts/],
    // A domain defined before the watchdog and panic devices: libvirt adds them to the saved definition only, so a restart, in rollout order.
    ["resilience", guestResilience(), /^watchdog\/panic devices \(none\) -> watchdog i6300esb\/reset, panic isa: the VM restarts/],
];
/** The same with direct kernel boot: initrd and command line. */
const kdom = { ...dom, kernel: "/boot/vmlinuz", initrd: "/boot/initrd.img", cmdline: "console=ttyS0" };
const kernelChanges: [string, unknown, RegExp][] = [
    ["kernel", "/boot/vmlinuz-2", /^kernel \/boot\/vmlinuz -> \/boot\/vmlinuz-2: /],
    ["initrd", "/boot/initrd-2.img", /^initrd \/boot\/initrd\.img -> \/boot\/initrd-2\.img: /],
    ["cmdline", "console=ttyS0 quiet", /^kernel command line "console=ttyS0" -> "console=ttyS0 quiet": the VM restarts \(shutdown, then start\), in rollout order, by its NixOS deployment/],
];
const vol = { uri: "qemu:///system", pool: "dev-pool", name: "dev-master.qcow2", basePath: "/pool/dev-base-aaaaaaaaaaaa.qcow2", capacityBytes: 10 * 1024 ** 3 };

type Diff = { changes?: boolean; replaces?: string[] };
const providers = { networkProvider, domainProvider, volumeProvider, poolProvider };

describe.each([
    ["as written", async () => providers],
    ["after serialize -> load", async () => ({
        networkProvider: await roundTrip(networkProvider),
        domainProvider: await roundTrip(domainProvider),
        volumeProvider: await roundTrip(volumeProvider),
        poolProvider: await roundTrip(poolProvider),
    })],
])("diff decisions (%s)", (_label, load) => {
    let p: typeof providers;
    beforeAll(async () => {
        p = await load();
    });
    const ndiff = (news: object): Promise<Diff> => p.networkProvider.diff!("dev-net", netOut, { ...net, ...news });
    const ddiff = (news: object, olds: object = {}): Promise<Diff> => p.domainProvider.diff!("dev-master", { ...domOut, ...olds }, { ...dom, ...news });
    const vdiff = (news: object): Promise<Diff> => p.volumeProvider.diff!("x", { ...vol, path: "/p/x" }, { ...vol, ...news });

    test("network: identical inputs (and the same provider code) are a no-op", async () => {
        expect(await ndiff({})).toMatchObject({ changes: false, replaces: [] });
        expect(await ndiff({ __provider: "old code" })).toMatchObject({ changes: false, replaces: [] });
        expect(await ndiff({ hosts: [...hosts].reverse() })).toMatchObject({ changes: false });
    });
    test("network: new provider code alone is an update, never a replace", async () => {
        expect(await ndiff({ __provider: "new code" })).toMatchObject({ changes: true, replaces: [] });
    });
    test("network: refresh saw it stopped: an update starts it", async () => {
        expect(await p.networkProvider.diff!("dev-net", { ...netOut, active: false }, net)).toMatchObject({ changes: true, replaces: [] });
    });
    test("network: a new reservation is an in-place update", async () => {
        const d = await ndiff({ hosts: [...hosts, { mac: "02:00:00:00:00:03", ip: "10.77.0.12", name: "dev-worker-2" }] });
        expect(d).toMatchObject({ changes: true, replaces: [] });
    });
    test.each([["bridge", "nxs-x"], ["gateway", "10.78.0.1"], ["name", "dev-net2"], ["netmask", "255.255.0.0"]])("network: %s replaces", async (k, v) => {
        expect((await ndiff({ [k]: v })).replaces).toEqual([k]);
    });
    test("network: unknown reservations during preview count as a change", async () => {
        expect(await ndiff({ hosts: UNKNOWN })).toMatchObject({ changes: true, replaces: [] });
    });

    test("domain: no-op, updates in place; only a new disk or identity replaces", async () => {
        expect(await ddiff({})).toMatchObject({ changes: false });
        expect(await ddiff({ autostart: false })).toMatchObject({ changes: true, replaces: [] });
        for (const [k, v] of [["mac", "02:00:00:00:00:09"], ["diskPath", "/p/other"], ["name", "dev-other"], ["uri", "qemu+ssh://h/system"]] as const) {
            expect((await ddiff({ [k]: v })).replaces).toEqual([k]);
        }
        // A Volume replaced (its path unknown in preview) replaces the VM; a Network replaced (its name unknown) does not.
        expect((await ddiff({ diskPath: UNKNOWN })).replaces).toEqual(["diskPath"]);
        expect(await ddiff({ network: UNKNOWN })).toMatchObject({ changes: true, replaces: [] });
        // Only the shutdown timeout: not something the VM sees.
        expect(await ddiff({ shutdownTimeoutSeconds: 5 })).toMatchObject({ changes: false });
        // The disk grows through its Volume: a size the domain once carried (old state) never replaces the VM.
        expect(await ddiff({}, { diskGiB: 10 })).toMatchObject({ changes: false, replaces: [] });
        // Nor do the state directory or check's preview note.
        expect(await ddiff({ stateDir: "/s", restartRequired: "x" })).toMatchObject({ changes: false });
    });
    test.each([...restartChanges.map(([k, v, re]) => [k, v, re, dom] as const), ...kernelChanges.map(([k, v, re]) => [`${k} (direct kernel boot)`, v, re, kdom] as const)])(
        "domain: a new %s is an update that restarts the VM, never a replace; check says so in preview",
        async (k, v, re, base) => {
            const key = k.split(" ")[0];
            const olds = { ...domOut, ...base };
            expect(await p.domainProvider.diff!("dev-master", olds, { ...base, [key]: v })).toMatchObject({ changes: true, replaces: [] });
            const r = await p.domainProvider.check!(base, { ...base, [key]: v, restartBy: "deployment" });
            expect(r.inputs.restartRequired).toMatch(re);
            expect(r.inputs.restartRequired).toMatch(/: the VM restarts \(shutdown, then start\), in rollout order, by its NixOS deployment before it switches \(deploy\.rollout\)$/);
            expect((await p.domainProvider.check!(base, { ...base, [key]: v })).inputs.restartRequired).toMatch(/: the VM restarts \(shutdown, then start\), one VM of the stack at a time$/);
        },
    );
    test("domain: check says in preview what restarts the VM, and nothing else does", async () => {
        const r = await p.domainProvider.check!(dom, { ...dom, memoryMiB: dom.memoryMiB + 256 });
        expect(r.inputs.restartRequired).toBe(`memory ${dom.memoryMiB} -> ${dom.memoryMiB + 256} MiB: the VM restarts (shutdown, then start), one VM of the stack at a time`);
        expect((await p.domainProvider.check!(dom, { ...dom, vcpus: 3 })).inputs.restartRequired).toMatch(/^vCPUs \d+ -> 3: the VM restarts/);
        // Several at once, in one line.
        expect((await p.domainProvider.check!(kdom, { ...kdom, consoleLog: "/l2/x.log", cmdline: "console=ttyS0 quiet", restartBy: "deployment" })).inputs.restartRequired).toBe(
            'kernel command line "console=ttyS0" -> "console=ttyS0 quiet", console log /l/dev-master.log -> /l2/x.log: the VM restarts (shutdown, then start), in rollout order, by its NixOS deployment before it switches (deploy.rollout)',
        );
        expect((await p.domainProvider.check!(dom, { ...dom, network: UNKNOWN })).inputs.restartRequired).toMatch(/^network dev-net -> \(known after apply\): the VM restarts/);
        expect((await p.domainProvider.check!(dom, { ...dom, autostart: false })).inputs.restartRequired).toBe("");
        expect((await p.domainProvider.check!({}, dom)).inputs.restartRequired).toBe(""); // a new VM: nothing restarts
        // A replaced VM does not restart either: it is deleted and created anew.
        expect((await p.domainProvider.check!(dom, { ...dom, diskPath: "/p/other", memoryMiB: 2048 })).inputs.restartRequired).toBe("");
    });
    test("domain: preview warns, naming the node, that a replaced VM goes down without a rollout", async () => {
        const said: string[] = [];
        // (The provider as written: a loaded one writes to the process's own console, which jest does not spy on.)
        const spy = jest.spyOn(console, "error").mockImplementation((m: unknown) => void said.push(String(m)));
        try {
            await domainProvider.diff!("dev-master", domOut, { ...dom, diskPath: "/p/other" });
            await domainProvider.diff!("dev-master", domOut, { ...dom, consoleLog: "/l2/dev-master.log", cmdline: "x" });
        } finally {
            spy.mockRestore();
        }
        expect(said).toEqual([
            "warning: [dev-master] its VM is replaced (diskPath changed): the node goes down without a rollout (the VM is shut down and deleted, a new one created and deployed from scratch); " +
                "nodes replaced together go down together, and a worker decommissioned first can hand its blocks only to workers that stay up",
        ]);
    });
    test("domain: a refresh that saw the VM run an older definition than saved makes the next up an update", async () => {
        expect(await ddiff({}, { pendingRestart: true })).toMatchObject({ changes: true, replaces: [] });
    });
    test("domain: a refresh that found an interface off its network's bridge (the network was re-created) makes the next up an update: no replace, no restart", async () => {
        const detachedInterfaces = ["interface vnet0 (02:00:00:00:00:01) is on no bridge, not on nxs-dev of network dev-net"];
        expect(await ddiff({}, { detachedInterfaces })).toMatchObject({ changes: true, replaces: [] });
        expect(await ddiff({}, { detachedInterfaces: [] })).toMatchObject({ changes: false, replaces: [] });
        expect((await p.domainProvider.check!({ ...domOut, detachedInterfaces }, dom)).inputs.restartRequired).toBe("");
        // What preview prints (the provider as written: a loaded one writes to the process's own console).
        const said: string[] = [];
        const spy = jest.spyOn(console, "error").mockImplementation((m: unknown) => void said.push(String(m)));
        try {
            await domainProvider.diff!("dev-master", { ...domOut, detachedInterfaces }, dom);
        } finally {
            spy.mockRestore();
        }
        expect(said).toEqual([`[dev-master] ${detachedInterfaces[0]}: \`pulumi up\` plugs it back into the bridge (an update, no restart)`]);
    });
    test("domain: a VM that refresh saw shut off or paused is brought back by an update", async () => {
        expect(await ddiff({}, { state: "shut off" })).toMatchObject({ changes: true, replaces: [] });
        expect(await ddiff({}, { state: "paused" })).toMatchObject({ changes: true, replaces: [] });
    });
    test("domain: a new or changed host name is an in-place update (a restart applies it); new provider code too", async () => {
        expect(await ddiff({ hostname: "dev-master" })).toMatchObject({ changes: true, replaces: [] });
        expect(await ddiff({ hostname: "other" }, { hostname: "dev-master" })).toMatchObject({ changes: true, replaces: [] });
        expect(await ddiff({ hostname: "dev-master" }, { hostname: "dev-master" })).toMatchObject({ changes: false });
        expect(await ddiff({ __provider: "new code" })).toMatchObject({ changes: true, replaces: [] });
    });
    test("domain: adding the shared data directory (nixspark:data) is an in-place update that restarts the VM in rollout order, never a replace; so is a new path, tag or virtiofsd", async () => {
        const share = { dataDir: os.tmpdir(), dataTag: "nixspark-data" };
        expect(await ddiff(share)).toMatchObject({ changes: true, replaces: [] });
        const r = await p.domainProvider.check!(dom, { ...dom, ...share, restartBy: "deployment" });
        expect(r.failures).toEqual([]);
        expect(r.inputs.restartRequired).toBe(
            `shared directory (none) -> ${os.tmpdir()}, shared directory tag (none) -> nixspark-data: the VM restarts (shutdown, then start), in rollout order, by its NixOS deployment before it switches (deploy.rollout)`,
        );
        for (const change of [{ dataDir: "/srv/other" }, { dataTag: "other" }, { virtiofsd: "/usr/lib/qemu/virtiofsd" }]) {
            expect(await ddiff({ ...share, ...change }, share)).toMatchObject({ changes: true, replaces: [] });
        }
        expect(await ddiff(share, share)).toMatchObject({ changes: false });
        // Removing it is an update too.
        expect(await ddiff({}, share)).toMatchObject({ changes: true, replaces: [] });
    });
    test("domain: check refuses a shared directory that is missing or no directory on this host, or a tag longer than virtiofs holds, naming the config key", async () => {
        const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-data-"));
        try {
            const file = path.join(tmp, "f");
            fs.writeFileSync(file, "x");
            const fail = async (news: object) => (await p.domainProvider.check!({}, { ...dom, dataTag: "nixspark-data", ...news })).failures;
            expect(await fail({ dataDir: tmp })).toEqual([]);
            expect(await fail({ dataDir: path.join(tmp, "missing") })).toEqual([{ property: "dataDir", reason: expect.stringMatching(/^nixspark:data\.path \S+missing is missing on the host; create it \(mkdir -p /) }]);
            expect(await fail({ dataDir: file })).toEqual([{ property: "dataDir", reason: expect.stringMatching(/^nixspark:data\.path \S+ is not a directory on the host/) }]);
            expect(await fail({ dataDir: "data" })).toEqual([{ property: "dataDir", reason: expect.stringMatching(/must be an absolute directory/) }]);
            expect(await fail({ dataDir: tmp, dataTag: "t".repeat(37) })).toEqual([{ property: "dataTag", reason: expect.stringMatching(/^nixspark:data\.tag "t{37}" must be 1 to 36 bytes/) }]);
            expect(await fail({ dataDir: tmp, dataTag: "t".repeat(36) })).toEqual([]);
            // libvirt on another machine: its directories are not looked up here; unknown in preview: nothing to check.
            expect(await fail({ dataDir: path.join(tmp, "missing"), uri: "qemu+ssh://host/system" })).toEqual([]);
            expect(await fail({ dataDir: UNKNOWN })).toEqual([]);
        } finally {
            fs.rmSync(tmp, { recursive: true, force: true });
        }
    });
    test("domain: check refuses a host name that is not an RFC 1123 label", async () => {
        for (const bad of ["-dev", "dev_master", "a".repeat(64), "dev.master", ""]) {
            const r = await p.domainProvider.check!({}, { ...dom, hostname: bad });
            expect(r.failures?.map((f) => f.property)).toEqual(["hostname"]);
        }
        expect((await p.domainProvider.check!({}, { ...dom, hostname: "dev-worker-12" })).failures).toEqual([]);
        expect((await p.domainProvider.check!({}, { ...dom, hostname: UNKNOWN })).failures).toEqual([]);
    });

    test("volume: a new base image changes nothing, a bigger disk is an update, a new name or pool replaces", async () => {
        expect(await vdiff({})).toMatchObject({ changes: false });
        expect(await vdiff({ basePath: "/pool/dev-base-bbbbbbbbbbbb.qcow2" })).toMatchObject({ changes: false, replaces: [] });
        expect(await vdiff({ basePath: UNKNOWN })).toMatchObject({ changes: false, replaces: [] });
        expect(await vdiff({ stateDir: "/elsewhere" })).toMatchObject({ changes: false });
        expect(await vdiff({ capacityBytes: 2 * vol.capacityBytes })).toMatchObject({ changes: true, replaces: [] });
        expect((await vdiff({ name: "other.qcow2" })).replaces).toEqual(["name"]);
        expect((await vdiff({ pool: "p2" })).replaces).toEqual(["pool"]);
    });
    test("volume: an update keeps the disk's identity (diskId, which the deployment compares); state from before it stays without one", async () => {
        const kept = await p.volumeProvider.update!("x", { ...vol, path: "/p/x", backingPath: vol.basePath, diskId: "disk-1" }, { ...vol, basePath: "/pool/dev-base-bbbbbbbbbbbb.qcow2" });
        expect(kept.outs).toMatchObject({ diskId: "disk-1", path: "/p/x", backingPath: vol.basePath });
        const older = await p.volumeProvider.update!("x", { ...vol, path: "/p/x", backingPath: vol.basePath }, vol);
        expect(older.outs).not.toHaveProperty("diskId");
    });
    test("volume: check refuses a smaller disk in preview, naming both sizes and the fix", async () => {
        const r = await p.volumeProvider.check!({ ...vol, capacityBytes: 2 * 1024 ** 3 }, { ...vol, capacityBytes: 1024 ** 3 });
        expect(r.failures).toEqual([
            {
                property: "capacityBytes",
                reason: `the disk of ${vol.name} cannot shrink from 2 GiB to 1 GiB: disks only grow in place (shrinking would cut off the guest's filesystem); set diskGiB back to 2 or more. Nothing was changed`,
            },
        ]);
        expect((await p.volumeProvider.check!({ ...vol, capacityBytes: 1024 ** 3 }, { ...vol, capacityBytes: 2 * 1024 ** 3 })).failures).toEqual([]);
        expect((await p.volumeProvider.check!({}, vol)).failures).toEqual([]);
    });

    test("pool: a new path replaces; stopped or not autostarted is an update that repairs it", async () => {
        const base = { uri: "qemu:///system", name: "dev-pool", path: "/a" };
        const outs = { ...base, active: true, autostart: true };
        expect(await p.poolProvider.diff!("dev-pool", outs, base)).toMatchObject({ changes: false });
        expect((await p.poolProvider.diff!("dev-pool", outs, { ...base, path: "/b" })).replaces).toEqual(["path"]);
        expect(await p.poolProvider.diff!("dev-pool", { ...outs, active: false }, base)).toMatchObject({ changes: true, replaces: [] });
        expect(await p.poolProvider.diff!("dev-pool", { ...outs, autostart: false }, base)).toMatchObject({ changes: true, replaces: [] });
    });

    test("check rejects what libvirt would reject later", async () => {
        const r = await p.domainProvider.check!({}, { ...dom, domainType: "xen" });
        expect(r.failures?.[0].property).toBe("domainType");
    });
});

// ---------------------------------------------------------------------------
// The Domain's update and the deployment's restart against a stand-in virsh:
// one domain whose live definition (what runs) and saved definition (what
// `define` wrote, `dumpxml --inactive`) are files; shutdown/destroy stop it,
// start boots the saved definition. Every call is recorded.

const FAKE_VIRSH = `#!/bin/bash
d="$(dirname "$0")"
args=()
while [ $# -gt 0 ]; do case "$1" in --quiet) shift;; -c) shift 2;; *) args+=("$1"); shift;; esac; done
printf '%s\\n' "\${args[*]}" >>"$d/calls"
set -- "\${args[@]}"
case "$1" in
  define) cp "$2" "$d/saved.xml"; cp "$2" "$d/define-$(date +%s%N).xml"; echo "Domain defined from $2" ;;
  domstate) cat "$d/state" ;;
  dumpxml) if [ "$2" = "--inactive" ] || [ "$(cat "$d/state")" != "running" ]; then cat "$d/saved.xml"; else cat "$d/live.xml"; fi ;;
  autostart) ;;
  shutdown|destroy) echo "shut off" >"$d/state" ;;
  start) cp "$d/saved.xml" "$d/live.xml"; echo running >"$d/state" ;;
  list) echo dev-master ;;
  net-info) printf 'Name: dev-net\\nActive: yes\\nBridge: nxs-dev\\n' ;;
  *) echo "stand-in virsh: unexpected: $*" >&2; exit 1 ;;
esac
`;

describe("a restart-applied change against a stand-in virsh", () => {
    let dir: string;
    let oldPath: string | undefined;
    let P: { dom: typeof domainProvider };
    const calls = () => fs.readFileSync(path.join(dir, "calls"), "utf8").trim().split("\n").filter(Boolean);
    const defines = () => fs.readdirSync(dir).filter((f) => f.startsWith("define-")).sort().map((f) => fs.readFileSync(path.join(dir, f), "utf8"));
    /** A domain running `live` (as libvirt would have defined it: with its UUID). */
    const boot = (live: object) => {
        for (const f of fs.readdirSync(dir)) if (f !== "virsh") fs.rmSync(path.join(dir, f), { recursive: true });
        const xml = domainXml({ ...(live as typeof kdom), uuid: "0f6d3c1e-5a4b-4c2d-9e8f-7a6b5c4d3e2f" });
        fs.writeFileSync(path.join(dir, "live.xml"), xml);
        fs.writeFileSync(path.join(dir, "saved.xml"), xml);
        fs.writeFileSync(path.join(dir, "state"), "running\n");
        fs.writeFileSync(path.join(dir, "calls"), "");
    };
    const validate = (xml: string) => {
        const f = path.join(dir, "validate.xml");
        fs.writeFileSync(f, xml);
        const r = spawnSync("virt-xml-validate", [f, "domain"], { encoding: "utf8", timeout: 30_000 });
        fs.rmSync(f);
        return `${r.status} ${r.stdout}${r.stderr}`.trim();
    };
    const quiet = async <T>(fn: () => Promise<T>): Promise<{ value: T; said: string[] }> => {
        const said: string[] = [];
        const spy = jest.spyOn(console, "error").mockImplementation((m: unknown) => void said.push(String(m)));
        try {
            return { value: await fn(), said };
        } finally {
            spy.mockRestore();
        }
    };
    const olds = { ...domOut, ...kdom, uuid: "0f6d3c1e-5a4b-4c2d-9e8f-7a6b5c4d3e2f", hostname: "dev-master" };
    const base = { ...kdom, hostname: "dev-master" };

    beforeAll(() => {
        ensureHostTools(["virt-xml-validate", "xmllint"]);
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-fake-virsh-"));
        fs.writeFileSync(path.join(dir, "virsh"), FAKE_VIRSH, { mode: 0o755 });
        oldPath = process.env.PATH;
        process.env.PATH = `${dir}:${oldPath}`;
        // As written: a provider loaded through serialize -> load runs outside jest's sandbox and would not see this PATH.
        P = { dom: domainProvider };
    });
    afterAll(() => {
        process.env.PATH = oldPath;
        fs.rmSync(dir, { recursive: true, force: true });
    });

    test.each([
        ["consoleLog", "/l2/dev-master-console.log"],
        ["cmdline", "console=ttyS0 quiet"],
        ["kernel", "/boot/vmlinuz-2"],
        ["initrd", "/boot/initrd-2.img"],
        ["network", "dev-net2"],
        ["domainType", "kvm"],
        ["hostname", "dev-master-b"],
        ["memoryMiB", 1536],
    ])("with deployments, a new %s is saved (same UUID, valid XML) and the restart left to the deployment; its restart applies it once", async (k, v) => {
        boot(base);
        const news = { ...base, [k]: v, restartBy: "deployment" as const };
        const { value: r, said } = await quiet(() => P.dom.update!("dev-master", olds, news));
        expect(r.outs).toMatchObject({ [k]: v, uuid: olds.uuid, state: "running", pendingRestart: false });
        const [xml] = defines();
        expect(validate(xml)).toMatch(/^0 .*validates$/);
        expect(readDomain(xml)).toMatchObject({ uuid: olds.uuid, name: "dev-master", [k]: v });
        // Nothing stopped or started the VM: only lookups and the define.
        expect(calls().filter((c) => /^(shutdown|destroy|start)\b/.test(c))).toEqual([]);
        expect(said.join("\n")).toMatch(/saved in the definition; its NixOS deployment restarts the VM in rollout order/);

        // The deployment's turn (vmPower.restartForDefinition with the vm SparkCluster passes).
        const { definition } = { definition: { domainType: news.domainType, kernel: news.kernel, initrd: news.initrd, cmdline: news.cmdline, consoleLog: news.consoleLog, network: news.network, hostname: news.hostname } };
        const vm = { uri: "qemu:///system", domain: "dev-master", vcpus: news.vcpus, memoryMiB: news.memoryMiB, shutdownTimeoutSeconds: 5, definition };
        const log: string[] = [];
        expect(await restartForDefinition(vm, (m) => log.push(m))).toBe(true);
        expect(log).toHaveLength(2);
        expect(log[0]).toMatch(/^libvirt domain "dev-master": restarting for .+ -> .+ \(shutdown, up to 5 s, then start\)$/);
        expect(log[1]).toMatch(/^libvirt domain "dev-master": running again with /);
        expect(calls().filter((c) => /^(shutdown|start)\b/.test(c))).toEqual(["shutdown dev-master", "start dev-master"]);
        expect(await restartForDefinition(vm, (m) => log.push(m))).toBe(false); // already runs it
        expect(log).toHaveLength(2);
    });

    test("without deployments the Domain restarts the VM itself, under the stack's lock, and nothing is left pending", async () => {
        boot(base);
        const stateDir = path.join(dir, "state-dir");
        const news = { ...base, consoleLog: "/l2/dev-master-console.log", cmdline: "console=ttyS0 quiet", stateDir };
        const { value: r, said } = await quiet(() => P.dom.update!("dev-master", olds, news));
        expect(r.outs).toMatchObject({ consoleLog: news.consoleLog, cmdline: news.cmdline, pendingRestart: false, state: "running" });
        expect(calls().filter((c) => /^(define|shutdown|start)\b/.test(c)).map((c) => c.split(" ")[0])).toEqual(["define", "shutdown", "start"]);
        expect(readDomain(fs.readFileSync(path.join(dir, "live.xml"), "utf8"))).toMatchObject({ consoleLog: news.consoleLog, cmdline: news.cmdline });
        expect(said).toContain('libvirt domain "dev-master": restarting for kernel command line "console=ttyS0" -> "console=ttyS0 quiet", console log /l/dev-master.log -> /l2/dev-master-console.log (shutdown, up to 60 s, then start)');
        expect(fs.existsSync(path.join(stateDir, "vm-restart.lock"))).toBe(false);
    });

    test("pendingRestart: read learns from libvirt whether the VM runs its saved definition (so it never stays true after a restart)", async () => {
        boot(base);
        // Saved for the next boot, not picked up yet (the deployment has not had its turn).
        fs.writeFileSync(path.join(dir, "saved.xml"), domainXml({ ...base, consoleLog: "/l2/x.log", uuid: olds.uuid }));
        const seen = await quiet(() => P.dom.read!("dev-master", { ...olds, restartBy: "deployment", consoleLog: "/l2/x.log" }));
        expect(seen.value.props).toMatchObject({ pendingRestart: true, consoleLog: "/l2/x.log" });
        expect(seen.said.join("\n")).toContain("runs an older definition than it has saved (console log /l/dev-master.log -> /l2/x.log); the next `pulumi up` restarts it, through its NixOS deployment, in rollout order");
        // The deployment restarted it: the next refresh says nothing is pending.
        await restartForDefinition({ uri: "qemu:///system", domain: "dev-master", vcpus: 1, memoryMiB: 1024, shutdownTimeoutSeconds: 5, definition: { ...base, consoleLog: "/l2/x.log" } }, () => undefined);
        const after = await quiet(() => P.dom.read!("dev-master", seen.value.props as typeof olds));
        expect(after.value.props).toMatchObject({ pendingRestart: false });
        expect(after.said).toEqual([]);
        // An update never leaves it set either: with deployments it hands the restart over.
        fs.writeFileSync(path.join(dir, "saved.xml"), domainXml({ ...base, consoleLog: "/l3/x.log", uuid: olds.uuid }));
        const up = await quiet(() => P.dom.update!("dev-master", { ...olds, consoleLog: "/l3/x.log", pendingRestart: true }, { ...base, consoleLog: "/l3/x.log", restartBy: "deployment" }));
        expect(up.value.outs).toMatchObject({ pendingRestart: false });
        expect(up.said.join("\n")).toMatch(/console log \/l2\/x\.log -> \/l3\/x\.log saved in the definition; its NixOS deployment restarts the VM in rollout order/);
    });

    // The kernel's word on where a tap is: a device this process sees that is
    // on no bridge (here `lo`, as a tap left behind by a re-created network).
    test("detachedInterfaces: read finds a tap off its network's bridge; update tries to plug it back without a restart and says the fix when it cannot", async () => {
        boot(base);
        const onTap = (dev: string) =>
            domainXml({ ...base, uuid: olds.uuid }).replace(/<source network='dev-net'\/>/, `<source network='dev-net' bridge='nxs-dev'/>\n      <target dev='${dev}'/>`);
        fs.writeFileSync(path.join(dir, "live.xml"), onTap("lo"));
        const seen = await quiet(() => P.dom.read!("dev-master", olds));
        const line = "interface lo (02:00:00:00:00:01) is on no bridge, not on nxs-dev of network dev-net";
        expect(seen.value.props).toMatchObject({ detachedInterfaces: [line], pendingRestart: false });
        expect(seen.said.join("\n")).toContain(`${line}: the guest cannot be reached; the next \`pulumi up\` plugs it back (no restart)`);
        // Here the bridge does not exist: the update fails naming the tap, the bridge and the command that fixes it; no restart was tried.
        const up = quiet(() => P.dom.update!("dev-master", seen.value.props as typeof olds, { ...base, restartBy: "deployment" }));
        await expect(up).rejects.toThrow(/could not plug interface lo back into bridge nxs-dev: .*; as root run `ip link set dev lo master nxs-dev` \(or restart the VM\), then `pulumi refresh`/);
        expect(calls().filter((c) => /^(define|shutdown|destroy|start)\b/.test(c))).toEqual([]);
        // A tap this process cannot see (libvirtd in another network namespace) says nothing.
        fs.writeFileSync(path.join(dir, "live.xml"), onTap("nxs-notthere0"));
        expect((await quiet(() => P.dom.read!("dev-master", olds))).value.props).toMatchObject({ detachedInterfaces: [] });
        const ok = await quiet(() => P.dom.update!("dev-master", { ...olds, detachedInterfaces: [line] }, { ...base, restartBy: "deployment" }));
        expect(ok.value.outs).toMatchObject({ detachedInterfaces: [], state: "running" });
    });
});

describe("the deployment's vm input: a new definition restarts the VM in its rollout turn", () => {
    const dep = {
        node: "worker-1", flake: "path:/nix/store/x-source", configuration: "dev-worker", host: "10.77.0.11", sshUser: "deploy", sshPort: 22,
        identityFile: "/k", knownHostsFile: "/kh", expectedSystem: "/nix/store/a-nixos-system", useSudo: true, rebuildCommand: "nixos-rebuild",
        flavour: "auto", sshWaitSeconds: 300, switchTimeoutSeconds: 3600,
    };
    const definition = { domainType: "qemu", kernel: "/boot/vmlinuz", initrd: "/boot/initrd.img", cmdline: "console=ttyS0", consoleLog: "/l/dev-worker-1-console.log", network: "dev-net", hostname: "dev-worker-1", resilience: guestResilience() };
    const vm = { uri: "qemu:///system", domain: "dev-worker-1", diskPath: "/pool/dev-worker-1.qcow2", mac: "02:00:00:00:00:02", vcpus: 1, memoryMiB: 1024, shutdownTimeoutSeconds: 60, definition };
    const outs = { ...dep, machineId: "uuid-1", vm, currentSystem: dep.expectedSystem, flavourUsed: "legacy" };

    test("preview: a Domain that is only updated (its UUID unknown, like any updated dynamic resource's output) is no new VM: update, not replace", () => {
        const d = deploymentDiff(outs, { ...dep, machineId: UNKNOWN, vm: { ...vm, definition: { ...definition, consoleLog: "/l2/x.log" } } });
        expect(d).toMatchObject({ changes: true, replaces: [], deleteBeforeReplace: false });
        // A new disk or MAC is a new VM (what replaces its Domain): replaced, delete first.
        for (const change of [{ diskPath: "/pool/other.qcow2" }, { mac: "02:00:00:00:00:09" }, { domain: "dev-worker-9" }, { uri: "qemu+ssh://h/system" }, { diskPath: UNKNOWN }]) {
            expect(deploymentDiff(outs, { ...dep, machineId: UNKNOWN, vm: { ...vm, ...change } })).toMatchObject({ changes: true, replaces: ["machineId"], deleteBeforeReplace: true });
        }
        // State recorded before the vm carried its identity: as before, unknown means a new VM.
        const { diskPath: _p, mac: _m, ...older } = vm;
        expect(deploymentDiff({ ...outs, vm: older }, { ...dep, machineId: UNKNOWN, vm })).toMatchObject({ replaces: ["machineId"] });
        // At apply the UUID is known: the same one is the same VM, another one a new VM.
        expect(deploymentDiff(outs, { ...dep, machineId: "uuid-1", vm }).changes).toBe(false);
        expect(deploymentDiff(outs, { ...dep, machineId: "uuid-2", vm })).toMatchObject({ replaces: ["machineId"] });
        expect(sameVmIdentity(vm, { ...vm, vcpus: 4, definition: {} })).toBe(true);
        expect(sameVmIdentity(vm, UNKNOWN)).toBe(false);
    });

    test.each(Object.keys(definition))("a new %s is an update (restart, then switch), never a replace", (k) => {
        const d = deploymentDiff(outs, { ...dep, machineId: "uuid-1", vm: { ...vm, definition: { ...definition, [k]: `${(definition as Record<string, string>)[k]}-2` } } });
        expect(d).toMatchObject({ changes: true, replaces: [] });
        expect(d.reasons).toEqual([expect.stringMatching(/^the VM's definition changed \(.+ -> .+\): it restarts before the switch$/)]);
    });
    test("the same definition, or state recorded before `definition` existed, is no change; unknown is", () => {
        const same = { ...dep, machineId: "uuid-1" };
        expect(deploymentDiff(outs, { ...same, vm }).changes).toBe(false);
        const { definition: _d, ...older } = vm;
        expect(deploymentDiff({ ...outs, vm: older }, { ...same, vm }).changes).toBe(false);
        expect(deploymentDiff(outs, { ...same, vm: { ...vm, definition: UNKNOWN } }).reasons).toEqual(["the VM's definition is not known until apply"]);
        expect(deploymentDiff(outs, { ...same, vm: { ...vm, definition: { ...definition, network: UNKNOWN } } }).reasons).toEqual(["the VM's definition changed (network dev-net -> (known after apply)): it restarts before the switch"]);
    });
    test("a refresh that found the VM on an older definition (vmPending) makes the next up restart it", () => {
        expect(deploymentDiff({ ...outs, vmPending: ["console log /a -> /b"] }, { ...dep, machineId: "uuid-1", vm }).reasons).toEqual([
            "refresh found the VM not running its definition (console log /a -> /b): it restarts before the switch",
        ]);
        expect(deploymentDiff({ ...outs, vmPending: [] }, { ...dep, machineId: "uuid-1", vm }).changes).toBe(false);
    });
    test("the shared data directory added to a running stack: an update of the deployment (the restart, then the switch), never a replace", () => {
        const d = deploymentDiff(outs, { ...dep, machineId: UNKNOWN, vm: { ...vm, definition: { ...definition, dataDir: "/srv/data", dataTag: "nixspark-data" } } });
        expect(d).toMatchObject({ changes: true, replaces: [] });
        expect(d.reasons).toEqual(["the VM's definition changed (shared directory (none) -> /srv/data, shared directory tag (none) -> nixspark-data): it restarts before the switch"]);
    });
    test("definitionChanges: absent, null and empty are none; libvirt's trimmed text is the same", () => {
        expect(definitionChanges({ kernel: undefined, cmdline: "" }, { kernel: null, cmdline: undefined })).toEqual([]);
        expect(definitionChanges({ cmdline: "quiet" }, { cmdline: " quiet " })).toEqual([]);
        // virtiofsd's path: libvirt fills in the one it found when none was asked for (a running VM's live XML).
        expect(definitionChanges({ virtiofsd: "/usr/lib/qemu/virtiofsd" }, { virtiofsd: undefined })).toEqual([]);
        expect(definitionChanges({ virtiofsd: "/usr/lib/qemu/virtiofsd" }, { virtiofsd: "/opt/virtiofsd" })).toHaveLength(1);
        expect(definitionChanges({ memoryMiB: 256 }, { memoryMiB: 384 })).toEqual([{ key: "memoryMiB", text: "memory 256 -> 384 MiB", was: "memory 256 MiB", now: "memory 384 MiB" }]);
    });
});

describe("planHostChanges", () => {
    test("by MAC: add, remove and modify", () => {
        const w2 = { mac: "02:00:00:00:00:03", ip: "10.77.0.12", name: "dev-worker-2" };
        const plan = planHostChanges(hosts, [{ ...hosts[0], ip: "10.77.0.20" }, w2]);
        expect(plan.add).toEqual([w2]);
        expect(plan.remove).toEqual([hosts[1]]);
        expect(plan.modify).toEqual([{ from: hosts[0], to: { ...hosts[0], ip: "10.77.0.20" } }]);
        expect(planHostChanges(hosts, [...hosts].reverse())).toEqual({ add: [], remove: [], modify: [] });
    });
});

// Issue 16: a disk from before base volumes backs onto the image in
// /nix/store. Its Volume's diff is an update (check says why and that the VM
// restarts); a disk on any base volume of the pool is left alone. The header
// rewrite is checked against the real qemu-img.
describe("Volume: a disk from before base volumes (backing outside the pool)", () => {
    // The previous release's Volume (before 96af5f3): backingPath was an input, the image's store path.
    const store = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixspark-image/nixos.qcow2";
    const legacyIns = { uri: "qemu:///system", pool: "dev-pool", name: "dev-master.qcow2", backingPath: store, capacityBytes: 1024 ** 3 };
    const legacyOuts = { ...legacyIns, path: "/var/lib/nixspark/dev/dev-master.qcow2" };
    const news = {
        uri: "qemu:///system", pool: "dev-pool", name: "dev-master.qcow2", basePath: "/var/lib/nixspark/dev/dev-base-aaaaaaaaaaaa.qcow2",
        capacityBytes: 1024 ** 3, domain: "dev-master", stateDir: "/tmp/x", path: "/var/lib/nixspark/dev/dev-master.qcow2",
    };
    test("diff: an update (not a replace, the file's path stays known), also with the base volume's path unknown (preview of the first up)", async () => {
        const P = await roundTrip(volumeProvider);
        const d = await P.diff!("dev-pool/dev-master.qcow2", legacyOuts as any, news);
        expect(d).toMatchObject({ changes: true, replaces: [], stables: expect.arrayContaining(["path"]) });
        expect(d.stables).not.toContain("backingPath"); // it moves
        expect(await P.diff!("dev-pool/dev-master.qcow2", legacyOuts as any, { ...news, basePath: UNKNOWN })).toMatchObject({ changes: true, replaces: [] });
        // On a base volume of the pool (the current one or a retired one): nothing to move.
        for (const b of [news.basePath, "/var/lib/nixspark/dev/dev-base-bbbbbbbbbbbb.qcow2"]) {
            expect(await P.diff!("id", { ...legacyOuts, backingPath: b } as any, news)).toMatchObject({ changes: false });
        }
        // A base outside the pool on purpose (what the integration bench does): nothing to move either.
        expect(await P.diff!("id", legacyOuts as any, { ...news, basePath: store })).toMatchObject({ changes: false });
    });
    test("check says what the update does in preview (moveRequired), and nothing for a disk on a base volume", async () => {
        const P = await roundTrip(volumeProvider);
        const r = await P.check!(legacyIns, news);
        expect(r.inputs.moveRequired).toBe(
            `backs onto ${store}, outside the pool (a disk from before base volumes): moved onto the pool's base volume ${news.basePath} after checking both have the same content; ` +
                "its VM dev-master restarts for it (shutdown, then start; one VM of the stack at a time)",
        );
        expect((await P.check!(legacyIns, { ...news, basePath: UNKNOWN })).inputs.moveRequired).toMatch(/moved onto the pool's base volume after checking/);
        expect((await P.check!({ ...news }, news)).inputs.moveRequired).toBe("");
        expect((await P.check!(undefined, news)).inputs.moveRequired).toBe("");
    });
    test("qcow2WithBacking writes what qemu-img rebase -u writes: qemu-img reads the new backing file, format kept, the data untouched", async () => {
        ensureHostTools(["qemu-img"]);
        const { qcow2WithBacking } = await import("../../providers/volume");
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-qcow2-"));
        try {
            const q = (...a: string[]) => {
                const r = spawnSync("qemu-img", a, { encoding: "utf8", timeout: 60_000 });
                if (r.status !== 0) throw new Error(`qemu-img ${a.join(" ")}: ${r.stderr}`);
                return r.stdout;
            };
            const [oldBase, newBase, ov] = ["old-base.qcow2", `a-much-longer-name-of-the-new-base-volume-${"x".repeat(100)}.qcow2`, "ov.qcow2"].map((n) => path.join(dir, n));
            q("create", "-q", "-f", "qcow2", oldBase, "4M");
            fs.copyFileSync(oldBase, newBase);
            q("create", "-q", "-f", "qcow2", "-b", oldBase, "-F", "qcow2", ov, "8M");
            const before = fs.readFileSync(ov);
            const bits = before.readUInt32BE(20);
            const head = qcow2WithBacking(before.subarray(0, 2 ** bits), newBase);
            expect(head.length).toBe(2 ** bits);
            const fd = fs.openSync(ov, "r+");
            fs.writeSync(fd, head, 0, head.length, 0);
            fs.closeSync(fd);
            const info = JSON.parse(q("info", "--output=json", ov));
            expect(info).toMatchObject({ "backing-filename": newBase, "backing-filename-format": "qcow2", "virtual-size": 8 * 1024 ** 2 });
            q("check", ov);
            // Only the name changed: the rest of the file is as it was.
            const after = fs.readFileSync(ov);
            expect(after.subarray(2 ** bits).equals(before.subarray(2 ** bits))).toBe(true);
            // Back to a shorter name: no stale bytes of the longer one are read.
            fs.writeFileSync(ov, Buffer.concat([qcow2WithBacking(after.subarray(0, 2 ** bits), oldBase), after.subarray(2 ** bits)]));
            expect(JSON.parse(q("info", "--output=json", ov))["backing-filename"]).toBe(oldBase);
            expect(() => qcow2WithBacking(Buffer.alloc(512), newBase)).toThrow(/not a qcow2 image/);
            expect(() => qcow2WithBacking(after.subarray(0, 2 ** bits), "/" + "y".repeat(2 ** bits))).toThrow(/does not fit in the image's first cluster/);
        } finally {
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });
});

// A stand-in virsh for the network's update: net-dumpxml prints net.xml,
// net-update is recorded, and a DNS delete fails when dns-fail holds a message.
const FAKE_NET_VIRSH = `#!/bin/bash
d="$(dirname "$0")"
args=()
while [ $# -gt 0 ]; do case "$1" in --quiet) shift;; -c) shift 2;; *) args+=("$1"); shift;; esac; done
printf '%s\\n' "\${args[*]}" >>"$d/calls"
set -- "\${args[@]}"
case "$1" in
  net-info) printf 'Name: dev-net\\nActive: yes\\nAutostart: yes\\nBridge: nxs-dev\\n' ;;
  net-dumpxml) cat "$d/net.xml" ;;
  net-autostart) ;;
  net-update) if [ "$3 $4" = "delete dns-host" ] && [ -s "$d/dns-fail" ]; then cat "$d/dns-fail" >&2; exit 1; fi ;;
  *) echo "stand-in virsh: unexpected: $*" >&2; exit 1 ;;
esac
`;

describe("network update: DNS entries are deleted as the live network has them, and a failure is an error", () => {
    let dir: string;
    let oldPath: string | undefined;
    const calls = () => fs.readFileSync(path.join(dir, "calls"), "utf8").trim().split("\n").filter(Boolean);
    const dnsCalls = () => calls().filter((c) => c.includes(" dns-host "));
    const w2 = { mac: "02:00:00:00:00:03", ip: "10.77.0.12", name: "dev-worker-2" };
    /** The live network: every reservation, and DNS entries for `dns` only. */
    const live = (reservations: typeof hosts, dns: typeof hosts) => {
        const xml = networkXml({ ...net, hosts: reservations }).replace(/<dns>[\s\S]*<\/dns>/, `<dns>\n${dns.map((h) => `    ${dnsHostXml(h)}`).join("\n")}\n  </dns>`);
        fs.writeFileSync(path.join(dir, "net.xml"), xml);
        fs.writeFileSync(path.join(dir, "calls"), "");
        fs.writeFileSync(path.join(dir, "dns-fail"), "");
    };
    beforeAll(() => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-fake-virsh-"));
        fs.writeFileSync(path.join(dir, "virsh"), FAKE_NET_VIRSH, { mode: 0o755 });
        oldPath = process.env.PATH;
        process.env.PATH = `${dir}:${oldPath}`;
    });
    afterAll(() => {
        process.env.PATH = oldPath;
        fs.rmSync(dir, { recursive: true, force: true });
    });
    const outs = { ...netOut, hosts: [...hosts, w2] };

    test("a removed node whose DNS entry is already gone: only its reservation is deleted, no DNS delete is tried", async () => {
        live([...hosts, w2], hosts);
        await networkProvider.update!("dev-net", outs, net);
        expect(calls().filter((c) => c.startsWith("net-update"))).toEqual([`net-update dev-net delete ip-dhcp-host ${dhcpHostXml(w2)} --live --config`]);
    });

    test("a removed node's DNS entry is deleted as libvirt holds it (its names), a changed address's entry too", async () => {
        const byHand = { ...w2, name: "w2-alias" };
        live([...hosts, w2], [...hosts, byHand]);
        await networkProvider.update!("dev-net", outs, net);
        expect(dnsCalls()).toEqual([`net-update dev-net delete dns-host ${dnsHostXml(byHand)} --live --config`]);

        const moved = { ...hosts[1], ip: "10.77.0.21" };
        live(hosts, hosts);
        await networkProvider.update!("dev-net", netOut, { ...net, hosts: [hosts[0], moved] });
        expect(dnsCalls()).toEqual([
            `net-update dev-net delete dns-host ${dnsHostXml(hosts[1])} --live --config`,
            `net-update dev-net add-last dns-host ${dnsHostXml(moved)} --live --config`,
        ]);
    });

    test("libvirt failing to delete a DNS entry that is there fails the update, naming the network, the node and libvirt's message", async () => {
        live([...hosts, w2], [...hosts, w2]);
        fs.writeFileSync(path.join(dir, "dns-fail"), "error: internal error: dnsmasq refused to reload\n");
        await expect(networkProvider.update!("dev-net", outs, net)).rejects.toThrow(
            /libvirt network "dev-net": removing the DNS entry of dev-worker-2 \(10\.77\.0\.12\) failed: .*internal error: dnsmasq refused to reload/,
        );
    });
});
