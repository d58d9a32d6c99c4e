// One cluster over two libvirt hosts through the real engine (issue 19,
// must-show 2): two real libvirtds, each in a network namespace of its own
// (tests/helpers/libvirtBench.ts), each with a bridge joined by a veth pair to
// a bridge in a third namespace, the shared L2 segment
// (tests/helpers/segmentBench.ts). `pulumi` runs in that third namespace,
// the machine at the segment's .1, and reaches each libvirtd through its unix
// socket. No libvirt network and no DHCP server anywhere: every VM takes the
// static address the program hands it in its SMBIOS strings.
//   1. preview of a new stack: the placement, a pool and a base volume per
//      host, three volumes, domains and deployments, and no network;
//   2. up: the master and worker-1 on host a, worker-33 on host b; each new
//      VM's host key is pinned from the console log its own host writes (a
//      directory per host); each guest answers at its static address from the
//      other host's namespace, on the interface with its MAC only, with no
//      DHCP client, and runs its role system;
//   3. one more worker on b: preview shows its volume, domain and deployment
//      and the placement's update, nothing of any existing node; up puts it
//      on b, where the placement says;
//   4. removing b from the list while it runs workers is refused in preview,
//      naming them, and nothing changes;
//   5. its count moves them first (workers 0, up: they are removed), then
//      removing b is a preview of its pool and base volume going, and up
//      removes them.
// NixOS cannot be built here: the flake copy evaluates against the stub
// nixpkgs and the e2e stand-in for nixos-rebuild switches a guest by pointing
// its /run/current-system at the evaluated system (as tests/e2e/stack.test.ts).
import * as path from "node:path";
import { run } from "../../providers/run";
import { macFor } from "../../cluster/topology";
import { sshArgv, tailFile, waitFor } from "../helpers/libvirtBench";
import type { Bench } from "../helpers/libvirtBench";
import { startSegment } from "../helpers/segmentBench";
import type { Segment } from "../helpers/segmentBench";
import { installPulumi, opKinds, OperationResult, PulumiCli, Step, stepList } from "../helpers/pulumiCli";
import { storyLog, tearDownStory } from "../helpers/e2eStory";
import { createE2eProject, E2eProject, randomCidr, randomStackName, tinyStackConfig } from "../fixtures/e2e-project";

jest.setTimeout(10 * 60_000);

const stack = randomStackName("mh");
const cidr = randomCidr();
const net = cidr.replace(/\.0\/24$/, "");
const BRIDGE = "nxsbr0";

let segment: Segment | undefined;
let project: E2eProject | undefined;
let cli: PulumiCli | undefined;
let mayHaveResources = false;
const log = storyLog(stack);
const { say, timed } = log;

const hostA = () => segment!.benches[0];
const hostB = () => segment!.benches[1];
const ipOf = (node: string) => `${net}.${node === "master" ? 10 : 10 + Number(node.replace("worker-", ""))}`;
const domain = (node: string) => `${stack}-${node}`;
const changed = (r: OperationResult): Step[] => r.steps.filter((s) => s.op !== "same" && s.op !== "refresh");

/** The stack's config: the tiny guests, bridge mode, and the two hosts with their worker counts (undefined: b left out). */
function config(workersA: number, workersB: number | undefined): Record<string, unknown> {
    const base = tinyStackConfig(hostA(), project!, { workers: 0, cidr });
    // Each host's own pool directory and console logs: the default paths, which
    // each bench's daemon sees in its own mount namespace (as on two machines).
    const { libvirtUri: _uri, storage: _storage, workers: _workers, network: _network, ...rest } = base;
    return {
        ...rest,
        network: { mode: "bridge", bridge: BRIDGE, cidr },
        workers: { vcpus: 1, memoryMiB: 256, diskGiB: 1 },
        // Each new VM's host key is checked against what it printed on its console, in the log its own host writes.
        ssh: { ...(rest.ssh as Record<string, unknown>), hostKeys: "console" },
        libvirt: {
            hosts: [
                { name: "a", uri: hostA().uri, workers: workersA, consoleLogDir: consoleDir(hostA()) },
                ...(workersB === undefined ? [] : [{ name: "b", uri: hostB().uri, workers: workersB, consoleLogDir: consoleDir(hostB()) }]),
            ],
        },
    };
}

/** Where a host's libvirt writes the console logs (a directory of its own, as on two machines). */
const consoleDir = (bench: Bench) => path.join(bench.dir, "log", "qemu");

async function domains(bench: Bench): Promise<string[]> {
    const r = await bench.virsh(["list", "--all", "--name"]);
    return r.stdout.split("\n").map((l) => l.trim()).filter(Boolean).sort();
}

async function pools(bench: Bench): Promise<string[]> {
    const r = await bench.virsh(["pool-list", "--all", "--name"]);
    return r.stdout.split("\n").map((l) => l.trim()).filter(Boolean).sort();
}

async function networks(bench: Bench): Promise<string[]> {
    const r = await bench.virsh(["net-list", "--all", "--name"]);
    return r.stdout.split("\n").map((l) => l.trim()).filter(Boolean);
}

/** The guest answers http at its static address, asked from `from`'s namespace, with its host name; its info says where the address came from. */
async function expectAnswersFrom(from: Bench, node: string, runsOn: Bench): Promise<void> {
    const ip = ipOf(node);
    let body = "";
    await waitFor(
        `${domain(node)} answering at ${ip} from ${from.netns}`,
        async () => {
            const r = await from.exec(["wget", "-qO-", "-T", "3", `http://${ip}/`], { allowFailure: true, timeoutMs: 10_000 });
            body = r.stdout.trim();
            return r.code === 0 && body === domain(node) ? body : undefined;
        },
        { timeoutMs: 180_000, intervalMs: 1000, diagnose: () => `last answer: ${body}\n${tailFile(path.join(runsOn.dir, "log", "qemu", `${domain(node)}-console.log`))}` },
    );
    const info = await from.exec(["wget", "-qO-", "-T", "3", `http://${ip}/info.txt`], { timeoutMs: 10_000 });
    expect(info.stdout).toContain("address_source=credential");
    expect(info.stdout).toContain(`ip=${ip}`);
}

/** What /run/current-system points at on a guest, asked over ssh from the segment (where pulumi runs). */
async function currentSystem(node: string): Promise<string> {
    const r = await segment!.exec(sshArgv(hostA().guest.sshKey, ipOf(node), ["readlink", "-f", "/run/current-system", "||", "true"]), { timeoutMs: 30_000 });
    return r.stdout.trim();
}

async function evalSystem(role: "master" | "worker"): Promise<string> {
    const r = await run(
        ["nix", "--extra-experimental-features", "nix-command flakes", "eval", "--raw", `${project!.flakeRef}#nixosConfigurations."${stack}-${role}".config.system.build.toplevel.outPath`],
        { env: { ...process.env, NIX_CONFIG: project!.nixConfig }, timeoutMs: 120_000 },
    );
    return r.stdout.trim();
}

beforeAll(async () => {
    await timed("install-pulumi", () => installPulumi());
    segment = await timed("startSegment", () => startSegment({ cidr, benches: 2, bridge: BRIDGE, log: say }));
    project = createE2eProject();
    cli = new PulumiCli({ cwd: project.dir, stack, backendDir: project.backendDir, netns: segment.netns, env: { NIX_CONFIG: project.nixConfig } });
    await cli.stackInit();
    cli.writeStackConfig(config(1, 1));
    say(`project ${project.dir}, segment ${segment.netns}, hosts ${hostA().uri} and ${hostB().uri}, subnet ${cidr}`);
}, 30 * 60_000);

afterAll(async () => {
    // The benches' daemons go with the segment (their VMs and pools with them).
    await tearDownStory({ clis: cli && mayHaveResources ? [cli] : [], project, log });
    await segment?.stop();
}, 10 * 60_000);

describe(`one stack over two libvirt hosts (stack ${stack})`, () => {
    test("1. preview of a new stack: the placement, a pool and a base volume per host, three nodes, no network", async () => {
        const p = await timed("preview (new, a: master+1, b: 1)", () => cli!.preview());
        expect(opKinds(p.steps)).toEqual(
            [
                "create Stack",
                "create SparkCluster",
                "create Placement",
                ...Array(2).fill("create StoragePool"),
                ...Array(2).fill("create BaseVolume"),
                "create ClusterSecret",
                ...Array(3).fill("create Volume"),
                ...Array(3).fill("create Domain"),
                ...Array(3).fill("create NixosDeployment"),
            ].sort(),
        );
        expect(stepList(p.steps).filter((s) => /pool|base-volume/.test(s))).toEqual(
            [`create ${stack}-pool`, `create ${stack}-b-pool`, `create ${stack}-base-volume`, `create ${stack}-b-base-volume`].sort(),
        );
        for (const b of [hostA(), hostB()]) expect(await domains(b)).toEqual([]);
    });

    test("2. up: master and worker-1 on a, worker-33 on b, each answering at its static address from the other host's namespace, running its role", async () => {
        mayHaveResources = true;
        const u = await timed("up (a: master+1, b: 1)", () => cli!.up());
        expect(u.summary).toEqual({ create: 17 });
        expect(await domains(hostA())).toEqual([domain("master"), domain("worker-1")].sort());
        expect(await domains(hostB())).toEqual([domain("worker-33")]);
        expect(await pools(hostA())).toEqual([`${stack}-pool`]);
        expect(await pools(hostB())).toEqual([`${stack}-pool`]);
        // No libvirt network, so no DHCP server: the addresses can only be the credential's.
        expect([...(await networks(hostA())), ...(await networks(hostB()))]).toEqual([]);
        await Promise.all([expectAnswersFrom(hostB(), "master", hostA()), expectAnswersFrom(hostB(), "worker-1", hostA()), expectAnswersFrom(hostA(), "worker-33", hostB())]);

        // The address is on the interface with the credential's MAC and no other, and no DHCP client ever ran.
        const seen = await segment!.exec(sshArgv(hostA().guest.sshKey, ipOf("worker-33"), ["ip -4 -o addr show; ip -o link show; pidof udhcpc || echo no-udhcpc"]), { timeoutMs: 60_000 });
        expect(seen.stdout.match(/inet (?!127\.)/g)).toHaveLength(1);
        expect(seen.stdout).toContain("no-udhcpc");
        const iface = new RegExp(`^\\d+: (\\S+)\\s+inet ${ipOf("worker-33").replace(/\./g, "\\.")}/24 `, "m").exec(seen.stdout)?.[1];
        expect(seen.stdout).toMatch(new RegExp(`^\\d+: ${iface}: .*link/ether ${macFor(stack, "worker-33")} `, "m"));

        const systems = { master: await evalSystem("master"), worker: await evalSystem("worker") };
        expect(await currentSystem("master")).toBe(systems.master);
        expect(await currentSystem("worker-1")).toBe(systems.worker);
        expect(await currentSystem("worker-33")).toBe(systems.worker);

        // Each deployment pinned the host key its VM printed on its own host's console.
        const text = `${u.stderr}\n${u.diagnostics.map((d) => d.message).join("\n")}`;
        for (const n of ["master", "worker-1", "worker-33"]) expect(text).toMatch(new RegExp(`host key of root@${ipOf(n).replace(/\./g, "\\.")} port 22 matches the VM's console \\(SHA256:`));

        const out = await cli!.outputs();
        expect(out.nodes.map((n: Record<string, string>) => [n.name, n.ip, n.libvirtHost, n.libvirtUri])).toEqual([
            ["master", ipOf("master"), "a", hostA().uri],
            ["worker-1", ipOf("worker-1"), "a", hostA().uri],
            ["worker-33", ipOf("worker-33"), "b", hostB().uri],
        ]);
    });

    test("3. one more worker on b: preview changes no existing node; up puts worker-34 on b", async () => {
        cli!.writeStackConfig(config(1, 2));
        const p = await timed("preview (b: 2)", () => cli!.preview());
        expect(stepList(changed(p))).toEqual(
            [`update ${stack}-placement`, `create ${domain("worker-34")}-disk`, `create ${domain("worker-34")}`, `create ${domain("worker-34")}-nixos`].sort(),
        );
        await timed("up (b: 2)", () => cli!.up());
        expect(await domains(hostB())).toEqual([domain("worker-33"), domain("worker-34")]);
        expect(await domains(hostA())).toEqual([domain("master"), domain("worker-1")].sort());
        await expectAnswersFrom(hostA(), "worker-34", hostB());
    });

    test("4. removing b while it runs workers is refused in preview, naming them; nothing changes", async () => {
        cli!.writeStackConfig(config(1, undefined));
        const p = await timed("preview (b removed)", () => cli!.preview({ allowFailure: true }));
        expect(p.code).not.toBe(0);
        const text = `${p.stderr}\n${p.stdout}\n${p.diagnostics.map((d) => d.message).join("\n")}`;
        expect(text).toMatch(/host b is no longer in nixspark:libvirt\.hosts but runs worker-33, worker-34: removing it would delete those VMs/);
        expect(text).toMatch(/set its workers to 0/);
        expect(await domains(hostB())).toEqual([domain("worker-33"), domain("worker-34")]);
    });

    test("5. once its count moved them (workers 0, up), removing b is its pool and base volume going", async () => {
        cli!.writeStackConfig(config(1, 0));
        const emptied = await timed("up (b: 0)", () => cli!.up());
        expect(emptied.summary.delete).toBe(6);
        expect(await domains(hostB())).toEqual([]);

        cli!.writeStackConfig(config(1, undefined));
        const p = await timed("preview (b removed, empty)", () => cli!.preview());
        expect(stepList(changed(p))).toEqual([`update ${stack}-placement`, `delete ${stack}-b-pool`, `delete ${stack}-b-base-volume`].sort());
        await timed("up (b removed)", () => cli!.up());
        expect(await pools(hostB())).toEqual([]);
        expect(await domains(hostA())).toEqual([domain("master"), domain("worker-1")].sort());
    });
});
