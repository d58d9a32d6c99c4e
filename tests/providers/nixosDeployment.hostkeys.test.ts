// NixosDeployment and SSH reachability: waiting for a VM that is still
// booting (bounded), the per-stack known-hosts file (first contact records the
// key, a replaced VM's new key replaces the stale entry on create, a changed
// key is refused on update), the pinned host keys and the deploy key kept in
// the state (hostKeys, privateKey) and put back into a checkout that lost
// its .nixspark/, and refresh when the node cannot be reached.
// A real sshd in a private network namespace plays the node.
import * as fs from "node:fs";
import * as path from "node:path";
import { NixosDeploymentInputs, NixosDeploymentOutputs, nixosDeploymentProvider } from "../../providers/nixosDeployment";
import { createDeployment, SshTargetEnv } from "../helpers/sshTarget";

jest.setTimeout(90_000);

const BASE = "/nix/store/00000000000000000000000000000000-nixos-system-base-image";
const SYS_A = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-dev-worker-24.11";
const SYS_B = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-dev-worker-24.11";

let env: SshTargetEnv;
let restoreEnv: () => void = () => undefined;
let logged: string[] = [];

beforeAll(async () => {
    env = await SshTargetEnv.create({ startSshd: false });
});
afterAll(async () => {
    await env?.cleanup();
});

beforeEach(() => {
    env.resetNode(BASE);
    env.clearStandinLog();
    env.setSystem("dev-worker", SYS_A);
    restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
    logged = [];
    jest.spyOn(console, "error").mockImplementation((...args: unknown[]) => {
        logged.push(args.map(String).join(" "));
    });
});
afterEach(async () => {
    restoreEnv();
    jest.restoreAllMocks();
    await env.stopSshd();
});

function inputs(over: Partial<NixosDeploymentInputs> = {}): NixosDeploymentInputs {
    return env.deploymentInputs({ useSudo: false, flavour: "legacy", sshWaitSeconds: 30, expectedSystem: SYS_A, ...over });
}

const asRecord = (o: object) => o as unknown as Record<string, unknown>;
const switches = () => env.switches();
const hostPub = () => fs.readFileSync(path.join(env.dir, "host_ed25519.pub"), "utf8").split(" ").slice(0, 2).join(" ");
const knownHosts = () => fs.readFileSync(env.knownHostsFile, "utf8").split("\n").filter((l) => l.trim() !== "");

const create = createDeployment;

describe("waiting for SSH", () => {
    test("a VM whose sshd comes up late: create waits, then records its key and switches", async () => {
        fs.rmSync(env.knownHostsFile, { force: true });
        const started = Date.now();
        const late = new Promise<void>((resolve, reject) => setTimeout(() => env.startSshd().then(resolve, reject), 4_000));
        const outs = await create(inputs());
        await late;
        expect(Date.now() - started).toBeGreaterThanOrEqual(4_000);
        expect(outs.currentSystem).toBe(SYS_A);
        expect(logged.some((l) => /^\[worker-1\] waiting for SSH on root@[\d.]+ port \d+: .*Connection refused/.test(l))).toBe(true);
        expect(logged.some((l) => /SSH on .* answered after \d+ s/.test(l))).toBe(true);
        // First contact recorded exactly the node's key, under ssh's name for a non-22 port.
        expect(knownHosts()).toEqual([`[${env.host}]:${env.port} ${hostPub()}`]);
    });

    test("a VM whose sshd never comes up: a bounded error naming the node, and nixos-rebuild never runs", async () => {
        const started = Date.now();
        await expect(create(inputs({ sshWaitSeconds: 3 }))).rejects.toThrow(
            new RegExp(`^NixosDeployment worker-1 \\(root@${env.host.replace(/\./g, "\\.")}\\): SSH on root@[\\d.]+ port ${env.port} did not answer within 3 s .*Connection refused.*deploy\\.sshWaitSeconds`, "s"),
        );
        expect(Date.now() - started).toBeLessThan(20_000);
        expect(switches()).toEqual([]);
    });
});

describe("host keys", () => {
    test("update refuses a changed host key with a clear error and touches nothing", async () => {
        await env.startSshd();
        const outs = await create(inputs());
        const recorded = knownHosts();
        expect(recorded).toEqual([`[${env.host}]:${env.port} ${hostPub()}`]);

        await env.rotateHostKey(); // the machine at this address now presents another key
        env.setSystem("dev-worker", SYS_B);
        const err = await nixosDeploymentProvider.update!("id", asRecord(outs), asRecord(inputs({ expectedSystem: SYS_B }))).then(() => undefined, (e: Error) => e);
        expect(err?.message).toMatch(/^NixosDeployment worker-1 \(root@[\d.]+\): SSH to root@[\d.]+ port \d+: the SSH host key of [\d.]+:\d+ has CHANGED since this stack recorded it/);
        expect(err?.message).toContain(`ssh-keygen -R '[${env.host}]:${env.port}' -f ${env.knownHostsFile}`);
        expect(err?.message).toMatch(/ssh said: .*(REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed)/);
        expect(knownHosts()).toEqual(recorded); // never silently accepted
        expect(switches()).toHaveLength(1); // only the create's
        expect(env.currentSystem()).toBe(SYS_A);
    });

    test("create (a replaced domain: same address, new key) replaces the stale entry", async () => {
        await env.startSshd();
        await create(inputs());
        const old = knownHosts();
        await env.rotateHostKey();
        env.resetNode(BASE); // a fresh VM
        const outs = await create(inputs());
        expect(outs.currentSystem).toBe(SYS_A);
        const now = knownHosts();
        expect(now).toEqual([`[${env.host}]:${env.port} ${hostPub()}`]);
        expect(now).not.toEqual(old);
        expect(fs.readdirSync(path.dirname(env.knownHostsFile)).sort()).toEqual(["known_hosts"]); // no lock or .old left behind
    });

    test("update to a new VM at the same address (new machineId: a domain brought back by `up`) records its new key and deploys it", async () => {
        await env.startSshd();
        const outs = await create(inputs({ machineId: "uuid-old" }));
        const old = knownHosts();
        await env.rotateHostKey();
        env.resetNode(BASE); // the recreated VM boots the bare image
        const r = await nixosDeploymentProvider.update!("id", asRecord(outs), asRecord(inputs({ machineId: "uuid-new" })));
        expect(r.outs).toMatchObject({ machineId: "uuid-new", currentSystem: SYS_A });
        expect(env.currentSystem()).toBe(SYS_A);
        expect(knownHosts()).toEqual([`[${env.host}]:${env.port} ${hostPub()}`]);
        expect(knownHosts()).not.toEqual(old);
        // The same machine again: a changed key is still refused.
        await env.rotateHostKey();
        await expect(nixosDeploymentProvider.update!("id", asRecord(r.outs as NixosDeploymentOutputs), asRecord(inputs({ machineId: "uuid-new", expectedSystem: SYS_B })))).rejects.toThrow(/has CHANGED/);
    });

    test("update refuses a host whose key this stack never recorded (neither its known-hosts file nor its state)", async () => {
        await env.startSshd();
        const outs = await create(inputs());
        fs.writeFileSync(env.knownHostsFile, ""); // the file was lost, and the state is from before hostKeys
        await expect(nixosDeploymentProvider.update!("id", asRecord({ ...outs, hostKeys: undefined }), asRecord(inputs({ expectedSystem: SYS_B })))).rejects.toThrow(
            /no SSH host key for [\d.]+:\d+ is recorded in this stack's known-hosts file .*, nor pinned in the stack's state/,
        );
        expect(knownHosts()).toEqual([]);
    });

    test("an update that moves the deployment to a new address records that address's key on first contact", async () => {
        await env.startSshd();
        const outs = await create(inputs());
        // Pretend the deployment used to point elsewhere; this address is new to it.
        fs.writeFileSync(env.knownHostsFile, "");
        const r = await nixosDeploymentProvider.update!("id", asRecord({ ...outs, host: "10.255.255.254" }), asRecord(inputs()));
        expect(r.outs).toMatchObject({ host: env.host, currentSystem: SYS_A });
        expect(knownHosts()).toEqual([`[${env.host}]:${env.port} ${hostPub()}`]);
    });
});

describe("the state is the truth: .nixspark/ is a cache", () => {
    /** A checkout without .nixspark/: the stack's files named where nothing exists yet. */
    function freshCheckout() {
        const dir = fs.mkdtempSync(path.join(env.dir, "checkout-"));
        return { identityFile: path.join(dir, ".nixspark", "dev", "deploy_ed25519"), knownHostsFile: path.join(dir, ".nixspark", "dev", "known_hosts") };
    }
    const deployKey = () => fs.readFileSync(env.identityFile, "utf8");

    test("create records the pinned host key as an output", async () => {
        await env.startSshd();
        const outs = await create(inputs());
        expect(outs.hostKeys).toEqual([`[${env.host}]:${env.port} ${hostPub()}`]);
        expect(outs.hostKeys).toEqual(knownHosts());
    });

    test("update after the known-hosts file was lost: the key pinned in the state goes back into the file, and the node switches", async () => {
        await env.startSshd();
        const outs = await create(inputs());
        fs.rmSync(env.knownHostsFile);
        env.setSystem("dev-worker", SYS_B);
        const r = await nixosDeploymentProvider.update!("id", asRecord(outs), asRecord(inputs({ expectedSystem: SYS_B })));
        expect(r.outs).toMatchObject({ currentSystem: SYS_B, hostKeys: outs.hostKeys });
        expect(knownHosts()).toEqual(outs.hostKeys);
        expect(logged.some((l) => /put its pinned host key from the Pulumi state back into /.test(l))).toBe(true);
    });

    test("the state's key never overrides an entry the file has: a key the user accepted by hand is used, and recorded", async () => {
        await env.startSshd();
        const outs = await create(inputs());
        await env.rotateHostKey();
        fs.writeFileSync(env.knownHostsFile, `[${env.host}]:${env.port} ${hostPub()}\n`); // the user accepted the new key by hand
        env.setSystem("dev-worker", SYS_B);
        const r = await nixosDeploymentProvider.update!("id", asRecord(outs), asRecord(inputs({ expectedSystem: SYS_B })));
        // ... and the deployment records what the file says.
        expect((r.outs as NixosDeploymentOutputs).hostKeys).toEqual([`[${env.host}]:${env.port} ${hostPub()}`]);
        expect((r.outs as NixosDeploymentOutputs).hostKeys).not.toEqual(outs.hostKeys);
    });

    test("refresh in a checkout without .nixspark/ (it runs before any program): the deploy key and the pinned host key come from the state", async () => {
        await env.startSshd();
        const outs = await create(inputs({ privateKey: deployKey() }));
        const elsewhere = freshCheckout();
        const r = await nixosDeploymentProvider.read!("worker-1@x", asRecord({ ...outs, ...elsewhere }));
        expect(logged.filter((l) => /could not ask/.test(l))).toEqual([]);
        expect(r.props).toMatchObject({ currentSystem: SYS_A, hostKeys: outs.hostKeys });
        expect(fs.readFileSync(elsewhere.identityFile, "utf8")).toBe(deployKey());
        expect(fs.statSync(elsewhere.identityFile).mode & 0o777).toBe(0o600);
        expect(fs.statSync(path.dirname(elsewhere.identityFile)).mode & 0o777).toBe(0o700);
        expect(fs.readFileSync(elsewhere.knownHostsFile, "utf8").trim().split("\n")).toEqual(outs.hostKeys);
        expect(fs.readdirSync(path.dirname(elsewhere.identityFile)).sort()).toEqual(["deploy_ed25519", "known_hosts"]); // no lock left
    });

    test("update in a checkout without .nixspark/: the same, then the switch", async () => {
        await env.startSshd();
        const outs = await create(inputs({ privateKey: deployKey() }));
        const elsewhere = freshCheckout();
        env.setSystem("dev-worker", SYS_B);
        const r = await nixosDeploymentProvider.update!("id", asRecord(outs), asRecord(inputs({ expectedSystem: SYS_B, privateKey: deployKey(), ...elsewhere })));
        expect(r.outs).toMatchObject({ currentSystem: SYS_B, hostKeys: outs.hostKeys, ...elsewhere });
        expect(env.currentSystem()).toBe(SYS_B);
    });

    test("new provider code: the update keeps the outputs and takes how to reach the node from the inputs; a state from before hostKeys gets them at the next refresh", async () => {
        await env.startSshd();
        const outs = await create(inputs());
        const { hostKeys: _none, ...older } = asRecord(outs);
        const r = await nixosDeploymentProvider.update!("id", { ...older, __provider: "old code" }, { ...asRecord(inputs({ privateKey: deployKey() })), __provider: "new code" });
        expect(r.outs).toEqual({ ...older, privateKey: deployKey() });
        expect(switches()).toHaveLength(1); // the create's only
        const refreshed = await nixosDeploymentProvider.read!("worker-1@x", r.outs as Record<string, unknown>);
        expect(refreshed.props).toMatchObject({ currentSystem: SYS_A, hostKeys: outs.hostKeys });
    });
});

describe("refresh", () => {
    test("an unreachable node keeps the recorded state, with a note", async () => {
        await env.startSshd();
        const outs = await create(inputs());
        await env.stopSshd();
        const r = await nixosDeploymentProvider.read!("worker-1@x", asRecord(outs));
        expect(r).toEqual({ id: "worker-1@x", props: asRecord(outs) });
        expect(logged.some((l) => /^\[worker-1\] refresh: could not ask the node which system it runs, keeping the recorded state: .*Connection refused/.test(l))).toBe(true);
    });
});
