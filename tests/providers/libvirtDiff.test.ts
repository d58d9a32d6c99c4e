// Which changes update, which replace, which are no-ops: answered by each
// provider's diff, also after the provider went through Pulumi's
// serialize -> load path (the only way the engine ever calls it).
import { domainProvider } from "../../providers/domain";
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
    uri: "qemu:///system", name: "dev-master", domainType: "qemu", vcpus: 1, memoryMiB: 1024, diskPath: "/p/dev-master.qcow2",
    mac: "02:00:00:00:00:01", network: "dev-net", consoleLog: "/l/dev-master.log", autostart: true, shutdownTimeoutSeconds: 60,
};
const domOut = { ...dom, uuid: "d-1", state: "running", pendingRestart: false, __provider: "old code" };
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

    test("domain: no-op, updates in place, replacements", async () => {
        expect(await ddiff({})).toMatchObject({ changes: false });
        expect(await ddiff({ memoryMiB: 2048 })).toMatchObject({ changes: true, replaces: [] });
        expect(await ddiff({ vcpus: 4 })).toMatchObject({ changes: true, replaces: [] });
        expect(await ddiff({ autostart: false })).toMatchObject({ changes: true, replaces: [] });
        for (const [k, v] of [["domainType", "kvm"], ["mac", "02:00:00:00:00:09"], ["diskPath", "/p/other"], ["network", "n2"], ["kernel", "/k"]] as const) {
            expect((await ddiff({ [k]: v })).replaces).toEqual([k]);
        }
        // Only the shutdown timeout: not something the VM sees.
        expect(await ddiff({ shutdownTimeoutSeconds: 5 })).toMatchObject({ changes: false });
        // The disk grows through its Volume: a size the domain once carried (old state) never replaces the VM.
        expect(await ddiff({}, { diskGiB: 10 })).toMatchObject({ changes: false, replaces: [] });
        // Nor do the state directory or check's preview note.
        expect(await ddiff({ stateDir: "/s", restartRequired: "x" })).toMatchObject({ changes: false });
    });
    test("domain: check says in preview that a memory or vCPU change restarts the VM, and nothing else does", async () => {
        const r = await p.domainProvider.check!(dom, { ...dom, memoryMiB: dom.memoryMiB + 256 });
        expect(r.inputs.restartRequired).toBe(`memory ${dom.memoryMiB} -> ${dom.memoryMiB + 256} MiB: the VM restarts (shutdown, then start), one VM of the stack at a time`);
        expect((await p.domainProvider.check!(dom, { ...dom, vcpus: 3 })).inputs.restartRequired).toMatch(/^vCPUs \d+ -> 3: the VM restarts/);
        expect((await p.domainProvider.check!(dom, { ...dom, autostart: false })).inputs.restartRequired).toBe("");
        expect((await p.domainProvider.check!({}, dom)).inputs.restartRequired).toBe(""); // a new VM: nothing restarts
    });
    test("domain: a VM that refresh saw shut off or paused is brought back by an update", async () => {
        expect(await ddiff({}, { state: "shut off" })).toMatchObject({ changes: true, replaces: [] });
        expect(await ddiff({}, { state: "paused" })).toMatchObject({ changes: true, replaces: [] });
    });
    test("domain: a new or changed host name is an in-place update; new provider code too", async () => {
        expect(await ddiff({ hostname: "dev-master" })).toMatchObject({ changes: true, replaces: [] });
        expect(await ddiff({ hostname: "other" }, { hostname: "dev-master" })).toMatchObject({ changes: true, replaces: [] });
        expect(await ddiff({ hostname: "dev-master" }, { hostname: "dev-master" })).toMatchObject({ changes: false });
        expect(await ddiff({ __provider: "new code" })).toMatchObject({ changes: true, replaces: [] });
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
