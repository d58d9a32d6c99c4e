// What a dynamic resource stores as its provider (`__provider`): a reference
// (providers/codeRef.ts), the provider's name and code version, that the
// dynamic-provider plugin resolves to the project's build in its working
// directory, the project's. Here each reference is serialized as the SDK
// does and loaded as the plugin does (tests/helpers/serialize.ts), in this
// process (the repository's build) or in a child node process whose
// working directory is another project, as the engine starts the plugin.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { codeVersion, providerRef } from "../../providers/codeRef";
import { PROVIDER_MODULES, provider } from "../../providers/registry";
import { clusterSecretProvider } from "../../providers/clusterSecret";
import { deployKeyProvider } from "../../providers/deployKey";
import { volumeProvider } from "../../providers/volume";
import { copyProgram, programBuild } from "../fixtures/e2e-project";
import { REPO } from "../helpers/pulumiCli";
import { roundTrip } from "../helpers/serialize";
import { engineCreate, engineUp, serializeProvider } from "./engineSteps";

const names = Object.keys(PROVIDER_MODULES);
const tmp: string[] = [];
const tmpDir = (prefix: string) => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    tmp.push(d);
    return d;
};

beforeAll(() => {
    // A loaded reference runs the repository's build (as the plugin would): make it this checkout's code.
    programBuild.ensureFresh(REPO, () => undefined);
});
afterAll(() => {
    for (const d of tmp) fs.rmSync(d, { recursive: true, force: true });
});

/** Loads `text` as the plugin does, in a node process working in `cwd`, and calls `method` with `args`. */
function callInPlugin(cwd: string, text: string, method: string, args: unknown[]): { ok?: unknown; error?: string } {
    const script = `
        const text = require("node:fs").readFileSync(process.argv[1], "utf8");
        const p = require(${JSON.stringify(path.join(REPO, "node_modules", "require-from-string"))})(text).handler();
        Promise.resolve().then(() => p[process.argv[2]](...JSON.parse(process.argv[3])))
            .then((ok) => process.stdout.write(JSON.stringify({ ok })), (e) => process.stdout.write(JSON.stringify({ error: e.message })));`;
    const file = path.join(tmpDir("nxs-ref-"), "provider.js");
    fs.writeFileSync(file, text);
    const r = spawnSync(process.execPath, ["-e", script, file, method, JSON.stringify(args)], { cwd, encoding: "utf8", timeout: 120_000 });
    if (r.status !== 0) throw new Error(`node exited ${r.status}: ${r.stderr}`);
    return JSON.parse(r.stdout);
}

describe.each(names)("the %s provider's reference", (name) => {
    const real = provider(name) as unknown as Record<string, unknown>;
    const methods = Object.keys(real).filter((k) => typeof real[k] === "function");

    test("is a few KB with the name and code version, none of the provider's code, and loads back with every method", async () => {
        const text = await serializeProvider(providerRef(name, provider(name)));
        expect(text.length).toBeLessThan(4_000);
        expect(text).toContain(`codeVersion: "${codeVersion(name)}"`);
        expect(codeVersion(name)).toMatch(/^[0-9a-f]{16}$/);
        for (const m of methods) expect(text).not.toContain(String(real[m]).slice(0, 60));
        expect(text).not.toMatch(/require\("@pulumi\/pulumi"\)|require\("zod"\)|@grpc/);
        // The same text every run, else every preview would update everything.
        expect(await serializeProvider(providerRef(name, provider(name)))).toBe(text);
        const loaded = (await roundTrip(providerRef(name, provider(name)))) as unknown as Record<string, unknown>;
        expect(Object.keys(loaded).filter((k) => typeof loaded[k] === "function").sort()).toEqual([...methods].sort());
    });
});

test("the registry gives each resource kind its module's provider", () => {
    expect(provider("Volume")).toBe(volumeProvider);
    expect(provider("ClusterSecret")).toBe(clusterSecretProvider);
    expect(() => provider("Gone")).toThrow("this checkout has no provider named Gone; the stack's state was written by another version of nixspark");
});

describe("a loaded reference in the plugin's place", () => {
    test("runs the build in its working directory: the same answers as the provider itself", async () => {
        const inputs = { uri: "qemu:///system", pool: "dev-pool", name: "dev-master.qcow2", basePath: "/var/lib/nixspark/dev/dev-base-a.qcow2", capacityBytes: 1024 ** 3, domain: "dev-master" };
        const text = await serializeProvider(providerRef("Volume", volumeProvider));
        const inPlugin = callInPlugin(REPO, text, "check", [{}, inputs]);
        expect(inPlugin).toEqual({ ok: JSON.parse(JSON.stringify(await volumeProvider.check!({}, inputs))) });
        expect(inPlugin.ok).toMatchObject({ inputs: { name: "dev-master.qcow2" } });
    });

    test("keeps the DeployKey's stored key in place of a candidate (as the provider does)", async () => {
        const { generateDeployKey } = require("../../cluster/deployKey");
        const a = generateDeployKey("a");
        const b = generateDeployKey("b");
        const loaded = await roundTrip(providerRef("DeployKey", deployKeyProvider));
        const olds = { source: "stack", publicKey: a.publicKey, privateKey: a.privateKey, origin: "new", storedAt: "t1" };
        expect(await loaded.check!(olds, { ...olds, publicKey: b.publicKey, privateKey: b.privateKey, storedAt: "t2" })).toEqual({ inputs: olds, failures: [] });
        expect((await loaded.create!(olds)).outs.fingerprint).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
    });

    test("without a build there: an error that names the directory and the command", async () => {
        const empty = tmpDir("nxs-nobuild-");
        const r = callInPlugin(empty, await serializeProvider(providerRef("Volume", volumeProvider)), "check", [{}, {}]);
        expect(r.error).toContain(`nixspark: cannot load the Volume provider's code from ${path.join(fs.realpathSync(empty), "bin", "providers")}`);
        expect(r.error).toContain("run `npm ci` in the project directory");
    });

    test("after a provider's source changed, rebuilds first: `refresh` and `destroy` run no program, yet never run stale code", async () => {
        const dir = path.join(tmpDir("nxs-stale-"), "project");
        fs.mkdirSync(dir);
        copyProgram(dir);
        const src = path.join(dir, "providers", "clusterSecret.ts");
        const before = fs.readFileSync(src, "utf8");
        const edited = before.replace("generation must be a whole number of at least 1", "EDITED: generation must be at least 1");
        expect(edited).not.toBe(before);
        fs.writeFileSync(src, edited);
        expect(programBuild.staleReason(dir)).toBe(`${path.join("providers", "clusterSecret.ts")} changed`);
        const r = callInPlugin(dir, await serializeProvider(providerRef("ClusterSecret", clusterSecretProvider)), "check", [{}, { generation: 0 }]);
        expect(r.ok).toEqual({ inputs: { generation: 0 }, failures: [{ property: "generation", reason: "EDITED: generation must be at least 1" }] });
        expect(programBuild.staleReason(dir)).toBeUndefined();
    }, 120_000);
});

describe("the code version", () => {
    test("changes exactly for the providers whose modules (or what they require) changed", () => {
        const dir = path.join(tmpDir("nxs-ver-"), "providers");
        fs.cpSync(path.join(REPO, "bin", "providers"), dir, { recursive: true });
        const before = Object.fromEntries(names.map((n) => [n, codeVersion(n, dir)]));
        expect(before).toEqual(Object.fromEntries(names.map((n) => [n, codeVersion(n, path.join(REPO, "bin", "providers"))])));
        // virsh.js: required by the libvirt providers (directly or through a helper), not by the secret or the key.
        expect(fs.readFileSync(path.join(dir, "volume.js"), "utf8")).toContain('require("./virsh")');
        fs.appendFileSync(path.join(dir, "virsh.js"), "\n// changed\n");
        const after = Object.fromEntries(names.map((n) => [n, codeVersion(n, dir)]));
        const changed = names.filter((n) => after[n] !== before[n]).sort();
        expect(changed).toEqual(expect.arrayContaining(["BaseVolume", "Domain", "Network", "StoragePool", "Volume"]));
        expect(changed).not.toContain("ClusterSecret");
        expect(changed).not.toContain("DeployKey");
        expect(() => codeVersion("Gone", dir)).toThrow(`nixspark: no module of a provider named Gone in ${dir}`);
    });

    test("a state written with the provider serialized by value, or with an older version, gets an update that keeps its outputs", async () => {
        const ref = await serializeProvider(providerRef("ClusterSecret", clusterSecretProvider));
        const byValue = await serializeProvider(clusterSecretProvider);
        const created = await engineCreate(byValue, { generation: 1 });
        const up = await engineUp(created, ref, { generation: 1 });
        expect(up.step).toBe("update");
        expect(up.stored.state).toEqual({ ...created.state, __provider: ref });
        expect((await engineUp(up.stored, ref, { generation: 1 })).step).toBe("same");
        const older = ref.replace(/codeVersion: "[0-9a-f]{16}"/, 'codeVersion: "0000000000000000"');
        expect(older).not.toBe(ref);
        const again = await engineUp({ ...up.stored, state: { ...up.stored.state, __provider: older } }, ref, { generation: 1 });
        expect(again.step).toBe("update");
        expect(again.stored.state.value).toBe(created.state.value);
    });
});
