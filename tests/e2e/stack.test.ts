// The real Pulumi engine on the real libvirt bench: a user's story, told with
// the CLI against a throw-away copy of the project and a local file backend.
//
//   a new stack's preview lists exactly what will be created, and creates
//   nothing -> up creates it; every tiny guest takes its reserved address and
//   runs the role system the program expects; an unchanged preview is all
//   "same" -> .nixspark/ is a cache: deleted, or in a second clone of the
//   project, preview shows no change and up --refresh changes nothing and
//   reaches every node with the deploy key and host keys from the state
//   -> one more worker: one volume, one domain, one deployment, the
//   network updated in place (same UUID) -> a Spark setting: the four
//   deployments update, nothing is replaced, no VM is touched -> a VM removed
//   behind the stack's back: refresh notices, up brings it back and deploys
//   it (its deployment replaced, delete first) -> the network undefined
//   behind the stack's back: refresh + up re-create it and plug the running
//   VMs back, no restart -> a stopped worker's disk deleted: refresh + up
//   re-create it and switch the node again -> the `nixspark` CLI on the
//   stack: a VM killed from outside is started again by heal, which says so;
//   stop leaves every VM shut off and preview unchanged, start brings them
//   back; exec and copy reach every node -> an invalid config in a fresh stack fails with the schema's own
//   messages and leaves the stack empty -> destroy leaves no libvirt object
//   and no GC root.
//
// Where things run. libvirtd and the guests live in the bench's private
// network namespace. The `pulumi` CLI runs inside that namespace too
// (`ip netns exec NS pulumi ...`): the program and its dynamic providers are
// its children, so the ssh and nixos-rebuild (stand-in) they start reach the
// guests, and all traffic stays inside the namespace. libvirt is reached
// through the bench's unix socket (bench.uri), a file path, which works from
// any network namespace.
//
// NixOS cannot be built here: the flake copy evaluates against the stub
// nixpkgs (real Nix, real nix/flake.nix), and the e2e stand-in for
// nixos-rebuild (tests/fixtures/e2e-nixos-rebuild) switches a guest by
// pointing its /run/current-system at the evaluated system path.
import * as fs from "node:fs";
import * as path from "node:path";
import { run } from "../../providers/run";
import { Bench, startBench, tailFile, waitFor } from "../helpers/libvirtBench";
import { installPulumi, opKinds, OperationResult, PulumiCli, REPO, Step, stepList } from "../helpers/pulumiCli";
import { storyLog, tearDownStory } from "../helpers/e2eStory";
import { createE2eProject, E2eProject, randomCidr, randomStackName, tinyStackConfig } from "../fixtures/e2e-project";

jest.setTimeout(10 * 60_000);

const stack = randomStackName("e2e");
const cidr = randomCidr();
const net = cidr.replace(/\.0\/24$/, "");

let bench: Bench;
let project: E2eProject;
let cli: PulumiCli;
let rebuildLog: string;
/** True once an `up` may have created something: afterAll then destroys. */
let mayHaveResources = false;
let destroyed = false;

const storyLogged = storyLog(stack);
const { say, timed } = storyLogged;

beforeAll(async () => {
    await timed("install-pulumi", () => installPulumi());
    bench = await timed("startBench", () => startBench({ log: say }));
    project = createE2eProject();
    rebuildLog = path.join(project.root, "rebuilds.jsonl");
    cli = new PulumiCli({
        cwd: project.dir,
        stack,
        backendDir: project.backendDir,
        netns: bench.netns,
        env: { NIX_CONFIG: project.nixConfig, NIXSPARK_E2E_REBUILD_LOG: rebuildLog },
    });
    await cli.stackInit();
    // The stack deploys with its own key (no nixspark:ssh.privateKeyPath), a
    // stack "from before": the key is in the project's cache and is imported
    // into the state by the first up. It is the test guest's key, the only one
    // its image lets in. Only the private half: the program derives the .pub.
    const cfg = tinyStackConfig(bench, project, { workers: 2, cidr });
    cli.writeStackConfig({ ...cfg, ssh: { user: "root", port: 22 } });
    fs.mkdirSync(cacheDir(project.dir), { recursive: true, mode: 0o700 });
    fs.copyFileSync(bench.guest.sshKey, deployKeyFile(project.dir));
    fs.chmodSync(deployKeyFile(project.dir), 0o600);
    say(`project ${project.dir}, netns ${bench.netns}, ${bench.uri}, subnet ${cidr}`);
}, 30 * 60_000);

afterAll(() => tearDownStory({ clis: cli && mayHaveResources && !destroyed ? [cli] : [], bench, project, log: storyLogged }), 10 * 60_000);

// ------------------------------------------------------------------ helpers

const names = {
    pool: `${stack}-pool`,
    network: `${stack}-net`,
    /** The network's Pulumi name: fixed, independent of its libvirt name. */
    networkResource: `${stack}-network`,
    domain: (n: string) => `${stack}-${n}`,
    volume: (n: string) => `${stack}-${n}-disk`,
    deployment: (n: string) => `${stack}-${n}-nixos`,
};
const nodeNames = (workers: number) => ["master", ...Array.from({ length: workers }, (_, i) => `worker-${i + 1}`)];
const ipOf = (node: string) => `${net}.${node === "master" ? 10 : 10 + Number(node.replace("worker-", ""))}`;

/** Steps other than "same" (and the refresh steps of an `up --refresh`). */
const changed = (r: OperationResult): Step[] => r.steps.filter((s) => s.op !== "same" && s.op !== "refresh");

/** The stack's cache directory in a project directory, and its deploy key file there. */
const cacheDir = (dir: string) => path.join(dir, ".nixspark", stack);
const deployKeyFile = (dir: string) => path.join(cacheDir(dir), "deploy_ed25519");
/** Whether a state value is a Pulumi secret (the export shows its ciphertext only). */
const isSecret = (v: unknown) => typeof v === "object" && v !== null && "ciphertext" in v;

async function virshNames(args: string[]): Promise<string[]> {
    const r = await bench.virsh(args);
    return r.stdout.split("\n").map((l) => l.trim()).filter(Boolean).sort();
}

/** What libvirt holds, all object kinds. */
async function libvirtObjects() {
    const pools = await virshNames(["pool-list", "--all", "--name"]);
    const volumes: string[] = [];
    for (const p of pools) {
        const r = await bench.virsh(["vol-list", "--pool", p], { allowFailure: true });
        volumes.push(...r.stdout.split("\n").slice(2).map((l) => l.trim().split(/\s+/)[0]).filter(Boolean));
    }
    return {
        domains: await virshNames(["list", "--all", "--name"]),
        networks: await virshNames(["net-list", "--all", "--name"]),
        pools,
        volumes: volumes.sort(),
    };
}

/** The role system as real Nix evaluates it from the flake copy (independently of the program). */
async function evalSystem(role: "master" | "worker"): Promise<string> {
    const r = await run(
        ["nix", "--extra-experimental-features", "nix-command flakes", "eval", "--raw", `${project.flakeRef}#nixosConfigurations."${stack}-${role}".config.system.build.toplevel.outPath`],
        { env: { ...process.env, NIX_CONFIG: project.nixConfig }, timeoutMs: 120_000 },
    );
    return r.stdout.trim();
}

/** What /run/current-system points at on a guest ("" when it has none). */
async function currentSystem(ip: string): Promise<string> {
    const r = await bench.ssh(ip, ["readlink", "-f", "/run/current-system", "||", "true"], { allowFailure: true, timeoutMs: 30_000 });
    if (r.code !== 0) throw new Error(`ssh ${ip}: exit ${r.code}: ${r.stderr.trim()}`);
    const out = r.stdout.trim();
    return out.startsWith("/nix/store/") ? out : "";
}

/** The guest answers HTTP at its reserved address with the hostname DHCP gave it. */
async function expectReservedAddress(node: string): Promise<void> {
    const ip = ipOf(node);
    const hostname = names.domain(node);
    let body = "";
    await waitFor(
        `${hostname} answering at ${ip}`,
        async () => {
            const r = await bench.exec(["wget", "-qO-", "-T", "3", `http://${ip}/`], { allowFailure: true, timeoutMs: 10_000 });
            body = r.stdout.trim();
            return r.code === 0 && body === hostname ? body : undefined;
        },
        { timeoutMs: 120_000, intervalMs: 1000, diagnose: () => `last answer: ${body}\n${tailFile(path.join(bench.dir, "log", "qemu", `${hostname}-console.log`))}` },
    );
}

interface Rebuild {
    time: number;
    seconds: number;
    target: string;
    configuration: string;
    system: string;
}

function rebuilds(): Rebuild[] {
    if (!fs.existsSync(rebuildLog)) return [];
    return fs.readFileSync(rebuildLog, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
}

async function stateUrns(c: PulumiCli = cli): Promise<string[]> {
    const d = await c.exportState();
    return (d.resources ?? []).map((r: { urn: string }) => r.urn);
}

/** Every NixosDeployment step's name -> op; and the systems the nodes run. */
async function expectNodesRun(workers: number, systems: { master: string; worker: string }): Promise<void> {
    const got: Record<string, string> = {};
    const want: Record<string, string> = {};
    for (const n of nodeNames(workers)) {
        got[n] = await currentSystem(ipOf(n));
        want[n] = n === "master" ? systems.master : systems.worker;
    }
    expect(got).toEqual(want);
}

// -------------------------------------------------------------------- story

describe(`pulumi CLI on the libvirt bench (stack ${stack})`, () => {
    let systems: { master: string; worker: string };
    let networkUuid: string;

    test("1. preview of a new stack lists exactly the expected creates and creates nothing", async () => {
        const p = await timed("preview (new stack)", () => cli.preview());
        expect(opKinds(p.steps)).toEqual(
            [
                "create Stack",
                "create SparkCluster",
                "create StoragePool",
                "create Network",
                "create BaseVolume",
                "create ClusterSecret",
                "create DeployKey",
                ...Array(3).fill("create Volume"),
                ...Array(3).fill("create Domain"),
                ...Array(3).fill("create NixosDeployment"),
            ].sort(),
        );
        expect(stepList(p.steps)).toEqual(
            [
                `create nixspark-${stack}`,
                "create nixspark",
                `create ${names.pool}`,
                `create ${names.networkResource}`,
                `create ${stack}-base-volume`,
                `create ${stack}-spark-secret`,
                `create ${stack}-deploy-key`,
                ...nodeNames(2).flatMap((n) => [`create ${names.volume(n)}`, `create ${names.domain(n)}`, `create ${names.deployment(n)}`]),
            ].sort(),
        );
        expect(p.summary).toEqual({ create: 16 });
        // The key in the cache is what up will import: the preview says so, and derived its .pub.
        expect(p.diagnostics.map((d) => d.message).join("\n")).toMatch(/will import the deploy key \.nixspark\/\S+\/deploy_ed25519 \(SHA256:\S+\) into the stack's state, once/);
        expect(fs.readFileSync(`${deployKeyFile(project.dir)}.pub`, "utf8").split(" ").slice(0, 2)).toEqual(bench.guest.sshPublicKey.split(" ").slice(0, 2));
        expect(await libvirtObjects()).toEqual({ domains: [], networks: [], pools: [], volumes: [] });
        expect(await stateUrns()).toEqual([]);
        expect(rebuilds()).toEqual([]);
    });

    test("2. up creates them; each guest takes its reserved address and runs its role system; a second preview is all same", async () => {
        mayHaveResources = true;
        const u = await timed("up (1+2 nodes)", () => cli.up());
        expect(u.summary).toEqual({ create: 16 });
        expect(u.diagnostics.map((d) => d.message).join("\n")).toMatch(/imported the deploy key .*deploy_ed25519 \(SHA256:\S+\) into the stack's state, once: from now on the state holds it \(a secret\)/);
        systems = { master: await evalSystem("master"), worker: await evalSystem("worker") };
        expect(systems.master).toMatch(/^\/nix\/store\/[a-z0-9]{32}-/);

        const objects = await libvirtObjects();
        expect(objects.domains).toEqual(nodeNames(2).map(names.domain).sort());
        expect(objects.networks).toEqual([names.network]);
        expect(objects.pools).toEqual([names.pool]);
        // Three overlays and the base volume they back onto.
        expect(objects.volumes).toHaveLength(4);
        expect(await virshNames(["list", "--state-running", "--name"])).toEqual(objects.domains);

        for (const n of nodeNames(2)) await expectReservedAddress(n);
        await expectNodesRun(2, systems);

        // One switch per node, the master's finished before any worker's started.
        const r = rebuilds();
        expect(r.map((x) => x.target).sort()).toEqual(nodeNames(2).map((n) => `root@${ipOf(n)}`).sort());
        const master = r.find((x) => x.target === `root@${ipOf("master")}`)!;
        for (const w of r.filter((x) => x !== master)) expect(w.time).toBeGreaterThanOrEqual(master.time + master.seconds);

        const out = await cli.outputs();
        expect(out.network).toBe(names.network);
        expect(out.masterAddress).toBe(ipOf("master"));
        expect(out.nodes.map((n: { name: string; ip: string }) => `${n.name}=${n.ip}`)).toEqual(nodeNames(2).map((n) => `${n}=${ipOf(n)}`));
        // What each node must run, as the program exports it (npm run status reads it).
        expect(out.nodes.map((n: { name: string; system: string }) => `${n.name}=${n.system}`)).toEqual(
            nodeNames(2).map((n) => `${n}=${n === "master" ? systems.master : systems.worker}`),
        );

        const again = await timed("preview (unchanged, 1+2)", () => cli.preview());
        expect(changed(again)).toEqual([]);
        expect(Object.keys(again.summary)).toEqual(["same"]);
        expect(again.summary.same).toBe(16);
    });

    // Issue 16: everything the stack needs is in its state; .nixspark/ is a
    // cache. The deploy key is a secret of the DeployKey resource, each
    // deployment holds its node's pinned host key (and the key, a secret, so
    // that a refresh reaches the node before any program ran). A preview
    // without the cache must show what the state says (the key is in every
    // role system: a new key would update every deployment), and an up
    // --refresh must reach every node: each deployment's read logs in with
    // strict host keys from the state, or says it could not.
    test("2b. without .nixspark/ (deleted, then in a second clone of the project) preview shows no change, and up --refresh changes nothing and reaches every node", async () => {
        const exported = await cli.exportState();
        const resources = exported.resources ?? [];
        const key = resources.find((r: { type: string }) => r.type.endsWith(":DeployKey"));
        expect(isSecret(key?.outputs?.privateKey)).toBe(true);
        const deployments = resources.filter((r: { type: string }) => r.type.endsWith(":NixosDeployment"));
        const pinned: Record<string, string[]> = Object.fromEntries(deployments.map((r: { outputs: { node: string; hostKeys: string[] } }) => [r.outputs.node, r.outputs.hostKeys]));
        expect(Object.keys(pinned).sort()).toEqual(nodeNames(2).sort());
        for (const n of nodeNames(2)) expect(pinned[n].map((l) => l.split(" ")[0])).toEqual(pinned[n].map(() => ipOf(n)));
        for (const r of deployments) expect(isSecret(r.outputs.privateKey)).toBe(true);
        const guestKey = fs.readFileSync(bench.guest.sshKey, "utf8");

        const withoutCache = async (c: PulumiCli, dir: string, what: string) => {
            fs.rmSync(path.join(dir, ".nixspark"), { recursive: true, force: true });
            const p = await timed(`preview (${what}, no .nixspark)`, () => c.preview());
            expect(changed(p)).toEqual([]);
            expect(p.summary).toEqual({ same: 16 });
            // Again before the up: its refresh runs before the program, which writes the key file.
            fs.rmSync(path.join(dir, ".nixspark"), { recursive: true, force: true });
            const u = await timed(`up --refresh (${what}, no .nixspark)`, () => c.up({ extra: ["--refresh"] }));
            expect(stepList(changed(u))).toEqual([]);
            expect(u.summary).toEqual({ same: 16 });
            expect(stepList(u.steps, (s) => s.op === "refresh" && s.kind === "NixosDeployment")).toEqual(nodeNames(2).map((n) => `refresh ${names.deployment(n)}`).sort());
            expect(u.diagnostics.map((d) => d.message).filter((m) => /could not ask the node|authentication failed|host key/i.test(m) && !/pinned host key from the Pulumi state/.test(m))).toEqual([]);
            // What the reads logged in with, written back into this checkout from the state.
            expect(fs.readFileSync(deployKeyFile(dir), "utf8")).toBe(guestKey);
            expect(fs.statSync(deployKeyFile(dir)).mode & 0o777).toBe(0o600);
            const known = fs.readFileSync(path.join(cacheDir(dir), "known_hosts"), "utf8").split("\n").filter(Boolean);
            expect(known.sort()).toEqual(Object.values(pinned).flat().sort());
        };

        await withoutCache(cli, project.dir, "deleted");
        // A second clone: the project without .nixspark/, its own flake copy, the same backend and passphrase.
        const clone = path.join(project.root, "clone");
        fs.cpSync(project.dir, clone, { recursive: true, filter: (src) => src !== path.join(project.dir, ".nixspark") });
        const stackFile = path.join(clone, `Pulumi.${stack}.yaml`);
        fs.writeFileSync(stackFile, fs.readFileSync(stackFile, "utf8").split(project.flakeRef).join(`path:${path.join(clone, "nix")}`));
        await withoutCache(new PulumiCli({ ...cli.opts, cwd: clone }), clone, "second clone");
        await expectNodesRun(2, systems);
    });

    test("3. workers 2 -> 3: one volume, one domain, one deployment, the network updated in place", async () => {
        networkUuid = (await bench.virsh(["net-uuid", names.network])).stdout.trim();
        const before = rebuilds().length;
        await cli.configSet("workers.count", "3");
        const p = await timed("preview (+1 worker)", () => cli.preview());
        expect(stepList(changed(p))).toEqual(
            [`create ${names.volume("worker-3")}`, `create ${names.domain("worker-3")}`, `create ${names.deployment("worker-3")}`, `update ${names.networkResource}`].sort(),
        );
        expect(opKinds(changed(p))).toEqual(["create Domain", "create NixosDeployment", "create Volume", "update Network"]);

        const u = await timed("up (+1 worker)", () => cli.up());
        expect(u.summary).toMatchObject({ create: 3, update: 1 });
        expect(Object.keys(u.summary).sort()).toEqual(["create", "same", "update"]);
        expect((await bench.virsh(["net-uuid", names.network])).stdout.trim()).toBe(networkUuid);

        await expectReservedAddress("worker-3");
        for (const n of nodeNames(2)) await expectReservedAddress(n);
        await expectNodesRun(3, systems);
        // Only the new node was switched.
        expect(rebuilds().slice(before).map((x) => x.target)).toEqual([`root@${ipOf("worker-3")}`]);
    });

    test("4. a Spark setting updates the four deployments only: no replacement, no VM touched; up switches every node", async () => {
        const uuids = await Promise.all(nodeNames(3).map(async (n) => (await bench.virsh(["domuuid", names.domain(n)])).stdout.trim()));
        const before = rebuilds().length;
        await cli.configSet('spark.settings["spark.executor.memory"]', "512m");
        const p = await timed("preview (Spark setting)", () => cli.preview());
        expect(stepList(changed(p))).toEqual(nodeNames(3).map((n) => `update ${names.deployment(n)}`).sort());
        expect(p.summary).toMatchObject({ update: 4 });
        expect(Object.keys(p.summary).sort()).toEqual(["same", "update"]);

        const u = await timed("up (Spark setting, 4 nodes)", () => cli.up());
        expect(u.summary).toMatchObject({ update: 4 });
        expect(Object.keys(u.summary).sort()).toEqual(["same", "update"]);

        const next = { master: await evalSystem("master"), worker: await evalSystem("worker") };
        expect(next.master).not.toBe(systems.master);
        expect(next.worker).not.toBe(systems.worker);
        systems = next;
        await expectNodesRun(3, systems);
        expect(rebuilds().slice(before).map((x) => x.target).sort()).toEqual(nodeNames(3).map((n) => `root@${ipOf(n)}`).sort());
        // Same VMs as before.
        expect(await Promise.all(nodeNames(3).map(async (n) => (await bench.virsh(["domuuid", names.domain(n)])).stdout.trim()))).toEqual(uuids);
    });

    // Step 5 is two tests: the libvirt part, and whether the re-created VM
    // gets its NixOS configuration again.
    const lost = "worker-1";
    let previewAfterRefresh: OperationResult | undefined;
    let upAfterRefresh: OperationResult | undefined;
    let rebuildsBeforeRecreate = 0;

    test("5a. a domain destroyed behind the stack's back: refresh drops it from state, up brings the VM back at its address", async () => {
        const dom = names.domain(lost);
        await bench.virsh(["destroy", dom]);
        await bench.virsh(["undefine", "--nvram", dom]);

        const r = await timed("refresh (one VM gone)", () => cli.refresh());
        expect(r.summary).toMatchObject({ delete: 1 });
        expect(stepList(r.steps, (s) => s.op === "delete")).toEqual([`delete ${dom}`]);
        const urns = await stateUrns();
        expect(urns.some((u) => u.endsWith(`::${dom}`))).toBe(false);
        expect(urns.some((u) => u.endsWith(`::${names.volume(lost)}`))).toBe(true);

        previewAfterRefresh = await timed("preview (after refresh)", () => cli.preview());
        // The VM comes back; nothing else of libvirt moves (its deployment: 5b).
        expect(stepList(changed(previewAfterRefresh), (s) => s.kind !== "NixosDeployment")).toEqual([`create ${dom}`]);

        rebuildsBeforeRecreate = rebuilds().length;
        upAfterRefresh = await timed("up (re-create the VM)", () => cli.up());
        expect(await virshNames(["list", "--state-running", "--name"])).toEqual(nodeNames(3).map(names.domain).sort());
        await expectReservedAddress(lost);
    });

    // A new VM boots the base image: nothing of the role is on it. Its
    // deployment must notice (the domain's UUID is its machineId, unknown in
    // preview, new after up) and is replaced, delete first (a worker that
    // still ran would be decommissioned by the delete), then switches the new
    // VM as a first contact; the other nodes' deployments stay as they are.
    test("5b. the re-created VM is deployed again: only its NixosDeployment is replaced, and it switches the new VM", async () => {
        expect(upAfterRefresh).toBeDefined();
        const facts = {
            plan: stepList(changed(previewAfterRefresh!)),
            applied: stepList(changed(upAfterRefresh!)),
            switched: rebuilds().slice(rebuildsBeforeRecreate).map((x) => x.target),
            running: await currentSystem(ipOf(lost)),
        };
        // One comparison with all the facts, so a failure explains itself.
        expect(facts).toEqual({
            plan: [`create ${names.domain(lost)}`, `replace ${names.deployment(lost)}`],
            applied: [`create ${names.domain(lost)}`, `create-replacement ${names.deployment(lost)}`, `delete-replaced ${names.deployment(lost)}`, `replace ${names.deployment(lost)}`],
            switched: [`root@${ipOf(lost)}`],
            running: systems.worker,
        });
        await expectNodesRun(3, systems);
    });

    // Issue 16, drift repairs. (a) The libvirt network undefined behind the
    // stack's back while the VMs run (an admin's net-destroy + net-undefine):
    // their tap devices stay on no bridge, and libvirt re-plugs them neither
    // when the network is started again nor on an update-device. Refresh
    // drops the Network and records each running Domain's detached
    // interface; preview shows the network created and every Domain updated
    // (no restart: the deployments stay as they are); up creates the network
    // and plugs each tap back. The same VMs, the same NICs, not restarted.
    test("5c. the network undefined behind the stack's back: one refresh + up re-creates it and plugs every running VM back without a restart; every node answers", async () => {
        const nodes = nodeNames(3);
        const uuid = async (n: string) => (await bench.virsh(["domuuid", names.domain(n)])).stdout.trim();
        const taps = async (n: string) => (await bench.virsh(["domiflist", names.domain(n)])).stdout.split("\n").map((l) => l.trim().split(/\s+/)[0]).filter((t) => /^vnet\d+$/.test(t));
        const uptime = async (n: string) => Number((await bench.ssh(ipOf(n), ["cat", "/proc/uptime"], { timeoutMs: 30_000 })).stdout.trim().split(/\s+/)[0]);
        const before = { uuids: await Promise.all(nodes.map(uuid)), taps: await Promise.all(nodes.map(taps)), uptimes: await Promise.all(nodes.map(uptime)) };
        expect(before.taps.map((t) => t.length)).toEqual(nodes.map(() => 1));
        const switches = rebuilds().length;

        await bench.virsh(["net-destroy", names.network]);
        await bench.virsh(["net-undefine", names.network]);
        const r = await timed("refresh (network gone)", () => cli.refresh());
        expect(stepList(r.steps, (s) => s.op === "delete")).toEqual([`delete ${names.networkResource}`]);

        const expected = [`create ${names.networkResource}`, ...nodes.map((n) => `update ${names.domain(n)}`)].sort();
        const p = await timed("preview (network gone)", () => cli.preview());
        expect(stepList(changed(p))).toEqual(expected);
        const u = await timed("up (network re-created)", () => cli.up());
        expect(stepList(changed(u))).toEqual(expected);

        for (const n of nodes) await expectReservedAddress(n);
        const after = { uuids: await Promise.all(nodes.map(uuid)), taps: await Promise.all(nodes.map(taps)), uptimes: await Promise.all(nodes.map(uptime)) };
        // The same VMs with the same NICs, never restarted (their uptime went on), and no node switched.
        expect({ uuids: after.uuids, taps: after.taps }).toEqual({ uuids: before.uuids, taps: before.taps });
        nodes.forEach((n, i) => expect({ node: n, restarted: after.uptimes[i] < before.uptimes[i] }).toEqual({ node: n, restarted: false }));
        expect(rebuilds().length).toBe(switches);
        const again = await timed("preview (network repaired)", () => cli.preview());
        expect(stepList(changed(again))).toEqual([]);
    });

    // (b) A stopped worker's disk deleted (virsh vol-delete): refresh drops its
    // Volume, and its deployment's refresh finds the disk gone. Preview shows
    // the disk created, the VM started (its Domain updated) and the
    // deployment updated, not replaced (the same VM); up switches the node
    // again from a first contact: the new disk has nothing of the role.
    test("5d. a stopped worker's disk deleted behind the stack's back: one refresh + up re-creates it, starts the VM and re-applies its role", async () => {
        const w = "worker-2";
        const dom = names.domain(w);
        await bench.virsh(["destroy", dom]);
        await bench.virsh(["vol-delete", "--pool", names.pool, `${dom}.qcow2`]);
        const r = await timed("refresh (a disk gone)", () => cli.refresh());
        expect(stepList(r.steps, (s) => s.op === "delete")).toEqual([`delete ${names.volume(w)}`]);

        const expected = [`create ${names.volume(w)}`, `update ${names.domain(w)}`, `update ${names.deployment(w)}`].sort();
        const p = await timed("preview (a disk gone)", () => cli.preview());
        expect(stepList(changed(p))).toEqual(expected);
        const switches = rebuilds().length;
        const u = await timed("up (disk re-created)", () => cli.up());
        expect({ applied: stepList(changed(u)), switched: rebuilds().slice(switches).map((x) => x.target) }).toEqual({ applied: expected, switched: [`root@${ipOf(w)}`] });

        await expectReservedAddress(w);
        await expectNodesRun(3, systems);
        const again = await timed("preview (disk repaired)", () => cli.preview());
        expect(stepList(changed(again))).toEqual([]);
    });

    // Issue 17, must-show 3: the real `nixspark` CLI (node cli/nixspark.js),
    // run inside the bench's namespace like pulumi, against this stack. Last
    // among the steps on this stack's nodes: the tiny guests keep their
    // switched /run/current-system in RAM, so after their reboot here a
    // refresh would see every node to switch again (a NixOS guest keeps it).
    // The verbs that must show something read the outputs through Pulumi; the
    // checks around them use --outputs (the same outputs, one Pulumi call fewer).
    const nixspark = (args: string[], timeoutMs = 10 * 60_000) =>
        run(["ip", "netns", "exec", bench.netns, "node", path.join(REPO, "cli", "nixspark.js"), "--cwd", project.dir, "--stack", stack, ...args], { env: cli.env, timeoutMs, allowFailure: true });
    const outputsFile = () => path.join(project.root, "outputs.json");
    const lines = (t: string) => t.split("\n").filter(Boolean);
    const domStates = async () => Promise.all(nodeNames(3).map(async (n) => (await bench.virsh(["domstate", names.domain(n)])).stdout.trim()));

    test("5e. a VM killed from outside (virsh destroy) shows in status with its watchdog and on_crash; heal starts it again and says so", async () => {
        fs.writeFileSync(outputsFile(), JSON.stringify(await cli.outputs()));
        const victim = "worker-2";
        await bench.virsh(["destroy", names.domain(victim)]);
        const s = await nixspark(["--outputs", outputsFile(), "status", "--json", "--no-ssh", "--timeout", "2"]);
        const vms = JSON.parse(s.stdout).vms as { node: string; state: string; devices: string; onCrash: string }[];
        expect(vms.find((v) => v.node === victim)).toEqual({ node: victim, state: "shut off (destroyed)", devices: "watchdog i6300esb/reset, panic isa", onCrash: "restart" });
        expect(vms.find((v) => v.node === "master")).toEqual({ node: "master", state: "running (booted)", devices: "watchdog i6300esb/reset, panic isa", onCrash: "restart" });
        // --no-units: these guests have no systemd (heal would say so, after waiting for the boot).
        const h = await timed("nixspark heal (1 VM)", () => nixspark(["heal", "--no-units"]));
        expect(h.stdout).toBe(`heal: ${victim}: VM was "shut off", started it\n`);
        expect(h.code).toBe(0);
        const again = await nixspark(["--outputs", outputsFile(), "heal", "--no-units"]);
        expect(again.stdout).toBe("heal: nothing to do: all 4 VM(s) run\n");
        expect(await domStates()).toEqual(nodeNames(3).map(() => "running"));
    });

    test("5f. nixspark stop leaves every VM shut off and pulumi preview unchanged (heal leaves a stopped stack alone); start brings them back", async () => {
        const uuids = await Promise.all(nodeNames(3).map(async (n) => (await bench.virsh(["domuuid", names.domain(n)])).stdout.trim()));
        // (worker-2 may still be booting from 5e: stop presses its power button again until it listens.)
        const stop = await timed("nixspark stop (4 VMs)", () => nixspark(["stop", "--timeout", "180"]));
        expect(stop.stderr).toMatch(/stop: worker-1: shutting down[\s\S]*stop: master: shutting down/);
        expect(stop.stderr).toContain("stop: all 4 VM(s) are shut off");
        expect(stop.code).toBe(0);
        expect(await domStates()).toEqual(nodeNames(3).map(() => "shut off"));
        const p = await timed("preview (VMs stopped)", () => cli.preview());
        expect(stepList(changed(p))).toEqual([]);
        const h = await nixspark(["--outputs", outputsFile(), "heal"]);
        expect(h.stdout).toMatch(/^heal: the stack was stopped with `nixspark stop` .*: nothing to do until `nixspark start`\n$/);
        expect(h.code).toBe(0);
        expect(await domStates()).toEqual(nodeNames(3).map(() => "shut off"));
        // The tiny guests run no Spark: start waits for each to answer ssh, not for Spark.
        const start = await timed("nixspark start (4 VMs)", () => nixspark(["start", "--no-spark", "--timeout", "300"]));
        expect(start.stderr).toMatch(/start: master: starting[\s\S]*start: master: answers ssh[\s\S]*start: worker-1: starting/);
        expect(start.stderr).toContain("start: all 4 VM(s) are running and answer ssh");
        expect(start.code).toBe(0);
        expect(await domStates()).toEqual(nodeNames(3).map(() => "running"));
        // The same VMs, at their addresses.
        expect(await Promise.all(nodeNames(3).map(async (n) => (await bench.virsh(["domuuid", names.domain(n)])).stdout.trim()))).toEqual(uuids);
        for (const n of nodeNames(3)) await expectReservedAddress(n);
    });

    test("5g. nixspark exec --workers -- uname -n prints each worker's name once, prefixed; copy then exec cat round-trips a file", async () => {
        const e = await timed("nixspark exec --workers", () => nixspark(["exec", "--workers", "--", "uname", "-n"]));
        expect(lines(e.stdout).sort()).toEqual(nodeNames(3).slice(1).map((n) => `[${n}] ${names.domain(n)}`));
        expect(e.code).toBe(0);
        const src = path.join(project.root, "round-trip.csv");
        fs.writeFileSync(src, "id,word\n1,spark\n");
        const c = await timed("nixspark copy (4 nodes)", () => nixspark(["copy", src, "all:/tmp/round-trip.csv"]));
        expect(c.stderr).toContain("copy: ok on 4 node(s)");
        expect(c.code).toBe(0);
        const r = await nixspark(["--outputs", outputsFile(), "exec", "--", "cat", "/tmp/round-trip.csv"]);
        for (const n of nodeNames(3)) expect(lines(r.stdout).filter((l) => l.startsWith(`[${n}] `))).toEqual([`[${n}] id,word`, `[${n}] 1,spark`]);
        expect(r.code).toBe(0);
    });

    test("6. invalid config in a fresh stack: preview and up fail with the schema's messages and the stack stays empty", async () => {
        const bad = new PulumiCli({ ...cli.opts, stack: `${stack}bad` });
        await bad.stackInit();
        const cfg = tinyStackConfig(bench, project, { workers: 2, cidr: randomCidr() });
        bad.writeStackConfig({ ...cfg, domainType: "xen", workers: { ...(cfg.workers as object), count: -1 } });
        try {
            const p = await timed("preview (invalid config)", () => bad.preview({ allowFailure: true }));
            expect(p.code).not.toBe(0);
            const text = `${p.stdout}\n${p.stderr}\n${p.diagnostics.map((d) => d.message).join("\n")}`;
            expect(text).toContain("invalid stack configuration");
            expect(text).toContain("nixspark:workers.count: expected the number of Spark workers: a whole number from 0 to 250");
            expect(p.diagnostics.map((d) => d.message).join("\n")).toMatch(/nixspark:domainType: expected "kvm" \(hardware virtualization\) or "qemu"/);
            // A user error, not a crash: no stack trace of the program.
            expect(text).not.toMatch(/at (Object\.|async )?\S+ \(.*\.ts:\d+:\d+\)/);

            const u = await bad.up({ allowFailure: true });
            expect(u.code).not.toBe(0);
            expect(u.diagnostics.map((d) => d.message).join("\n")).toContain("nixspark:workers.count: expected the number of Spark workers");
            const left = (await stateUrns(bad)).filter((urn) => !urn.includes("::pulumi:pulumi:Stack::"));
            expect(left).toEqual([]);
            expect((await libvirtObjects()).domains.filter((d) => d.startsWith(`${stack}bad`))).toEqual([]);
        } finally {
            await bad.stackRm();
        }
    });

    test("7. destroy leaves no libvirt object and no GC root", async () => {
        const d = await timed("destroy (1+3 nodes)", () => cli.destroy());
        destroyed = true;
        expect(Object.keys(d.summary)).toEqual(["delete"]);
        expect(await libvirtObjects()).toEqual({ domains: [], networks: [], pools: [], volumes: [] });
        const poolDir = path.join(bench.dir, "images", stack);
        expect(fs.existsSync(poolDir) ? fs.readdirSync(poolDir) : []).toEqual([]);
        const gcroots = path.join(project.dir, ".nixspark", stack, "gcroots");
        expect(fs.existsSync(gcroots) ? fs.readdirSync(gcroots) : []).toEqual([]);
        expect(await stateUrns()).toEqual([]);
    });
});
