// The stack's own deploy key: a fresh stack needs no SSH key of the user's,
// the key lives in the Pulumi state (DeployKey, private half a secret), and
// .nixspark/<stack>/deploy_ed25519 is its cache, which may be lost at any
// time. Under Pulumi's mocks the DeployKey's outputs are what the engine
// would answer: with no key in the state, the candidate (a create); with
// one, the state's key (check puts it in the candidate's place: a "same").
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { execFileSync } from "node:child_process";
import * as pulumi from "@pulumi/pulumi";
import { parseConfig } from "../../cluster/config";
import { buildTopology } from "../../cluster/topology";
import { nixStackParams } from "../../cluster/nixParams";
import { generateDeployKey, readKeyFile, resolveSsh, settleDeployKey, stackDeployKey } from "../../cluster/stackConfig";
import { checkDeployKey, deployKeyOutputs, deployKeyProvider, keepStateKey, openSshPublicBlob } from "../../providers/deployKey";
import { ensureKeyFile } from "../../providers/keyFile";

/** What the state holds for the DeployKey (its outputs), or undefined for a stack without one. */
let stored: Record<string, unknown> | undefined;
let registered: Record<string, unknown>[] = [];

function useMocks(preview: boolean) {
    pulumi.runtime.setMocks(
        {
            newResource(args: pulumi.runtime.MockResourceArgs) {
                if (args.type !== "pulumi-nodejs:dynamic/nixspark:DeployKey") return { id: `${args.name}-id`, state: args.inputs };
                registered.push(args.inputs);
                // The engine: check (the state's key wins), then a create's outputs or the state's.
                const state = stored ? keepStateKey(stored, args.inputs) : deployKeyOutputs(args.inputs);
                return { id: `${args.name}-id`, state };
            },
            call: () => ({}),
        },
        "nixspark",
        "dev",
        preview,
    );
}

const dirs: string[] = [];
const tmp = (p: string) => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), p));
    dirs.push(d);
    return d;
};
let savedHome: string | undefined;
let said: { info: string[]; warn: string[] };
const log = () => ({ info: (m: string) => void said.info.push(m), warn: (m: string) => void said.warn.push(m) });
beforeEach(() => {
    savedHome = process.env.HOME;
    process.env.HOME = tmp("nixspark-home-"); // a user with no ~/.ssh at all
    stored = undefined;
    registered = [];
    said = { info: [], warn: [] };
    useMocks(false);
});
afterEach(() => {
    process.env.HOME = savedHome;
});
afterAll(() => {
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

const stateDirOf = (stack = "dev") => path.join(tmp("nixspark-proj-"), ".nixspark", stack);
const keygen = (file: string, comment: string) => execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", file], { timeout: 10_000 });
const derive = (file: string) => execFileSync("ssh-keygen", ["-y", "-P", "", "-f", file], { encoding: "utf8", timeout: 10_000 }).trim();
/** The state the engine would keep after this run: what the resource's outputs were. */
async function settle(stateDir: string, cfg = parseConfig({}), o: { preview?: boolean; home?: string } = {}) {
    useMocks(o.preview ?? false);
    const resolved = resolveSsh(cfg, stateDir, "dev", o.home ?? process.env.HOME);
    const settled = await settleDeployKey("dev", resolved, cfg, { stateDir, home: o.home ?? process.env.HOME, dryRun: o.preview ?? false, log: log() });
    const outs = await new Promise<Record<string, unknown>>((resolve) =>
        pulumi.all([settled.resource.source, settled.resource.publicKey, settled.resource.privateKey, settled.resource.origin, settled.resource.storedAt]).apply(([source, publicKey, privateKey, origin, storedAt]) =>
            resolve({ source, publicKey, privateKey, origin, storedAt }),
        ),
    );
    return { resolved, settled, outs };
}

describe("a stack's own key, in its state", () => {
    test("a fresh stack: a new ed25519 key without passphrase goes into the state, its cache 0600 in a 0700 directory, and into the image", async () => {
        const state = stateDirOf();
        const { settled, outs } = await settle(state);
        expect(settled.keySource).toBe("stack");
        expect(settled.identityFile).toBe(stackDeployKey(state));
        expect(outs).toMatchObject({ source: "stack", origin: "new" });
        expect(fs.statSync(settled.identityFile).mode & 0o777).toBe(0o600);
        expect(fs.statSync(state).mode & 0o777).toBe(0o700);
        expect(settled.publicKey).toMatch(/^ssh-ed25519 [A-Za-z0-9+/=]+ nixspark-dev$/);
        // The cache is the state's key; ssh-keygen reads it without a passphrase.
        expect(fs.readFileSync(settled.identityFile, "utf8")).toBe(outs.privateKey);
        expect(settled.publicKey!.startsWith(derive(settled.identityFile))).toBe(true);
        expect(fs.readFileSync(`${settled.identityFile}.pub`, "utf8").trim()).toBe(settled.publicKey);
        expect(said.info.join("\n")).toMatch(/stored the stack's new deploy key \(SHA256:[A-Za-z0-9+/]+\) in its state/);
        // The image carries exactly this key.
        const cfg = parseConfig({});
        const params = nixStackParams({ ...cfg, ssh: { ...cfg.ssh, publicKey: settled.publicKey } }, buildTopology("dev", cfg));
        expect(params.sshPublicKey).toBe(settled.publicKey);
        expect(fs.existsSync(path.join(process.env.HOME!, ".ssh"))).toBe(false);
        // The next run finds it in the state: the same key, nothing said.
        stored = outs;
        said = { info: [], warn: [] };
        const again = await settle(state);
        expect(again.settled.publicKey).toBe(settled.publicKey);
        expect(said).toEqual({ info: [], warn: [] });
    });

    test("the preview of a fresh stack writes its key to the cache, and the up after it stores that same key (what was previewed is what up builds)", async () => {
        const state = stateDirOf();
        const p = await settle(state, undefined, { preview: true });
        expect(said.info.join("\n")).toMatch(/a new deploy key for this stack .* written to .*deploy_ed25519 so that `pulumi up` stores this same key/);
        said = { info: [], warn: [] };
        const u = await settle(state); // the state is still empty: preview stores nothing
        expect(u.outs).toMatchObject({ source: "stack", origin: "cache" });
        expect(u.settled.publicKey).toBe(p.settled.publicKey);
        expect(said.info.join("\n")).toMatch(/imported the deploy key .*deploy_ed25519 \(SHA256:.*\) into the stack's state, once/);
    });

    test("a second checkout (no cache): the state's key is written back to the cache, and the candidate it made goes nowhere", async () => {
        const first = await settle(stateDirOf());
        stored = first.outs;
        said = { info: [], warn: [] };
        const state = stateDirOf(); // another project directory, same state
        const { settled } = await settle(state);
        expect(settled.publicKey).toBe(first.settled.publicKey);
        expect(fs.readFileSync(stackDeployKey(state), "utf8")).toBe(first.outs.privateKey);
        expect(fs.statSync(stackDeployKey(state)).mode & 0o777).toBe(0o600);
        expect(fs.readdirSync(state).sort()).toEqual(["deploy_ed25519", "deploy_ed25519.pub"]);
        expect(said.info).toEqual([expect.stringMatching(/^wrote the stack's deploy key \(SHA256:.*\) from its state to .*deploy_ed25519$/)]);
        // The candidate offered to the engine was another key; the state kept its own.
        expect(registered[registered.length - 1].publicKey).not.toBe(first.settled.publicKey);
    });

    test("a stack from before: the key in the cache is imported into the state once, saying so (preview: will import)", async () => {
        const state = stateDirOf();
        fs.mkdirSync(state, { recursive: true, mode: 0o700 });
        keygen(stackDeployKey(state), "nixspark-dev");
        const before = fs.readFileSync(stackDeployKey(state), "utf8");
        const p = await settle(state, undefined, { preview: true });
        expect(said.info).toEqual([expect.stringMatching(/^will import the deploy key .*deploy_ed25519 \(SHA256:.*\) into the stack's state, once/)]);
        expect(p.outs).toMatchObject({ origin: "cache", privateKey: before });
        said = { info: [], warn: [] };
        const u = await settle(state);
        expect(said.info).toEqual([expect.stringMatching(/^imported the deploy key .* from now on the state holds it \(a secret\)/)]);
        expect(u.settled.publicKey).toBe(fs.readFileSync(`${stackDeployKey(state)}.pub`, "utf8").trim());
        expect(fs.readFileSync(stackDeployKey(state), "utf8")).toBe(before);
        stored = u.outs;
        said = { info: [], warn: [] };
        await settle(state);
        expect(said.info).toEqual([]); // once
    });

    test("a cache holding another key than the state: the state's key wins, the other is moved aside, never deleted", async () => {
        const first = await settle(stateDirOf());
        stored = first.outs;
        const state = stateDirOf();
        fs.mkdirSync(state, { recursive: true, mode: 0o700 });
        keygen(stackDeployKey(state), "stray");
        const stray = fs.readFileSync(stackDeployKey(state), "utf8");
        said = { info: [], warn: [] };
        const { settled } = await settle(state);
        expect(settled.publicKey).toBe(first.settled.publicKey);
        expect(fs.readFileSync(stackDeployKey(state), "utf8")).toBe(first.outs.privateKey);
        const aside = fs.readdirSync(state).filter((f) => /^deploy_ed25519\.not-in-state-[^.]+$/.test(f));
        expect(aside).toHaveLength(1);
        expect(fs.readFileSync(path.join(state, aside[0]), "utf8")).toBe(stray);
        expect(fs.readFileSync(path.join(state, `${aside[0]}.pub`), "utf8")).toMatch(/ stray\n$/);
        expect(said.warn.join("\n")).toMatch(/held another key than the one in the stack's state; .* The other key was kept as .*not-in-state-/);
    });

    test("a missing .pub is derived from the private key (ssh-keygen -y); the private key is never deleted or replaced", () => {
        const state = stateDirOf();
        fs.mkdirSync(state, { recursive: true, mode: 0o700 });
        const file = stackDeployKey(state);
        keygen(file, "nixspark-dev");
        const pub = fs.readFileSync(`${file}.pub`, "utf8").trim();
        const priv = fs.readFileSync(file, "utf8");
        const ino = fs.statSync(file).ino;
        fs.rmSync(`${file}.pub`);
        const ssh = resolveSsh(parseConfig({}), state, "dev");
        expect(ssh).toMatchObject({ keySource: "stack", publicKey: pub, cached: { privateKey: priv, publicKey: pub } });
        expect(fs.readFileSync(`${file}.pub`, "utf8").trim()).toBe(pub);
        expect(fs.readFileSync(file, "utf8")).toBe(priv);
        expect(fs.statSync(file).ino).toBe(ino);
        // Nothing to read: nothing is made either.
        expect(readKeyFile(path.join(state, "absent"))).toBeUndefined();
        expect(fs.existsSync(path.join(state, "absent"))).toBe(false);
    });

    test("ensureKeyFile never writes over a key: same key kept, another moved aside", () => {
        const dir = tmp("nixspark-kf-");
        const a = generateDeployKey("a");
        const b = generateDeployKey("b");
        const f = path.join(dir, "sub", "key");
        expect(ensureKeyFile(f, a.privateKey, a.publicKey).action).toBe("written");
        expect(fs.statSync(path.dirname(f)).mode & 0o777).toBe(0o700);
        expect(ensureKeyFile(f, a.privateKey).action).toBe("kept");
        const r = ensureKeyFile(f, b.privateKey, b.publicKey);
        expect(r.action).toBe("moved-aside");
        expect(fs.readFileSync(r.movedTo!, "utf8")).toBe(a.privateKey);
        expect(fs.readFileSync(f, "utf8")).toBe(b.privateKey);
    });

    test("keys made in memory are OpenSSH's own format: ssh-keygen derives the same public key, and the header names it", () => {
        const k = generateDeployKey("nixspark-x");
        const f = path.join(tmp("nixspark-gen-"), "k");
        fs.writeFileSync(f, k.privateKey, { mode: 0o600 });
        expect(derive(f).split(" ").slice(0, 2)).toEqual(k.publicKey.split(" ").slice(0, 2));
        expect(openSshPublicBlob(k.privateKey)).toBe(k.publicKey.split(" ")[1]);
    });
});

describe("keys that are not the stack's own", () => {
    test("a key the user names is used as it is, and none is made", () => {
        const state = stateDirOf();
        const own = path.join(tmp("nixspark-keys-"), "id_mine");
        keygen(own, "mine");
        const ssh = resolveSsh(parseConfig({ ssh: { privateKeyPath: own } }), state, "dev");
        expect(ssh).toMatchObject({ identityFile: own, keySource: "configured" });
        expect(ssh.publicKey).toMatch(/ mine$/);
        expect(fs.existsSync(stackDeployKey(state))).toBe(false);
    });

    test("a stack deployed before per-stack keys keeps ~/.ssh/id_ed25519 (its nodes let only that in), and the state records it", async () => {
        const state = stateDirOf("old");
        fs.mkdirSync(state, { recursive: true });
        fs.writeFileSync(path.join(state, "known_hosts"), "10.77.0.10 ssh-ed25519 AAAA\n");
        const home = process.env.HOME!;
        fs.mkdirSync(path.join(home, ".ssh"));
        keygen(path.join(home, ".ssh/id_ed25519"), "old");
        const ssh = resolveSsh(parseConfig({}), state, "old", home);
        expect(ssh).toMatchObject({ identityFile: path.join(home, ".ssh/id_ed25519"), keySource: "legacy-default" });
        const { settled, outs } = await settle(state, undefined, { home });
        expect(settled).toMatchObject({ keySource: "legacy-default", identityFile: path.join(home, ".ssh/id_ed25519"), publicKey: expect.stringMatching(/ old$/) });
        expect(outs).toMatchObject({ source: "legacy-default" });
        expect(outs.privateKey).toBeUndefined(); // the user's key never enters the state
        expect(fs.existsSync(stackDeployKey(state))).toBe(false);
    });

    test("a checkout that looks like such a stack (known_hosts restored, no key file) still deploys with the key in the state", async () => {
        const first = await settle(stateDirOf());
        stored = first.outs;
        const state = stateDirOf();
        fs.mkdirSync(state, { recursive: true });
        fs.writeFileSync(path.join(state, "known_hosts"), "10.77.0.10 ssh-ed25519 AAAA\n");
        const home = process.env.HOME!;
        fs.mkdirSync(path.join(home, ".ssh"));
        keygen(path.join(home, ".ssh/id_ed25519"), "personal");
        const { resolved, settled } = await settle(state, undefined, { home });
        expect(resolved.keySource).toBe("legacy-default"); // what the files alone suggest
        expect(settled).toMatchObject({ keySource: "stack", identityFile: stackDeployKey(state), publicKey: first.settled.publicKey });
    });
});

describe("the DeployKey provider", () => {
    const a = generateDeployKey("a");
    const b = generateDeployKey("b");
    const inputs = (k: { privateKey: string; publicKey: string }, over: Record<string, unknown> = {}) => ({ source: "stack", publicKey: k.publicKey, privateKey: k.privateKey, origin: "new", storedAt: "t1", ...over });

    test("check keeps the key the state holds in place of any candidate", async () => {
        const r = await deployKeyProvider.check!(inputs(a), inputs(b, { storedAt: "t2", origin: "cache" }));
        expect(r.inputs).toMatchObject({ publicKey: a.publicKey, privateKey: a.privateKey, storedAt: "t1", origin: "new" });
        expect(r.failures).toEqual([]);
        expect((await deployKeyProvider.check!({}, inputs(b))).inputs).toMatchObject({ publicKey: b.publicKey });
        // A legacy decision stands too.
        expect((await deployKeyProvider.check!({ source: "legacy-default", origin: "cache", storedAt: "t0" }, inputs(b))).inputs).toMatchObject({ source: "legacy-default", storedAt: "t0" });
    });

    test("check refuses halves that are not a pair, and a stack key without its halves", () => {
        expect(checkDeployKey(inputs(a, { publicKey: b.publicKey }))).toEqual([{ property: "publicKey", reason: "publicKey is not the public half of privateKey" }]);
        expect(checkDeployKey({ source: "stack", origin: "new", storedAt: "t" }).map((f) => f.property).sort()).toEqual(["privateKey", "publicKey"]);
        expect(checkDeployKey({ source: "legacy-default", origin: "cache", storedAt: "t" })).toEqual([]);
    });

    test("diff never replaces; new provider code is an update that keeps the key", async () => {
        const olds = { ...inputs(a), fingerprint: "SHA256:x", __provider: "old code" };
        expect(await deployKeyProvider.diff!("id", olds, { ...inputs(a), __provider: "old code" })).toMatchObject({ changes: false, replaces: [] });
        expect(await deployKeyProvider.diff!("id", olds, { ...inputs(a), __provider: "new code" })).toMatchObject({ changes: true, replaces: [] });
        expect((await deployKeyProvider.update!("id", olds, inputs(b))).outs).toMatchObject({ privateKey: a.privateKey, fingerprint: "SHA256:x" });
    });

    test("delete deletes no file", async () => {
        const spy = jest.spyOn(console, "error").mockImplementation(() => undefined);
        try {
            await deployKeyProvider.delete!("id", { ...inputs(a), fingerprint: "SHA256:x" });
            expect(String(spy.mock.calls[0][0])).toMatch(/no key file is deleted/);
        } finally {
            spy.mockRestore();
        }
    });
});
