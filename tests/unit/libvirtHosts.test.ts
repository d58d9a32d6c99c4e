// One cluster over several libvirt hosts (nixspark:libvirt.hosts, network
// mode bridge): the config rules, the placement (no node ever moves), the
// guard that refuses a change that would, the domain XML's bridge and static
// address credential, where console logs are read, and the resource graph
// under Pulumi's mocks. The engine and two real libvirtds: tests/e2e/libvirtHosts.test.ts.
import * as pulumi from "@pulumi/pulumi";
import { checkConfig, parseConfig as parseRaw, rawFromPulumiConfig } from "../../cluster/config";

/** The stack's config as Pulumi hands it over (nixspark:KEY, objects as JSON). */
const parseConfig = (flat: Record<string, string>) => parseRaw(rawFromPulumiConfig(flat));
const problemsOf = (flat: Record<string, string>) => checkConfig(rawFromPulumiConfig(flat)).problems.join("\n");
import { buildTopology, placement } from "../../cluster/topology";
import { placementProblems } from "../../providers/placement";
import { domainXml, readDomain } from "../../providers/libvirtXml";
import { consoleLogPlace, remoteCatArgv } from "../../providers/consoleLog";
import { sameImage } from "../../providers/baseVolume";
import { definitionChanges } from "../../providers/vmPower";

interface Registered {
    type: string;
    name: string;
    inputs: Record<string, any>;
}
let registered: Registered[] = [];
pulumi.runtime.setMocks(
    {
        newResource(args: pulumi.runtime.MockResourceArgs) {
            registered.push({ type: args.type, name: args.name, inputs: args.inputs });
            const state: Record<string, any> = { ...args.inputs };
            if (args.type.endsWith(":Volume")) state.path = `/pool/${args.inputs.name}`;
            if (args.type.endsWith(":Domain")) state.uuid = `uuid-of-${args.name}`;
            if (args.type.endsWith(":ClusterSecret")) state.value = "mock";
            return { id: `${args.name}-id`, state };
        },
        call: () => ({}),
    },
    "nixspark",
    "lab",
    false,
);

const A = "qemu+ssh://root@hv-a/system";
const B = "qemu+ssh://root@hv-b/system";
const twoHosts = (a: number, b: number, extra: Record<string, unknown> = {}) => ({
    "nixspark:network": JSON.stringify({ mode: "bridge", bridge: "br0", cidr: "10.50.0.0/24" }),
    "nixspark:libvirt": JSON.stringify({
        hosts: [
            { name: "a", uri: A, workers: a },
            { name: "b", uri: B, workers: b },
        ],
    }),
    ...extra,
});

describe("nixspark:libvirt.hosts: the config's rules name the key and the fix", () => {
    test("a valid two-host stack parses; the master's host is the first", () => {
        const c = parseConfig(twoHosts(1, 2));
        expect(c.libvirt.hosts.map((h) => [h.name, h.workers])).toEqual([
            ["a", 1],
            ["b", 2],
        ]);
        expect(c.libvirt.addressesPerHost).toBe(32);
    });

    test.each([
        ["hosts in NAT mode", { "nixspark:network": JSON.stringify({ bridge: "br0" }) }, /nixspark:network\.mode: "nat", but nixspark:libvirt\.hosts lists 2 host\(s\).*pulumi config set --path network\.mode bridge/],
        ["bridge mode without a bridge", { "nixspark:network": JSON.stringify({ mode: "bridge" }) }, /nixspark:network\.bridge: required with nixspark:network\.mode bridge.*pulumi config set --path network\.bridge br0/],
        ["workers.count beside the hosts' counts", { "nixspark:workers": JSON.stringify({ count: 5 }) }, /nixspark:workers\.count: set, but with nixspark:libvirt\.hosts each host's workers count decides.*pulumi config rm --path workers\.count/],
        ["libvirtUri beside the hosts' uris", { "nixspark:libvirtUri": "qemu:///system" + "?x" }, /nixspark:libvirtUri: set, but with nixspark:libvirt\.hosts each host has its own uri/],
        ["a data directory of one host", { "nixspark:data": JSON.stringify({ path: "/srv/data" }) }, /nixspark:data\.path: a directory on one host/],
    ])("%s is refused", (_what, extra, message) => {
        expect(problemsOf({ ...twoHosts(1, 1), ...extra } as Record<string, string>)).toMatch(message);
    });

    test("a host listed twice, a name used twice, and more workers than a host's block are refused, by index", () => {
        const text = problemsOf({
            "nixspark:network": JSON.stringify({ mode: "bridge", bridge: "br0" }),
            "nixspark:libvirt": JSON.stringify({
                addressesPerHost: 4,
                hosts: [
                    { name: "a", uri: A, workers: 4 },
                    { name: "a", uri: A, workers: 1 },
                ],
            }),
        });
        expect(text).toMatch(/nixspark:libvirt\.hosts\.1\.name: "a" is also host 0's name/);
        expect(text).toMatch(/nixspark:libvirt\.hosts\.1\.uri: .* is also host 0's uri/);
        expect(text).toMatch(/nixspark:libvirt\.hosts\.0\.workers: 4, but each host's position owns 4 addresses.*at most 3 workers/);
    });

    test("network.gateway is refused in NAT mode", () => {
        expect(problemsOf({ "nixspark:network": JSON.stringify({ gateway: "10.1.1.1" }) })).toMatch(/nixspark:network\.gateway: only read with nixspark:network\.mode bridge/);
    });

    test("bridge mode's subnet may be one this machine routes (it sits on the segment); NAT mode's may not", () => {
        const { loadStackConfig } = require("../../cluster/stackConfig") as typeof import("../../cluster/stackConfig");
        const routes = [{ iface: "br0", cidr: "10.50.0.0/24" }];
        expect(loadStackConfig("lab", twoHosts(1, 1), routes).topology.mode).toBe("bridge");
        expect(() => loadStackConfig("lab", { "nixspark:network": JSON.stringify({ cidr: "10.50.0.0/24" }) }, routes)).toThrow(/which this host already routes \(10\.50\.0\.0\/24 on br0\)/);
    });

    test("under target hosts, nixspark:libvirt is a libvirt-only key", () => {
        expect(problemsOf({ "nixspark:target": "hosts", "nixspark:libvirt": JSON.stringify({ hosts: [{ name: "a", uri: A, workers: 1 }] }) })).toMatch(/nixspark:libvirt: set, but nixspark:target is "hosts"/);
    });
});

describe("placement: a worker's number comes from its host's position and its count there", () => {
    test("worker k of the host at position p is number p*addressesPerHost+k, with its address and host", () => {
        const t = buildTopology("lab", parseConfig(twoHosts(2, 1)));
        expect(t.mode).toBe("bridge");
        expect(t.nodes.map((n) => [n.name, n.ip, t.hosts[n.host].name])).toEqual([
            ["master", "10.50.0.10", "a"],
            ["worker-1", "10.50.0.11", "a"],
            ["worker-2", "10.50.0.12", "a"],
            ["worker-33", "10.50.0.43", "b"],
        ]);
        expect(t.hosts.map((h) => [h.name, h.uri, h.bridge])).toEqual([
            ["a", A, "br0"],
            ["b", B, "br0"],
        ]);
    });

    test("adding a worker to either host, or a host at the end, moves no node: every earlier node keeps name, address, MAC and host", () => {
        const before = buildTopology("lab", parseConfig(twoHosts(1, 1)));
        const key = (t: ReturnType<typeof buildTopology>) => t.nodes.map((n) => JSON.stringify([n.name, n.ip, n.mac, t.hosts[n.host].name]));
        const grown = [
            parseConfig(twoHosts(2, 1)),
            parseConfig(twoHosts(1, 2)),
            parseConfig({
                ...twoHosts(1, 1),
                "nixspark:libvirt": JSON.stringify({ hosts: [{ name: "a", uri: A, workers: 1 }, { name: "b", uri: B, workers: 1 }, { name: "c", uri: "qemu+ssh://root@hv-c/system", workers: 1 }] }),
            }),
        ];
        for (const cfg of grown) {
            const after = key(buildTopology("lab", cfg));
            for (const node of key(before)) expect(after).toContain(node);
            expect(after.length).toBe(before.nodes.length + 1);
        }
    });

    test("a stack without libvirt.hosts keeps workers 1..count on its one host (a one-host stack that grows keeps its nodes)", () => {
        const one = parseConfig({ "nixspark:workers": JSON.stringify({ count: 2 }) });
        expect(placement(one)).toEqual([
            { index: 1, host: 0 },
            { index: 2, host: 0 },
        ]);
        const t = buildTopology("lab", one);
        expect(t.hosts).toEqual([{ name: "", uri: "qemu:///system", consoleLogDir: "/var/log/libvirt/qemu" }]);
        const grown = buildTopology("lab", parseConfig({ ...twoHosts(2, 1), "nixspark:network": JSON.stringify({ mode: "bridge", bridge: "br0", cidr: t.cidr }) }));
        for (const n of t.nodes) expect(grown.nodes.find((g) => g.name === n.name)).toMatchObject({ ip: n.ip, mac: n.mac, host: 0 });
    });

    test("a list whose last worker falls outside the subnet is refused naming the subnet and addressesPerHost", () => {
        const cfg = parseConfig({
            "nixspark:network": JSON.stringify({ mode: "bridge", bridge: "br0", cidr: "10.50.0.0/27" }),
            "nixspark:libvirt": JSON.stringify({ hosts: [{ name: "a", uri: A, workers: 1 }, { name: "b", uri: B, workers: 1 }] }),
        });
        expect(() => buildTopology("lab", cfg)).toThrow(/nixspark:network\.cidr: 10\.50\.0\.0\/27 has room for node numbers up to 13, but the workers of nixspark:libvirt\.hosts reach number 33.*use a larger subnet/);
    });
});

describe("the placement guard (providers/placement.ts)", () => {
    const olds = { hosts: { a: A, b: B }, nodes: { master: "a", "worker-1": "a", "worker-33": "b", "worker-34": "b" } };

    test("removing a host that still runs workers is refused naming them, and says how to move them first", () => {
        const p = placementProblems(olds, { hosts: { a: A }, nodes: { master: "a", "worker-1": "a" } });
        expect(p).toHaveLength(1);
        expect(p[0]).toMatch(/^host b is no longer in nixspark:libvirt\.hosts but runs worker-33, worker-34: removing it would delete those VMs.*set its workers to 0.*then remove the host/);
    });

    test("the first host, which runs the master, cannot leave: no count moves the master", () => {
        const p = placementProblems(olds, { hosts: { b: B }, nodes: { "worker-1": "b" } });
        expect(p.join("\n")).toMatch(/^host a is no longer in nixspark:libvirt\.hosts but runs master, worker-1: the master stays on the host it was made on, the first of the list; keep that host first$/m);
    });

    test("once the count moved them (workers 0, up), the host leaves freely; growing and shrinking pass", () => {
        const emptied = { hosts: { a: A, b: B }, nodes: { master: "a", "worker-1": "a" } };
        expect(placementProblems(emptied, { hosts: { a: A }, nodes: { master: "a", "worker-1": "a" } })).toEqual([]);
        expect(placementProblems(olds, { hosts: { a: A, b: B }, nodes: { ...olds.nodes, "worker-2": "a" } })).toEqual([]);
        expect(placementProblems(olds, emptied)).toEqual([]);
        expect(placementProblems(undefined, olds)).toEqual([]);
    });

    test("a reordered list (a node would change host) and a host's new uri are refused", () => {
        const swapped = placementProblems(olds, { hosts: { a: A, b: B }, nodes: { master: "b", "worker-1": "b", "worker-33": "a", "worker-34": "a" } });
        expect(swapped.join("\n")).toMatch(/would move master from host a to host b, worker-1 from host a to host b, worker-33 from host b to host a.*keep the hosts in their order and add new ones at the end/);
        const moved = placementProblems(olds, { hosts: { a: A, b: "qemu+ssh://root@hv-z/system" }, nodes: olds.nodes });
        expect(moved.join("\n")).toMatch(/host b changed its uri from qemu\+ssh:\/\/root@hv-b\/system to qemu\+ssh:\/\/root@hv-z\/system while it runs worker-33, worker-34/);
    });

    test("addressesPerHost may not change while nodes run on several hosts (the later hosts' workers would be renumbered); on one host it may", () => {
        const renumbered = placementProblems({ ...olds, addressesPerHost: 32 }, { hosts: olds.hosts, nodes: { master: "a", "worker-1": "a", "worker-17": "b", "worker-18": "b" }, addressesPerHost: 16 });
        expect(renumbered.join("\n")).toMatch(/nixspark:libvirt\.addressesPerHost changed from 32 to 16 while nodes run on 2 hosts.*pulumi config set --path libvirt\.addressesPerHost 32/);
        const oneHost = { hosts: { a: A, b: B }, nodes: { master: "a", "worker-1": "a" }, addressesPerHost: 32 };
        expect(placementProblems(oneHost, { ...oneHost, addressesPerHost: 16 })).toEqual([]);
    });
});

describe("the domain on a host bridge, with its static address as a credential", () => {
    const spec = { name: "lab-worker-33", domainType: "qemu" as const, vcpus: 1, memoryMiB: 512, diskPath: "/p/d.qcow2", mac: "52:54:00:AA:BB:CC", consoleLog: "/l/c.log", hostname: "lab-worker-33" };

    test("bridge and address reach the XML (interface type bridge, the nixspark.network credential beside the host name) and read back", () => {
        const xml = domainXml({ ...spec, bridge: "br0", address: "10.50.0.43/24 10.50.0.254" });
        expect(xml).toContain("<interface type='bridge'>");
        expect(xml).toContain("<source bridge='br0'/>");
        expect(xml).not.toContain("source network");
        expect(xml).toContain("<entry>io.systemd.credential:nixspark.network=52:54:00:aa:bb:cc 10.50.0.43/24 10.50.0.254</entry>");
        expect(xml).toContain("<entry>io.systemd.credential:system.hostname=lab-worker-33</entry>");
        const f = readDomain(xml);
        expect([f.bridge, f.address, f.network, f.hostname]).toEqual(["br0", "10.50.0.43/24 10.50.0.254", undefined, "lab-worker-33"]);
    });

    test("a NAT domain's interface has no bridge fact, and moving to a bridge is a restart, named", () => {
        const nat = readDomain(domainXml({ ...spec, network: "lab-net" }));
        expect([nat.network, nat.bridge, nat.address]).toEqual(["lab-net", undefined, undefined]);
        const changes = definitionChanges(nat as Record<string, unknown>, { ...nat, network: undefined, bridge: "br0", address: "10.50.0.43/24" }).map((c) => c.text);
        expect(changes).toEqual(["network lab-net -> (none)", "bridge (none) -> br0", "static address (none) -> 10.50.0.43/24"]);
    });

    test("a malformed address and an interface with neither network nor bridge are refused", () => {
        expect(() => domainXml({ ...spec, bridge: "br0", address: "10.50.0.43" })).toThrow(/not "ADDRESS\/PREFIX\[ GATEWAY\]"/);
        expect(() => domainXml({ ...spec })).toThrow(/neither a network nor a bridge/);
    });
});

describe("console logs are read on the host that runs the VM", () => {
    test("a local URI reads the file; qemu+ssh and the libssh transports read it over ssh as virsh logs in; other transports are refused with the fix", () => {
        expect(consoleLogPlace(undefined)).toEqual({ local: true });
        expect(consoleLogPlace("qemu:///system")).toEqual({ local: true });
        expect(consoleLogPlace("qemu+unix:///system?socket=/tmp/x/sock")).toEqual({ local: true });
        const p = consoleLogPlace("qemu+ssh://deploy@hv-b:2222/system?keyfile=/k/id&no_verify=1");
        expect(p).toEqual({ local: false, user: "deploy", host: "hv-b", port: 2222, keyfile: "/k/id", noVerify: true });
        expect(remoteCatArgv(p as Exclude<typeof p, { local: true }>, "/var/log/libvirt/qemu/x-console.log")).toEqual([
            "ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", "2222", "-i", "/k/id", "-o", "StrictHostKeyChecking=no", "--", "deploy@hv-b", "cat", "--", "/var/log/libvirt/qemu/x-console.log",
        ]);
        // known_hosts as libvirt reads it: qemu+ssh (the ssh binary) ignores it and checks the user's own known hosts; the libssh transports use it.
        const viaSsh = consoleLogPlace("qemu+ssh://hv-b/system?known_hosts=/k/known");
        expect(viaSsh).toEqual({ local: false, host: "hv-b" });
        expect(remoteCatArgv(viaSsh as Exclude<typeof viaSsh, { local: true }>, "/l")).not.toContain("UserKnownHostsFile=/k/known");
        expect(consoleLogPlace("qemu+libssh2://hv-b/system?known_hosts=/k/known")).toEqual({ local: false, host: "hv-b", knownHosts: "/k/known" });
        expect(consoleLogPlace("qemu+libssh://hv-b/system?known_hosts_verify=ignore")).toEqual({ local: false, host: "hv-b", noVerify: true });
        expect(() => consoleLogPlace("qemu+tcp://hv-b/system")).toThrow(/reads only over ssh .* or set nixspark:ssh\.hostKeys to "first-use"/);
    });
});

describe("a base volume already in a pool is the image's when its bytes are (an image back in use, a lost state)", () => {
    test("on a host reached over ssh: the host's sha256sum of the volume, with the URI's login, against the image's; anything else counts as different", async () => {
        const fs = require("node:fs") as typeof import("node:fs");
        const os = require("node:os") as typeof import("node:os");
        const crypto = require("node:crypto") as typeof import("node:crypto");
        const dir = fs.mkdtempSync(require("node:path").join(os.tmpdir(), "nxs-same-"));
        try {
            const image = `${dir}/nixos.qcow2`;
            fs.writeFileSync(image, Buffer.alloc(5 * 1024 * 1024 + 7, 7));
            const hash = crypto.createHash("sha256").update(fs.readFileSync(image)).digest("hex");
            const calls: string[][] = [];
            const answering = (out: { code: number; stdout: string }) => async (argv: string[]) => {
                calls.push(argv);
                return { ...out, stderr: "" } as any;
            };
            const uri = "qemu+ssh://deploy@hv-b:2222/system?keyfile=/k/id";
            expect(await sameImage(uri, image, "/var/lib/nixspark/lab/lab-base-a.qcow2", answering({ code: 0, stdout: `${hash}  /var/lib/nixspark/lab/lab-base-a.qcow2\n` }))).toBe(true);
            expect(calls[0]).toEqual(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", "2222", "-i", "/k/id", "--", "deploy@hv-b", "sha256sum", "--", "/var/lib/nixspark/lab/lab-base-a.qcow2"]);
            expect(await sameImage(uri, image, "/p/v.qcow2", answering({ code: 0, stdout: `${"0".repeat(64)}  /p/v.qcow2\n` }))).toBe(false);
            expect(await sameImage(uri, image, "/p/v.qcow2", answering({ code: 255, stdout: "" }))).toBe(false);
            expect(await sameImage(uri, `${dir}/missing.qcow2`, "/p/v.qcow2", answering({ code: 0, stdout: `${hash}  /p/v.qcow2\n` }))).toBe(false);
            // Another transport: nothing to ask the host with; this machine: the files themselves.
            const before = calls.length;
            expect(await sameImage("qemu+tcp://hv-b/system", image, "/p/v.qcow2", answering({ code: 0, stdout: hash }))).toBe(false);
            fs.copyFileSync(image, `${dir}/copy.qcow2`);
            expect(await sameImage("qemu:///system", image, `${dir}/copy.qcow2`, answering({ code: 1, stdout: "" }))).toBe(true);
            expect(calls.length).toBe(before);
            // A path the remote shell would read is refused, not sent.
            await expect(sameImage(uri, image, "/p/v.qcow2; rm -rf /", answering({ code: 0, stdout: hash }))).rejects.toThrow(/cannot pass .* to ssh safely/);
        } finally {
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });
});

describe("SparkCluster over two libvirt hosts, under mocks", () => {
    const systems = {
        flake: "path:/p/nix",
        master: { configuration: "lab-master", expectedSystem: "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-lab-master" },
        worker: { configuration: "lab-worker", expectedSystem: "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-lab-worker" },
    };

    test("per host a pool and a base volume (the first host keeps a one-host stack's names), no network, each VM on its host's bridge with its address, and the placement recorded", async () => {
        registered = [];
        const { SparkCluster } = await import("../../cluster/sparkCluster");
        const config = parseConfig(twoHosts(1, 1, { "nixspark:image": JSON.stringify({ path: "/images/base.qcow2" }) }));
        const c = new SparkCluster("lab", { stack: "lab", config, baseImage: { path: "/images/base.qcow2" }, systems, ssh: { identityFile: "/k", knownHostsFile: "/kh" } });
        await new Promise<void>((r) => pulumi.all([...c.deployments, ...c.nodes.map((n) => n.domain)].map((x) => x.id)).apply(() => r()));
        const of = (t: string) => registered.filter((r) => r.type === `pulumi-nodejs:dynamic/nixspark:${t}`);
        expect(c.network).toBeUndefined();
        expect(of("Network")).toEqual([]);
        // (Every pool, volume and domain depends on it: the e2e story shows its refusal comes before any change.)
        expect(of("Placement").map((r) => [r.name, r.inputs.hosts])).toEqual([["lab-placement", { a: A, b: B }]]);
        expect(of("Placement")[0].inputs.nodes).toEqual({ master: "a", "worker-1": "a", "worker-33": "b" });
        expect(of("StoragePool").map((r) => [r.name, r.inputs.uri])).toEqual([
            ["lab-pool", A],
            ["lab-b-pool", B],
        ]);
        expect(of("BaseVolume").map((r) => [r.name, r.inputs.uri])).toEqual([
            ["lab-base-volume", A],
            ["lab-b-base-volume", B],
        ]);
        expect(of("Volume").map((r) => [r.name, r.inputs.uri])).toEqual([
            ["lab-master-disk", A],
            ["lab-worker-1-disk", A],
            ["lab-worker-33-disk", B],
        ]);
        expect(of("Domain").map((r) => [r.name, r.inputs.uri, r.inputs.bridge, r.inputs.address, r.inputs.network])).toEqual([
            ["lab-master", A, "br0", "10.50.0.10/24", undefined],
            ["lab-worker-1", A, "br0", "10.50.0.11/24", undefined],
            ["lab-worker-33", B, "br0", "10.50.0.43/24", undefined],
        ]);
        const w33 = of("NixosDeployment").find((r) => r.name === "lab-worker-33-nixos")!;
        expect(w33.inputs.vm.uri).toBe(B);
        expect(w33.inputs.vm.definition).toMatchObject({ bridge: "br0", address: "10.50.0.43/24" });
        expect(w33.inputs.vm.definition.network).toBeUndefined();
        expect(c.nodeOutputs.find((n) => n.name === "worker-33")).toMatchObject({ libvirtHost: "b", libvirtUri: B, ip: "10.50.0.43" });
    });
});
