// Pure decisions of the NixosDeployment provider: diff (update vs no-op,
// never replace), input checks, and the exact nixos-rebuild argv/env for both
// generations. No SSH here; see nixosDeployment.switch.test.ts for that.
import { NixosDeploymentInputs, nixosDeploymentProvider } from "../../providers/nixosDeployment";
import { deploymentDiff, switchKeys } from "../../providers/deployment/diff";
import { checkInputs, withDefaults } from "../../providers/deployment/inputs";
import { rebuildArgv, rebuildEnv } from "../../providers/deployment/rebuild";
import { roundTrip } from "../helpers/serialize";

const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"; // pulumi.runtime.unknownValue

const SYS_A = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-dev-worker-24.11";
const SYS_B = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-dev-worker-24.11";

const inputs: NixosDeploymentInputs = {
    node: "worker-1",
    flake: "path:./nix",
    configuration: "dev-worker",
    host: "10.77.0.11",
    sshUser: "deploy",
    sshPort: 22,
    identityFile: "/home/me/.ssh/id_ed25519",
    knownHostsFile: "/home/me/.nixspark/dev/known_hosts",
    expectedSystem: SYS_A,
    useSudo: true,
    rebuildCommand: "nixos-rebuild",
    flavour: "auto",
    sshWaitSeconds: 300,
    switchTimeoutSeconds: 3600,
};
/** What a create returned: all inputs plus what the node runs. */
const outs = { ...inputs, currentSystem: SYS_A, flavourUsed: "legacy", __provider: "serialized-1" };

describe("diff", () => {
    test("nothing changed: no-op", () => {
        expect(deploymentDiff(outs, { ...inputs, __provider: "serialized-2" })).toMatchObject({ changes: false, replaces: [] });
    });

    test("a new expected system (a Spark setting, a Python package) is an in-place update, never a replace", () => {
        const d = deploymentDiff(outs, { ...inputs, expectedSystem: SYS_B });
        expect(d).toEqual({ changes: true, replaces: [], deleteBeforeReplace: false, reasons: ["expectedSystem changed", `the node runs ${SYS_A}, not the expected system`] });
    });

    test.each([
        ["configuration", { configuration: "dev-master" }],
        ["host", { host: "10.77.0.12" }],
    ])("%s changed: update", (_k, change) => {
        expect(deploymentDiff(outs, { ...inputs, ...change })).toMatchObject({ changes: true, replaces: [] });
    });

    test.each([
        ["sshPort", { sshPort: 2222 }],
        ["sshUser", { sshUser: "root" }],
        ["identityFile", { identityFile: "/other/key" }],
        ["knownHostsFile", { knownHostsFile: "/other/known_hosts" }],
        ["sshWaitSeconds", { sshWaitSeconds: 10 }],
        ["switchTimeoutSeconds", { switchTimeoutSeconds: 60 }],
        ["useSudo", { useSudo: false }],
        ["buildHost", { buildHost: "builder.example" }],
        ["rebuildCommand", { rebuildCommand: "/opt/nixos-rebuild" }],
        ["flavour", { flavour: "ng" }],
        ["node (a message name)", { node: "w1" }],
        // A new snapshot of the flake (any file under nix/ changed) that gives the same system.
        ["flake", { flake: "path:/nix/store/0v1s0xbb5vs0zkmw7mqxzs4d1pq7w2ja-source" }],
    ])("only %s changed: no changes on the VM", (_k, change) => {
        expect(deploymentDiff(outs, { ...inputs, ...change })).toMatchObject({ changes: false, replaces: [] });
    });

    test("a new VM at the same address (new machineId) must be deployed again", () => {
        const withId = { ...outs, machineId: "uuid-1" };
        expect(deploymentDiff(withId, { ...inputs, machineId: "uuid-1" }).changes).toBe(false);
        // A replace, delete first: the old worker is decommissioned while its VM still runs, the new VM deployed afresh.
        expect(deploymentDiff(withId, { ...inputs, machineId: "uuid-2" })).toMatchObject({ changes: true, replaces: ["machineId"], deleteBeforeReplace: true, reasons: ["machineId changed"] });
        // How the engine asks when it plans the Domain's replacement.
        expect(deploymentDiff(withId, { ...inputs, machineId: UNKNOWN })).toMatchObject({ changes: true, replaces: ["machineId"], deleteBeforeReplace: true });
        // State from before machineId existed: deployed again, not replaced.
        expect(deploymentDiff(outs, { ...inputs, machineId: "uuid-2" })).toMatchObject({ changes: true, replaces: [], deleteBeforeReplace: false });
    });

    test("a VM that a refresh found gone (vmGone) is re-created by up: preview shows its deployment replaced, though the VM's identity is the same", () => {
        const vm = { uri: "qemu:///system", domain: "dev-worker-1", diskPath: "/pool/dev-worker-1.qcow2", mac: "52:54:00:00:00:01", vcpus: 2, memoryMiB: 2048, shutdownTimeoutSeconds: 60 };
        const withId = { ...outs, machineId: "uuid-1", vm };
        // Its Domain only updated (a restart): the UUID is unknown in preview too, but it is the same VM.
        expect(deploymentDiff({ ...withId, vmGone: false }, { ...inputs, vm, machineId: UNKNOWN })).toMatchObject({ replaces: [] });
        expect(deploymentDiff({ ...withId, vmGone: true }, { ...inputs, vm, machineId: UNKNOWN })).toMatchObject({ changes: true, replaces: ["machineId"], deleteBeforeReplace: true });
    });

    test("an updated Domain (its UUID unknown in preview, the same VM identity, not gone) is no reason to switch: the deployment stays as it is", () => {
        const vm = { uri: "qemu:///system", domain: "dev-worker-1", diskPath: "/pool/dev-worker-1.qcow2", mac: "52:54:00:00:00:01", vcpus: 2, memoryMiB: 2048, shutdownTimeoutSeconds: 60 };
        const withId = { ...outs, machineId: "uuid-1", vm };
        // E.g. a Domain whose interface is plugged back into a re-created network, or that is started again: same VM, same UUID after apply.
        expect(deploymentDiff(withId, { ...inputs, vm, machineId: UNKNOWN })).toMatchObject({ changes: false, replaces: [] });
        expect(deploymentDiff({ ...withId, vmGone: false }, { ...inputs, vm, machineId: UNKNOWN })).toMatchObject({ changes: false, replaces: [] });
        // Without a recorded identity an unknown UUID still says nothing for sure: a new VM.
        expect(deploymentDiff({ ...outs, machineId: "uuid-1" }, { ...inputs, machineId: UNKNOWN })).toMatchObject({ changes: true, replaces: ["machineId"] });
    });

    describe("a node's disk re-created (vm.diskId: the identity its Volume gets at create)", () => {
        const vm = { uri: "qemu:///system", domain: "dev-worker-1", diskPath: "/pool/dev-worker-1.qcow2", mac: "52:54:00:00:00:01", vcpus: 2, memoryMiB: 2048, shutdownTimeoutSeconds: 60, diskId: "disk-1" };
        const withId = { ...outs, machineId: "uuid-1", vm };
        const reason = "the node's disk was re-created (a new Volume): its role is applied again, from a first contact";

        test("preview after a refresh that found the disk gone (diskGone; the new Volume's diskId unknown): an update that switches, not a replace", () => {
            expect(deploymentDiff({ ...withId, diskGone: true }, { ...inputs, machineId: UNKNOWN, vm: { ...vm, diskId: UNKNOWN } })).toEqual({
                changes: true,
                replaces: [],
                deleteBeforeReplace: false,
                reasons: [reason],
            });
        });
        test("at apply: another diskId than the one it deployed onto re-applies the role; the same one does not", () => {
            expect(deploymentDiff({ ...withId, diskGone: true }, { ...inputs, machineId: "uuid-1", vm: { ...vm, diskId: "disk-2" } })).toMatchObject({ changes: true, replaces: [], reasons: [reason] });
            expect(deploymentDiff(withId, { ...inputs, machineId: "uuid-1", vm: { ...vm, diskId: "disk-2" } })).toMatchObject({ changes: true, reasons: [reason] });
            // A refresh that could not find the disk (a stopped pool) while the Volume kept it: nothing to do.
            expect(deploymentDiff({ ...withId, diskGone: true }, { ...inputs, machineId: "uuid-1", vm })).toMatchObject({ changes: false });
        });
        test("a Volume only updated (a bigger disk, new provider code: diskId unknown in preview) with the disk there: no change", () => {
            expect(deploymentDiff({ ...withId, diskGone: false }, { ...inputs, machineId: "uuid-1", vm: { ...vm, diskId: UNKNOWN } })).toMatchObject({ changes: false });
            expect(deploymentDiff(withId, { ...inputs, machineId: "uuid-1", vm: { ...vm, diskId: UNKNOWN } })).toMatchObject({ changes: false });
        });
        test("state from before diskId: a Volume that gets one is no change, unless a refresh found the disk gone", () => {
            const { diskId: _d, ...older } = vm;
            expect(deploymentDiff({ ...withId, vm: older }, { ...inputs, machineId: "uuid-1", vm })).toMatchObject({ changes: false });
            expect(deploymentDiff({ ...withId, vm: older, diskGone: true }, { ...inputs, machineId: "uuid-1", vm })).toMatchObject({ changes: true, reasons: [reason] });
            expect(deploymentDiff({ ...withId, vm: older, diskGone: true }, { ...inputs, machineId: "uuid-1", vm: older })).toMatchObject({ changes: false });
        });
    });

    test("a new VM size is an update (the VM restarts in its rollout turn, before the switch); a VM recorded before `vm` existed is not", () => {
        const vm = { uri: "qemu:///system", domain: "dev-worker-1", vcpus: 2, memoryMiB: 2048, shutdownTimeoutSeconds: 60 };
        expect(deploymentDiff({ ...outs, vm }, { ...inputs, vm }).changes).toBe(false);
        expect(deploymentDiff({ ...outs, vm }, { ...inputs, vm: { ...vm, shutdownTimeoutSeconds: 10 } }).changes).toBe(false);
        expect(deploymentDiff({ ...outs, vm }, { ...inputs, vm: { ...vm, memoryMiB: 4096 } })).toMatchObject({
            changes: true,
            replaces: [],
            reasons: ["the VM's size changed (2048 -> 4096 MiB, 2 -> 2 vCPUs): it restarts before the switch"],
        });
        expect(deploymentDiff({ ...outs, vm }, { ...inputs, vm: { ...vm, vcpus: 4 } }).changes).toBe(true);
        expect(deploymentDiff(outs, { ...inputs, vm: { ...vm, vcpus: 4 } }).changes).toBe(false);
        expect(checkInputs(withDefaults({ ...inputs, vm }))).toEqual([]);
        expect(checkInputs(withDefaults({ ...inputs, vm: { ...vm, memoryMiB: -1 } })).map((f) => f.property)).toEqual(["vm"]);
    });

    test("preview says a replaced worker is decommissioned first", async () => {
        const said: string[] = [];
        const spy = jest.spyOn(console, "error").mockImplementation((m: unknown) => void said.push(String(m)));
        try {
            const spark = { role: "worker", webUiUrl: "http://10.77.0.10:8080", address: "10.77.0.11", unit: "spark-worker", timeoutSeconds: 60, decommissionTimeoutSeconds: 45 };
            const r = await nixosDeploymentProvider.diff!("worker-1@10.77.0.11", { ...outs, machineId: "uuid-1", spark }, { ...inputs, machineId: UNKNOWN, spark });
            expect(r).toMatchObject({ changes: true, replaces: ["machineId"], deleteBeforeReplace: true });
        } finally {
            spy.mockRestore();
        }
        expect(said).toContain("[worker-1] its VM will be replaced: the worker is decommissioned through Spark first (its executors get up to 45 s, deploy.decommissionTimeoutSeconds), then the new VM is deployed");
    });

    test("unknown during preview: update", () => {
        for (const k of switchKeys()) {
            expect(deploymentDiff(outs, { ...inputs, [k]: UNKNOWN })).toMatchObject({ changes: true, reasons: [`${k} is not known until apply`] });
        }
    });

    test("refresh found the node running something else: update switches it back", () => {
        expect(deploymentDiff({ ...outs, currentSystem: SYS_B }, { ...inputs })).toMatchObject({ changes: true, reasons: [`the node runs ${SYS_B}, not the expected system`] });
    });

    test("state written before currentSystem existed does not force an update", () => {
        const { currentSystem: _c, ...older } = outs;
        expect(deploymentDiff(older, { ...inputs }).changes).toBe(false);
    });

    test("the provider's diff answers `changes` and defaults missing optionals", async () => {
        const { sshPort: _p, useSudo: _u, flavour: _f, ...sparse } = inputs;
        await expect(nixosDeploymentProvider.diff!("worker-1@10.77.0.11", outs, { ...sparse, __provider: "serialized-1" })).resolves.toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
    });

    test("new provider code alone is an update (never a replace) that switches nothing", async () => {
        await expect(nixosDeploymentProvider.diff!("worker-1@10.77.0.11", outs, { ...inputs, __provider: "serialized-2" })).resolves.toEqual({ changes: true, replaces: [], deleteBeforeReplace: false });
        // No SSH, no nixos-rebuild: the outputs are kept. (A loopback port
        // nobody listens on: a deploy attempt would fail, not reach anyone.)
        const here = { ...outs, host: "127.0.0.1", sshPort: 9 };
        const r = await nixosDeploymentProvider.update!("worker-1@127.0.0.1", here, { ...inputs, host: "127.0.0.1", sshPort: 9, sshWaitSeconds: 1, __provider: "serialized-2" });
        const { __provider: _code, ...kept } = here;
        expect(r.outs).toEqual(kept);
    });
});

describe("check", () => {
    test("valid inputs pass; unknowns pass", () => {
        expect(checkInputs(withDefaults({ ...inputs }))).toEqual([]);
        expect(checkInputs(withDefaults({ ...inputs, expectedSystem: UNKNOWN, host: UNKNOWN }))).toEqual([]);
    });

    test("problems name the input and say what is expected", () => {
        const f = checkInputs(withDefaults({ ...inputs, expectedSystem: `${SYS_A}.drv`, flake: "path:./nix#x", sshPort: 0, flavour: "new", configuration: "a b" }));
        expect(f.map((x) => x.property).sort()).toEqual(["configuration", "expectedSystem", "flake", "flavour", "sshPort"]);
        expect(f.find((x) => x.property === "expectedSystem")?.reason).toMatch(/toplevel OUT path .*outPath.*not a \.drv/);
    });

    test("defaults fill optional inputs", async () => {
        const { sshPort: _p, useSudo: _u, rebuildCommand: _r, flavour: _f, sshWaitSeconds: _w, switchTimeoutSeconds: _t, ...required } = inputs;
        const r = await nixosDeploymentProvider.check!({}, required);
        expect(r.failures).toEqual([]);
        expect(r.inputs).toMatchObject({ sshPort: 22, useSudo: true, rebuildCommand: "nixos-rebuild", flavour: "auto", sshWaitSeconds: 300, switchTimeoutSeconds: 3600 });
    });
});

describe("nixos-rebuild argv and environment", () => {
    test("legacy shell script, sudo: --use-remote-sudo", () => {
        expect(rebuildArgv(inputs, "legacy")).toEqual([
            "nixos-rebuild", "switch", "--flake", "path:./nix#dev-worker", "--target-host", "deploy@10.77.0.11", "--use-remote-sudo",
        ]);
    });

    test("nixos-rebuild-ng, sudo: --sudo", () => {
        expect(rebuildArgv(inputs, "ng")).toEqual(["nixos-rebuild", "switch", "--flake", "path:./nix#dev-worker", "--target-host", "deploy@10.77.0.11", "--sudo"]);
    });

    test("no sudo: no privilege flag in either generation", () => {
        for (const f of ["legacy", "ng"] as const) {
            expect(rebuildArgv({ ...inputs, useSudo: false }, f)).toEqual(["nixos-rebuild", "switch", "--flake", "path:./nix#dev-worker", "--target-host", "deploy@10.77.0.11"]);
        }
    });

    test("build host, legacy", () => {
        expect(rebuildArgv({ ...inputs, buildHost: "builder@10.1.0.5" }, "legacy")).toEqual([
            "nixos-rebuild", "switch", "--flake", "path:./nix#dev-worker", "--target-host", "deploy@10.77.0.11", "--build-host", "builder@10.1.0.5", "--use-remote-sudo",
        ]);
    });

    test("build host, ng", () => {
        expect(rebuildArgv({ ...inputs, buildHost: "builder@10.1.0.5" }, "ng")).toEqual([
            "nixos-rebuild", "switch", "--flake", "path:./nix#dev-worker", "--target-host", "deploy@10.77.0.11", "--build-host", "builder@10.1.0.5", "--sudo",
        ]);
    });

    test("rollback: same flags plus --rollback --fast (no re-exec from the new flake)", () => {
        expect(rebuildArgv(inputs, "legacy", { rollback: true })).toEqual([
            "nixos-rebuild", "switch", "--rollback", "--fast", "--flake", "path:./nix#dev-worker", "--target-host", "deploy@10.77.0.11", "--use-remote-sudo",
        ]);
    });

    test("NIX_SSHOPTS carries port, identity, the stack's known-hosts file and strict checking", () => {
        const env = rebuildEnv({ ...inputs, sshPort: 2222 }, { PATH: "/bin" });
        expect(env).toEqual({
            PATH: "/bin",
            NIX_SSHOPTS:
                "-p 2222 -i /home/me/.ssh/id_ed25519 -o IdentitiesOnly=yes -o UserKnownHostsFile=/home/me/.nixspark/dev/known_hosts " +
                "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o HashKnownHosts=no -o BatchMode=yes -o ConnectTimeout=10 " +
                "-o ServerAliveInterval=15 -o ServerAliveCountMax=4 -o LogLevel=ERROR",
        });
    });
});

describe("serialization", () => {
    test("the provider survives serialize -> load -> call", async () => {
        const p = await roundTrip(nixosDeploymentProvider);
        await expect(p.diff!("id", outs, { ...inputs, expectedSystem: SYS_B })).resolves.toEqual({ changes: true, replaces: [], deleteBeforeReplace: false });
        await expect(p.check!({}, { ...inputs, sshPort: -1 })).resolves.toMatchObject({ failures: [{ property: "sshPort" }] });
    });

    test("the serialized provider captures neither @pulumi/pulumi nor zod", async () => {
        const sc = require("@pulumi/pulumi/runtime/closure/serializeClosure");
        const sf = await sc.serializeFunction(() => nixosDeploymentProvider, { allowSecrets: true });
        expect(sf.text).not.toMatch(/require\("@pulumi\/pulumi"\)|require\("zod"\)/);
        expect(sf.text).not.toMatch(/dynamic\.Resource/);
    });
});
