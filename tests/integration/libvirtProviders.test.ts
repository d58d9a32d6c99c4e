// The libvirt providers against a real libvirtd (in the bench's private
// network namespace), called exactly as the engine calls them: each provider
// goes through serialize -> load first. Tiny guests boot by direct kernel
// boot; each must take the address its reservation names.
//
// Story: create a network and 3 domains -> scale to 4 -> scale back to 2
// (the network is updated in place: same UUID) -> a memory change is an
// update saved for the next boot -> refresh notices a shut-off domain and a
// destroyed one -> adopt/mismatch and a failed create leave nothing behind.
import { randomInt } from "node:crypto";
import * as path from "node:path";
import { parseConfig } from "../../cluster/config";
import { buildTopology, NodeSpec, Topology } from "../../cluster/topology";
import { domainProvider, DomainOutputs } from "../../providers/domain";
import { readNetwork } from "../../providers/libvirtXml";
import { networkProvider, NetworkOutputs } from "../../providers/network";
import { poolProvider } from "../../providers/pool";
import { volumeProvider, VolumeOutputs } from "../../providers/volume";
import { Bench, startBench, tailFile, waitFor } from "../helpers/libvirtBench";
import { roundTrip } from "../helpers/serialize";

jest.setTimeout(10 * 60_000);

let bench: Bench | undefined;
let P: { net: typeof networkProvider; dom: typeof domainProvider; vol: typeof volumeProvider; pool: typeof poolProvider };
const stack = `it${randomInt(1000, 9999)}`;
const subnetOctet = randomInt(0, 256);
let topo: (workers: number) => Topology;
let uri: string;
const created = { domains: new Map<string, DomainOutputs>(), volumes: new Map<string, VolumeOutputs>() };
let netOuts: NetworkOutputs | undefined;
let poolOuts: { uri: string; name: string; path: string } | undefined;

beforeAll(async () => {
    bench = await startBench();
    uri = bench.uri;
    P = {
        net: await roundTrip(networkProvider),
        dom: await roundTrip(domainProvider),
        vol: await roundTrip(volumeProvider),
        pool: await roundTrip(poolProvider),
    };
    const cfgFor = (workers: number) =>
        parseConfig({
            libvirtUri: uri,
            domainType: "qemu",
            autostart: false,
            network: { cidr: `10.214.${subnetOctet}.0/24` },
            storage: { path: path.join(bench!.dir, "images") },
            image: { path: bench!.guest.baseImage, kernel: bench!.guest.kernel, initrd: bench!.guest.initrd, cmdline: "console=ttyS0" },
            master: { vcpus: 1, memoryMiB: 256, diskGiB: 1 },
            workers: { count: workers, vcpus: 1, memoryMiB: 256, diskGiB: 1 },
        });
    topo = (workers) => buildTopology(stack, cfgFor(workers));
}, 20 * 60_000);


afterAll(async () => {
    // Remove through the providers first (that is under test too), then the bench removes the rest.
    try {
        for (const [name, d] of created.domains) await P.dom.delete!(name, d);
        for (const [id, v] of created.volumes) await P.vol.delete!(id, v);
        if (netOuts) await P.net.delete!(netOuts.name, netOuts);
        if (poolOuts) await P.pool.delete!(poolOuts.name, poolOuts);
    } finally {
        await bench?.stop();
    }
}, 5 * 60_000);

function netInputs(t: Topology) {
    return {
        uri, name: t.networkName, bridge: t.bridge, gateway: t.gateway, netmask: t.netmask,
        dhcpStart: t.dhcpRange.start, dhcpEnd: t.dhcpRange.end, autostart: false,
        hosts: t.nodes.map((n) => ({ mac: n.mac, ip: n.ip, name: n.hostname })),
    };
}

function domInputs(n: NodeSpec, diskPath: string, t: Topology) {
    return {
        uri, name: n.domainName, domainType: "qemu" as const, vcpus: n.vcpus, memoryMiB: n.memoryMiB, diskPath, diskGiB: n.diskGiB,
        mac: n.mac, network: t.networkName, consoleLog: path.join(bench!.dir, `${n.domainName}-console.log`), autostart: false,
        kernel: bench!.guest.kernel, initrd: bench!.guest.initrd, cmdline: "console=ttyS0", shutdownTimeoutSeconds: 20,
    };
}

async function addNode(n: NodeSpec, t: Topology) {
    const v = await P.vol.create!({ uri, pool: t.poolName, name: n.volumeName, backingPath: bench!.guest.baseImage, capacityBytes: n.diskGiB * 1024 ** 3 });
    created.volumes.set(v.id, v.outs);
    const d = await P.dom.create!(domInputs(n, v.outs.path, t));
    created.domains.set(d.id, d.outs);
    expect(d.outs.state).toBe("running");
}

async function removeNode(n: NodeSpec) {
    const d = created.domains.get(n.domainName)!;
    await P.dom.delete!(n.domainName, d);
    created.domains.delete(n.domainName);
    const [id, v] = [...created.volumes].find(([, v]) => v.name === n.volumeName)!;
    await P.vol.delete!(id, v);
    created.volumes.delete(id);
}

/** The guest answers HTTP at its reserved address with the hostname DHCP gave it. */
async function expectReservedAddress(n: NodeSpec) {
    const log = path.join(bench!.dir, `${n.domainName}-console.log`);
    let body = "";
    await waitFor(
        `${n.domainName} answering at ${n.ip} as ${n.hostname}`,
        async () => {
            const r = await bench!.exec(["wget", "-qO-", "-T", "3", `http://${n.ip}/`], { allowFailure: true, timeoutMs: 10_000 });
            body = r.stdout;
            return r.code === 0 && body.includes(n.hostname) ? body : undefined;
        },
        { timeoutMs: 120_000, intervalMs: 1000, diagnose: () => `last answer: ${body}
${tailFile(log)}` },
    );
}

async function reservations(name: string) {
    const xml = (await bench!.virsh(["net-dumpxml", name])).stdout;
    const f = readNetwork(xml);
    return { uuid: f.uuid, hosts: f.hosts.map((h) => `${h.name}=${h.ip}`).sort(), dns: (xml.match(/<hostname>[^<]+<\/hostname>/g) ?? []).length };
}

describe("libvirt providers on a real libvirtd", () => {
    let uuid: string;

    test("create: pool, network and 3 domains; each guest gets its reserved address", async () => {
        const t = topo(2);
        const pool = await P.pool.create!({ uri, name: t.poolName, path: t.poolPath });
        poolOuts = pool.outs;
        const net = await P.net.create!(netInputs(t));
        netOuts = net.outs;
        uuid = net.outs.uuid;
        expect(uuid).toMatch(/^[0-9a-f-]{36}$/);
        for (const n of t.nodes) await addNode(n, t);
        for (const n of t.nodes) await expectReservedAddress(n);
        const r = await reservations(t.networkName);
        expect(r.hosts).toEqual(t.nodes.map((n) => `${n.hostname}=${n.ip}`).sort());
        expect(r.dns).toBe(3);
    });

    test("scale 2 -> 3 workers: the network is updated in place and the new guest gets its address", async () => {
        const t = topo(3);
        const d = await P.net.diff!(netOuts!.name, netOuts!, netInputs(t));
        expect(d).toMatchObject({ changes: true, replaces: [] });
        netOuts = (await P.net.update!(netOuts!.name, netOuts!, netInputs(t))).outs as NetworkOutputs;
        await addNode(t.workers[2], t);
        await expectReservedAddress(t.workers[2]);
        const r = await reservations(t.networkName);
        expect(r.uuid).toBe(uuid);
        expect(r.hosts).toEqual(t.nodes.map((n) => `${n.hostname}=${n.ip}`).sort());
        expect(r.dns).toBe(4);
    });

    test("scale 3 -> 1 worker: exactly the removed nodes go, the network stays (same UUID)", async () => {
        const big = topo(3);
        const t = topo(1);
        netOuts = (await P.net.update!(netOuts!.name, netOuts!, netInputs(t))).outs as NetworkOutputs;
        for (const n of big.workers.slice(1)) await removeNode(n);
        const r = await reservations(t.networkName);
        expect(r.uuid).toBe(uuid);
        expect(r.hosts).toEqual(t.nodes.map((n) => `${n.hostname}=${n.ip}`).sort());
        expect(r.dns).toBe(2);
        const left = (await bench!.virsh(["list", "--all", "--name"])).stdout.split("\n").filter(Boolean).sort();
        expect(left).toEqual(t.nodes.map((n) => n.domainName).sort());
        const vols = (await bench!.virsh(["vol-list", "--pool", t.poolName])).stdout;
        expect(vols).not.toContain(big.workers[1].volumeName);
        expect(vols).toContain(t.workers[0].volumeName);
    });

    test("memory change: an in-place update saved for the next boot, said in the output", async () => {
        const t = topo(1);
        const n = t.workers[0];
        const olds = created.domains.get(n.domainName)!;
        const news = { ...domInputs(n, olds.diskPath, t), memoryMiB: 320 };
        expect(await P.dom.diff!(n.domainName, olds, news)).toMatchObject({ changes: true, replaces: [] });
        const r = await P.dom.update!(n.domainName, olds, news);
        expect(r.outs).toMatchObject({ memoryMiB: 320, pendingRestart: true, state: "running", uuid: olds.uuid });
        created.domains.set(n.domainName, r.outs as DomainOutputs);
        const inactive = (await bench!.virsh(["dumpxml", "--inactive", n.domainName])).stdout;
        expect(inactive).toMatch(/<memory unit='KiB'>327680<\/memory>/);
    });

    test("refresh: a shut-off domain is reported and brought back; a destroyed one disappears", async () => {
        const t = topo(1);
        const m = t.master;
        await bench!.virsh(["destroy", m.domainName]);
        const seen = await P.dom.read!(m.domainName, created.domains.get(m.domainName)!);
        expect(seen.props.state).toBe("shut off");
        const news = domInputs(m, created.domains.get(m.domainName)!.diskPath, t);
        expect(await P.dom.diff!(m.domainName, seen.props, news)).toMatchObject({ changes: true, replaces: [] });
        const up = await P.dom.update!(m.domainName, seen.props, news);
        expect(up.outs.state).toBe("running");
        created.domains.set(m.domainName, up.outs as DomainOutputs);

        const w = t.workers[0];
        await bench!.virsh(["destroy", w.domainName]);
        await bench!.virsh(["undefine", "--nvram", w.domainName]);
        const gone = await P.dom.read!(w.domainName, created.domains.get(w.domainName)!);
        expect(gone.id).toBeFalsy();
        created.domains.delete(w.domainName);

        // A network removed by hand is noticed too.
        const netRead = await P.net.read!(netOuts!.name, netOuts!);
        expect(netRead.props.uuid).toBe(uuid);
    });

    test("adopt only what matches; a failed create leaves nothing behind", async () => {
        const t = topo(1);
        // Same name, different bridge: a clear error naming the network, nothing changed.
        await expect(P.net.create!({ ...netInputs(t), bridge: "nxs-other" })).rejects.toThrow(new RegExp(`network "${t.networkName}" already exists and differs in bridge`));
        // Same everything: adopted.
        const again = await P.net.create!(netInputs(t));
        expect(again.outs.uuid).toBe(uuid);
        // A domain whose kernel does not exist fails to start and is not left defined.
        const bad = { ...domInputs({ ...t.workers[0], name: "bad", domainName: `${stack}-bad` }, created.volumes.values().next().value!.path, t), kernel: "/nonexistent/vmlinuz" };
        await expect(P.dom.create!(bad)).rejects.toThrow(/virsh/);
        const all = (await bench!.virsh(["list", "--all", "--name"])).stdout;
        expect(all).not.toContain(`${stack}-bad`);
        // An existing domain with other settings is not adopted.
        const m = created.domains.get(t.master.domainName)!;
        await expect(P.dom.create!({ ...m, vcpus: 2 })).rejects.toThrow(/already exists and differs in vcpus/);
    });

    test("delete: everything the providers created is gone", async () => {
        for (const [name, d] of created.domains) await P.dom.delete!(name, d);
        created.domains.clear();
        for (const [id, v] of created.volumes) await P.vol.delete!(id, v);
        created.volumes.clear();
        await P.net.delete!(netOuts!.name, netOuts!);
        await P.pool.delete!(poolOuts!.name, poolOuts!);
        const t = topo(1);
        expect((await bench!.virsh(["list", "--all", "--name"])).stdout.trim()).toBe("");
        expect((await bench!.virsh(["net-list", "--all", "--name"])).stdout).not.toContain(t.networkName);
        expect((await bench!.virsh(["pool-list", "--all", "--name"])).stdout).not.toContain(t.poolName);
        netOuts = undefined;
        poolOuts = undefined;
    });
});
