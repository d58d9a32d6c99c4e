// Stored provider code is upgraded. The engine keeps each resource's
// serialized provider in state and a "same" step keeps the OLD code, so a fix
// to read or delete would never reach resources created before it. Every
// provider's diff therefore answers an update (never a replace) when only the
// code differs, and that update keeps the outputs and stores the new code.
// Here for every provider, as the engine calls them (serialized, loaded back);
// the libvirt providers' updates and a delete through the upgraded code run
// against the real libvirtd in tests/integration/libvirtProviders.test.ts.
import { domainProvider } from "../../providers/domain";
import { networkProvider } from "../../providers/network";
import { nixImageProvider } from "../../providers/nixImage";
import { nixosDeploymentProvider } from "../../providers/nixosDeployment";
import { poolProvider } from "../../providers/pool";
import { sparkHealthProvider } from "../../providers/sparkHealth";
import { volumeProvider } from "../../providers/volume";
import { baseVolumeProvider } from "../../providers/baseVolume";
import { engineUp, loadProvider, serializeProvider } from "./engineSteps";

const SYS = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-dev-worker-24.11";
const hosts = [{ mac: "02:00:00:00:00:01", ip: "10.77.0.10", name: "dev-master" }];

// For each provider: its inputs and what state holds after a create. Values
// that would make an update do real work point at loopback ports nobody
// listens on, so a wrong "real" update fails instead of reaching anything.
const cases: Record<string, { provider: object; inputs: Record<string, any>; outputs: Record<string, any>; noIoUpdate: boolean }> = {
    pool: {
        provider: poolProvider,
        inputs: { uri: "qemu:///system", name: "dev-pool", path: "/var/lib/nixspark/dev" },
        outputs: { active: true, autostart: true },
        noIoUpdate: false,
    },
    volume: {
        provider: volumeProvider,
        inputs: { uri: "qemu:///system", pool: "dev-pool", name: "dev-master.qcow2", basePath: "/var/lib/nixspark/dev/dev-base-aaaaaaaaaaaa.qcow2", capacityBytes: 1024 ** 3, domain: "dev-master", stateDir: "/p/.nixspark/dev" },
        outputs: { path: "/var/lib/nixspark/dev/dev-master.qcow2", backingPath: "/var/lib/nixspark/dev/dev-base-aaaaaaaaaaaa.qcow2" },
        noIoUpdate: true,
    },
    baseVolume: {
        provider: baseVolumeProvider,
        inputs: { uri: "qemu:///system", pool: "dev-pool", name: "dev-base-aaaaaaaaaaaa.qcow2", namePrefix: "dev-base-", sourcePath: "/nix/store/a/nixos.qcow2", stateDir: "/p/.nixspark/dev" },
        outputs: { path: "/var/lib/nixspark/dev/dev-base-aaaaaaaaaaaa.qcow2", capacityBytes: 4 * 1024 ** 3 },
        noIoUpdate: true,
    },
    network: {
        provider: networkProvider,
        inputs: { uri: "qemu:///system", name: "dev-net", bridge: "nxs-dev", gateway: "10.77.0.1", netmask: "255.255.255.0", dhcpStart: "10.77.0.192", dhcpEnd: "10.77.0.254", hosts, autostart: true },
        outputs: { uuid: "u-1", active: true },
        noIoUpdate: false,
    },
    domain: {
        provider: domainProvider,
        inputs: {
            uri: "qemu:///system", name: "dev-master", domainType: "qemu", vcpus: 1, memoryMiB: 1024, diskPath: "/p/dev-master.qcow2", diskGiB: 10,
            mac: "02:00:00:00:00:01", network: "dev-net", consoleLog: "/l/dev-master.log", autostart: true, hostname: "dev-master", shutdownTimeoutSeconds: 60,
        },
        outputs: { uuid: "d-1", state: "running", pendingRestart: false },
        noIoUpdate: false,
    },
    nixImage: {
        provider: nixImageProvider,
        inputs: { flake: "path:/p/nix", attribute: "packages.x86_64-linux.base-image", drvPath: "/nix/store/bbbb-nixos-disk-image.drv", gcRootDir: "/p/.nixspark/dev/gcroots", buildTimeoutSeconds: 1 },
        outputs: { storePath: "/nix/store/cccc-nixos-disk-image", imagePath: "/nix/store/cccc-nixos-disk-image/nixos.qcow2", sizeBytes: 1, gcRoot: "/p/.nixspark/dev/gcroots/cccc-nixos-disk-image" },
        noIoUpdate: true,
    },
    nixosDeployment: {
        provider: nixosDeploymentProvider,
        inputs: {
            node: "worker-1", flake: "path:./nix", configuration: "dev-worker", host: "127.0.0.1", machineId: "d-2", sshUser: "deploy", sshPort: 9,
            identityFile: "/nonexistent/id", knownHostsFile: "/nonexistent/known_hosts", expectedSystem: SYS, useSudo: true, rebuildCommand: "false",
            flavour: "legacy", sshWaitSeconds: 1, switchTimeoutSeconds: 10,
        },
        outputs: { currentSystem: SYS, flavourUsed: "legacy" },
        noIoUpdate: true,
    },
    sparkHealth: {
        provider: sparkHealthProvider,
        inputs: { masterUrl: "spark://127.0.0.1:9", webUiUrl: "http://127.0.0.1:9", expectedWorkers: [{ name: "worker-1", ip: "10.77.0.11" }], timeoutSeconds: 1, trigger: { nodes: ["worker-1=10.77.0.11"] } },
        outputs: { aliveWorkers: 1, totalCores: 2, totalMemoryMiB: 2048, checkedAt: "2026-01-01T00:00:00Z", masterStatus: "ALIVE", workers: [] },
        noIoUpdate: true,
    },
};

describe.each(Object.entries(cases))("%s: new provider code", (_name, c) => {
    let oldCode: string;
    let newCode: string;
    beforeAll(async () => {
        // "Old" code: the same provider with one method changed, serialized as the SDK stores it.
        const p = c.provider as Record<string, unknown>;
        oldCode = await serializeProvider({ ...p, read: async () => { throw new Error("old code"); } });
        newCode = await serializeProvider(c.provider);
    });
    const stored = () => ({ id: "x", state: { ...c.inputs, ...c.outputs, __provider: oldCode } });

    test("serializing the same code twice gives the same text (else every preview would update everything)", async () => {
        expect(await serializeProvider(c.provider)).toBe(newCode);
        expect(newCode).not.toBe(oldCode);
    });

    test("diff by the new code: an update, never a replace; the same code: no change", async () => {
        const p = loadProvider(newCode);
        const d = await p.diff!("x", stored().state, { ...c.inputs, __provider: newCode });
        expect(d).toMatchObject({ changes: true, replaces: [] });
        const same = await p.diff!("x", { ...stored().state, __provider: newCode }, { ...c.inputs, __provider: newCode });
        expect(same.changes).toBe(false);
    });

});

// Pool, network and domain updates talk to libvirt: see the integration test.
describe.each(Object.entries(cases).filter(([, c]) => c.noIoUpdate))("%s: the update for new code", (_name, c) => {
    test("keeps the outputs without any I/O, and the engine then stores the new code", async () => {
        const p = c.provider as Record<string, unknown>;
        const oldCode = await serializeProvider({ ...p, read: async () => { throw new Error("old code"); } });
        const newCode = await serializeProvider(c.provider);
        const stored = { id: "x", state: { ...c.inputs, ...c.outputs, __provider: oldCode } };
        const up = await engineUp(stored, newCode, c.inputs);
        expect(up.step).toBe("update");
        const { __provider: _old, ...kept } = stored.state;
        expect(up.updateOuts).toEqual(kept);
        expect(up.stored.state.__provider).toBe(newCode);
        // And now a second `up` with the same code is a "same" step.
        expect((await engineUp(up.stored, newCode, c.inputs)).step).toBe("same");
    }, 30_000);
});
