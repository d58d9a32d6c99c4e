// cluster/nixParams.ts: what the program writes for the flake, and the
// attribute names it asks Nix for. The contract with the Nix side is tested
// for real: the JSON written here is read by nix/lib/params.nix, and
// nix/flake.nix itself is evaluated (with a stub nixpkgs, since the real one
// cannot be fetched here) at the attributes this module names.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseConfig } from "../../cluster/config";
import { buildTopology } from "../../cluster/topology";
import { absoluteFlakeRef, attrSegment, evalDrvPath, evalSystemPath, gcRootDir, imageAttribute, localFlakeDir, roleConfiguration } from "../../cluster/nixFlake";
import {
    NIX_PARAMS_VERSION,
    nixStackParams,
    prepareNix,
    removeNixStackParams,
    renderNixStackParams,
    stackParamsPath,
    writeNixStackParams,
} from "../../cluster/nixParams";
import { copyDir, evalJson, FIXTURES, NIX_DIR, nixEnv, tempDir } from "../fixtures/nix-env";

jest.setTimeout(120_000);

const KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyFakeKeyFakeKeyFakeKeyFakeKeyFakeKey me@host";
const OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyOtherKeyOtherKeyOtherKeyOtherKeyOt me@host";
// What the stand-in names its derivations is its own business: a store path is what the program needs.
const DRV = /^\/nix\/store\/[a-z0-9]{32}-[^/]+\.drv$/;
const STORE_PATH = /^\/nix\/store\/[a-z0-9]{32}-[^/]+$/;
const STUB = ["--no-write-lock-file", "--override-input", "nixpkgs", `path:${path.join(FIXTURES, "nix-stub-nixpkgs")}`];

/** A project directory holding a copy of nix/ (the tests write stacks/ files into it). */
function project(): { proj: string; dir: string } {
    const proj = tempDir("nixspark-proj-");
    fs.cpSync(NIX_DIR, path.join(proj, "nix"), { recursive: true });
    return { proj, dir: path.join(proj, "nix") };
}

function setup(stack: string, raw: Record<string, unknown> = {}) {
    const cfg = parseConfig({ ssh: { publicKey: KEY }, ...raw });
    return { cfg, topo: buildTopology(stack, cfg) };
}

describe("nixStackParams (pure)", () => {
    test("carries what nix/lib/params.nix needs, from config and topology", () => {
        const { cfg, topo } = setup("dev", {
            network: { cidr: "10.50.0.0/24" },
            workers: { count: 3, vcpus: 4, memoryMiB: 8192 },
            spark: { settings: { "spark.sql.shuffle.partitions": 8, "spark.eventLog.enabled": true, "spark.executor.memory": "2g" }, pythonPackages: ["scipy", "numpy", "numpy"] },
        });
        expect(nixStackParams(cfg, topo)).toEqual({
            version: NIX_PARAMS_VERSION,
            stack: "dev",
            sshUser: "deploy",
            sshPublicKey: KEY,
            cidr: "10.50.0.0/24",
            prefix: 24,
            masterIp: "10.50.0.10",
            masterHostname: "dev-master",
            master: { vcpus: 2, memoryMiB: 2048 },
            worker: { vcpus: 4, memoryMiB: 8192 },
            sparkSettings: { "spark.eventLog.enabled": "true", "spark.executor.memory": "2g", "spark.sql.shuffle.partitions": "8" },
            pythonPackages: ["numpy", "scipy"],
            security: { authenticate: true, ioEncryption: false },
        });
    });

    test("secret Spark settings and the cluster secret never reach it", () => {
        const { cfg, topo } = setup("dev", { sparkSecrets: { "spark.ssl.keyPassword": "hunter2-secret" }, spark: { settings: { "spark.ui.port": 4041 } } });
        const text = renderNixStackParams(nixStackParams(cfg, topo));
        expect(text).not.toContain("hunter2-secret");
        expect(text).not.toContain("spark.ssl.keyPassword");
        expect(text).toContain("spark.ui.port");
    });

    test("the worker count is not in it: scaling never changes a Nix derivation", () => {
        const a = setup("dev", { workers: { count: 1 } });
        const b = setup("dev", { workers: { count: 7 } });
        expect(renderNixStackParams(nixStackParams(a.cfg, a.topo))).toBe(renderNixStackParams(nixStackParams(b.cfg, b.topo)));
    });

    test("the network mode: nothing in nat mode (a nat stack's file is byte for byte what it was), networkMode bridge in bridge mode", () => {
        const nat = setup("dev", { network: { cidr: "10.50.0.0/24" } });
        const explicit = setup("dev", { network: { cidr: "10.50.0.0/24", mode: "nat" } });
        const bridge = setup("dev", { network: { cidr: "10.50.0.0/24", mode: "bridge", bridge: "br0", gateway: "10.50.0.254" } });
        expect(nixStackParams(nat.cfg, nat.topo)).not.toHaveProperty("networkMode");
        expect(renderNixStackParams(nixStackParams(explicit.cfg, explicit.topo))).toBe(renderNixStackParams(nixStackParams(nat.cfg, nat.topo)));
        const b = nixStackParams(bridge.cfg, bridge.topo);
        expect(b.networkMode).toBe("bridge");
        // The node's address and gateway travel in its domain (the nixspark.network credential), not here:
        // every worker keeps one system.
        expect(renderNixStackParams(b)).not.toContain("10.50.0.254");
        expect({ ...b, networkMode: undefined }).toEqual({ ...nixStackParams(nat.cfg, nat.topo), networkMode: undefined });
    });

    test("without an SSH key it says which setting to set", () => {
        const cfg = parseConfig({});
        expect(() => nixStackParams(cfg, buildTopology("dev", cfg))).toThrow(/nixspark:ssh.publicKey: required to build the base image/);
    });
});

describe("names", () => {
    test("flake references", () => {
        expect(localFlakeDir("path:./nix", "/proj")).toBe("/proj/nix");
        expect(localFlakeDir("./nix", "/proj")).toBe("/proj/nix");
        expect(localFlakeDir("/abs/nix", "/proj")).toBe("/abs/nix");
        expect(localFlakeDir("github:me/repo?dir=nix", "/proj")).toBeUndefined();
        expect(absoluteFlakeRef("path:./nix", "/proj")).toBe("path:/proj/nix");
        expect(absoluteFlakeRef("github:me/repo", "/proj")).toBe("github:me/repo");
        expect(stackParamsPath("/proj/nix", "dev")).toBe("/proj/nix/stacks/dev.json");
        expect(gcRootDir("dev", "/proj")).toBe("/proj/.nixspark/dev/gcroots");
    });

    test("attributes: the stack's own image unless another attribute is configured; names quoted when needed", () => {
        expect(imageAttribute("dev")).toBe("packages.x86_64-linux.dev-base-image");
        expect(imageAttribute("st.ack")).toBe('packages.x86_64-linux."st.ack-base-image"');
        expect(imageAttribute("dev", "packages.x86_64-linux.my-image")).toBe("packages.x86_64-linux.my-image");
        expect(roleConfiguration("dev", "worker")).toBe("dev-worker");
        expect(attrSegment("9lives")).toBe('"9lives"');
    });
});

describe("the settings file", () => {
    test("is written only when its content changes, and removed on request", () => {
        const dir = copyDir(NIX_DIR, "nixspark-flake-");
        const { cfg, topo } = setup("dev");
        const p = nixStackParams(cfg, topo);
        const first = writeNixStackParams(dir, p);
        expect(first).toEqual({ path: path.join(dir, "stacks/dev.json"), changed: true });
        const mtime = fs.statSync(first.path).mtimeMs;
        expect(writeNixStackParams(dir, p).changed).toBe(false);
        expect(fs.statSync(first.path).mtimeMs).toBe(mtime);
        expect(writeNixStackParams(dir, { ...p, sshPublicKey: OTHER_KEY }).changed).toBe(true);
        expect(fs.readdirSync(path.join(dir, "stacks")).sort()).toEqual(["dev.json", "example.json"]);
        expect(removeNixStackParams(dir, "dev")).toBe(true);
        expect(removeNixStackParams(dir, "dev")).toBe(false);
    });

    test("is readable by its owner only, also when an older file was not", () => {
        const dir = copyDir(NIX_DIR, "nixspark-flake-");
        const { cfg, topo } = setup("dev");
        const p = nixStackParams(cfg, topo);
        const { path: file } = writeNixStackParams(dir, p);
        expect(fs.statSync(file).mode & 0o777).toBe(0o600);
        fs.chmodSync(file, 0o644);
        expect(writeNixStackParams(dir, p).changed).toBe(false);
        expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    });

    test("refuses a directory that is not the flake", () => {
        const { cfg, topo } = setup("dev");
        expect(() => writeNixStackParams(FIXTURES, nixStackParams(cfg, topo))).toThrow(/holds no flake.nix/);
    });

    test("is what nix/lib/params.nix reads (the same rules on both sides)", () => {
        nixEnv();
        const dir = copyDir(NIX_DIR, "nixspark-flake-");
        const { cfg, topo } = setup("dev", { workers: { vcpus: 3, memoryMiB: 4096 }, spark: { settings: { "spark.sql.shuffle.partitions": 8 } } });
        writeNixStackParams(dir, nixStackParams(cfg, topo));
        const p = evalJson<any>(`(import ./lib/stacks.nix { stacksDir = ./stacks; }).dev`, dir);
        expect(p.master.ip).toBe(topo.master.ip);
        expect(p.master.hostname).toBe(topo.master.hostname);
        expect(p.worker).toEqual({ cores: 3, vmMemoryMiB: 4096, osReserveMiB: 512, sparkMemoryMiB: 3072 });
        expect(p.sparkSettings["spark.sql.shuffle.partitions"]).toBe("8");
        expect(p.sparkSettings["spark.master"]).toBe(`spark://${topo.master.ip}:7077`);
        // The config's default list, sorted (its content is configSchema.ts's and params.nix's to agree on).
        expect(p.pythonPackages).toEqual([...cfg.spark.pythonPackages].sort());
    });
});

test("nix/lib/params.nix reads the network mode: nat when absent, bridge; anything else is refused naming the field and the setting", () => {
    nixEnv();
    const dir = copyDir(NIX_DIR, "nixspark-flake-");
    const bridge = setup("br", { network: { mode: "bridge", bridge: "br0" } });
    writeNixStackParams(dir, nixStackParams(bridge.cfg, bridge.topo));
    const nat = setup("nat");
    writeNixStackParams(dir, nixStackParams(nat.cfg, nat.topo));
    expect(evalJson<Record<string, string>>(`builtins.mapAttrs (_: p: p.network.mode) (import ./lib/stacks.nix { stacksDir = ./stacks; })`, dir)).toEqual({ br: "bridge", nat: "nat", example: "nat" });
    const file = stackParamsPath(dir, "nat");
    fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, "utf8")), networkMode: "macvtap" }));
    expect(() => evalJson(`(import ./lib/stacks.nix { stacksDir = ./stacks; }).nat.network.mode`, dir)).toThrow(
        /nixspark stack settings: networkMode: expected "nat" or "bridge" \(nixspark:network.mode\), got "macvtap"/,
    );
});

describe("nix/flake.nix at the attributes the program asks for (stub nixpkgs)", () => {
    beforeAll(() => {
        nixEnv();
    });

    test("the image's drvPath: stable while nothing changes, new when the SSH key changes", async () => {
        const { proj, dir } = project();
        const { cfg, topo } = setup("dev");
        const prepared = (await prepareNix("dev", { ...cfg, deploy: { ...cfg.deploy, enabled: false } }, topo, { cwd: proj, extraArgs: STUB })).image!;
        expect(prepared.flake).toBe(`path:${dir}`);
        expect(prepared.attribute).toBe("packages.x86_64-linux.dev-base-image");
        expect(prepared.drvPath).toMatch(DRV);
        expect(prepared.gcRootDir).toBe(path.join(proj, ".nixspark/dev/gcroots"));
        expect(prepared.paramsFile).toBe(path.join(dir, "stacks/dev.json"));

        const again = await evalDrvPath(prepared.flake, prepared.attribute, { extraArgs: STUB });
        expect(again).toBe(prepared.drvPath);

        writeNixStackParams(dir, nixStackParams(parseConfig({ ssh: { publicKey: OTHER_KEY } }), topo));
        expect(await evalDrvPath(prepared.flake, prepared.attribute, { extraArgs: STUB })).not.toBe(prepared.drvPath);
    });

    test("a stack name that needs quoting", async () => {
        const { proj } = project();
        const { cfg, topo } = setup("st.ack");
        const prepared = await prepareNix("st.ack", cfg, topo, { cwd: proj, extraArgs: STUB });
        expect(prepared.image!.drvPath).toMatch(DRV);
        expect(prepared.systems!.master.expectedSystem).toMatch(STORE_PATH);
    });

    test("the role systems: <stack>-master and <stack>-worker", async () => {
        const { proj } = project();
        const dir = copyDir(NIX_DIR, "nixspark-flake-");
        const { cfg, topo } = setup("dev", { image: { path: "/images/base.qcow2" }, deploy: { flake: `path:${dir}` } });
        const sys = (await prepareNix("dev", cfg, topo, { cwd: proj, extraArgs: STUB })).systems!;
        expect(sys.evaluatedFlake).toBe(`path:${dir}`);
        // Deployments switch from the store copy of the flake this evaluation read (the real flake.nix gives it).
        expect(sys.flake).toMatch(/^path:\/nix\/store\/[0-9a-z]{32}-source$/);
        expect(fs.readFileSync(path.join(sys.flake.slice("path:".length), "stacks", "dev.json"), "utf8")).toBe(fs.readFileSync(path.join(dir, "stacks", "dev.json"), "utf8"));
        expect(sys.master.configuration).toBe("dev-master");
        expect(sys.worker.configuration).toBe("dev-worker");
        expect(sys.master.expectedSystem).toMatch(STORE_PATH);
        expect(await evalSystemPath(sys.flake, "example-master", { extraArgs: STUB })).toMatch(STORE_PATH);
        // From the same evaluation: what each role runs, by version (the package-level preview).
        expect(sys.worker.packages).toMatchObject({ spark: expect.any(String), python: expect.any(String), pythonPackages: { numpy: expect.any(String), pandas: expect.any(String) } });
        // ... and again from the cache, with no nix process.
        const again = await prepareNix("dev", cfg, topo, { cwd: proj, extraArgs: STUB });
        expect(again.cached).toBe(true);
        expect(again.systems!.worker.packages).toEqual(sys.worker.packages);
    });

    test("the example stack's shortcuts exist: base-image, spark-master, spark-worker", async () => {
        const flake = `path:${copyDir(NIX_DIR, "nixspark-flake-")}`;
        expect(await evalDrvPath(flake, "packages.x86_64-linux.base-image", { extraArgs: STUB })).toBe(
            await evalDrvPath(flake, "packages.x86_64-linux.example-base-image", { extraArgs: STUB }),
        );
        expect(await evalSystemPath(flake, "spark-worker", { extraArgs: STUB })).toBe(await evalSystemPath(flake, "example-worker", { extraArgs: STUB }));
    });

    test("an attribute that does not exist fails with Nix's message", async () => {
        const flake = `path:${copyDir(NIX_DIR, "nixspark-flake-")}`;
        await expect(evalDrvPath(flake, imageAttribute("nosuchstack"), { extraArgs: STUB })).rejects.toThrow(/nosuchstack-base-image/);
    });

    test("a remote image flake is refused: the settings file needs a local directory", async () => {
        const { cfg, topo } = setup("dev", { image: { flake: "github:me/repo?dir=nix" } });
        await expect(prepareNix("dev", cfg, topo)).rejects.toThrow(/nixspark:image.flake: "github:me\/repo\?dir=nix" is not a local directory/);
    });
});
