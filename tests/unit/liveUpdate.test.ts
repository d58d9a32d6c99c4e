// Issue: a Spark setting change must reach the nodes as an in-place update of
// their NixosDeployments only. Under Pulumi's mocks, with the real flake
// (nix/flake.nix, evaluated by real Nix against a stub nixpkgs), two configs
// that differ in one Spark setting must give identical inputs for every
// volume, domain, network and pool, and a new expectedSystem for every
// deployment.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";
import { parseConfig } from "../../cluster/config";
import { prepareNix } from "../../cluster/nixParams";
import { buildTopology } from "../../cluster/topology";
import { FIXTURES, NIX_DIR, nixEnv } from "../fixtures/nix-env";
import { deploymentDiff } from "../../providers/deployment/diff";

jest.setTimeout(180_000);

const KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyFakeKeyFakeKeyFakeKeyFakeKeyFakeKey me@host";
const STUB = ["--no-write-lock-file", "--override-input", "nixpkgs", `path:${path.join(FIXTURES, "nix-stub-nixpkgs")}`];

let registered: { type: string; name: string; inputs: Record<string, any> }[] = [];
pulumi.runtime.setMocks(
    {
        newResource(args) {
            registered.push({ type: args.type, name: args.name, inputs: args.inputs });
            return { id: `${args.name}-id`, state: { ...args.inputs, path: args.inputs.backingPath ? `/pool/${args.inputs.name}` : args.inputs.path } };
        },
        call: () => ({}),
    },
    "nixspark",
    "dev",
    false,
);

let proj: string;
beforeAll(() => {
    nixEnv();
    proj = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-live-"));
    fs.cpSync(NIX_DIR, path.join(proj, "nix"), { recursive: true });
});
afterAll(() => fs.rmSync(proj, { recursive: true, force: true }));

async function graph(sparkSettings: Record<string, string>) {
    registered = [];
    const cfg = parseConfig({
        ssh: { publicKey: KEY },
        image: { path: "/images/base.qcow2" },
        deploy: { flake: `path:${path.join(proj, "nix")}` },
        spark: { settings: sparkSettings },
    });
    const topo = buildTopology("dev", cfg);
    const systems = (await prepareNix("dev", cfg, topo, { cwd: proj, extraArgs: STUB })).systems!;
    const { SparkCluster } = await import("../../cluster/sparkCluster");
    const c = new SparkCluster("dev", { stack: "dev", config: cfg, baseImage: { path: "/images/base.qcow2" }, systems, ssh: { identityFile: "/k", knownHostsFile: "/kh" } });
    const all = [c.network!, c.pool, ...c.nodes.flatMap((n) => [n.volume, n.domain]), ...c.deployments, ...(c.health ? [c.health] : [])];
    await new Promise<void>((r) => pulumi.all(all.map((x) => x.id)).apply(() => r()));
    const byName = new Map(registered.map((r) => [r.name, r]));
    return { byName, systems };
}

test("one Spark setting changes only the deployments' expected system (and re-runs the health gate)", async () => {
    const a = await graph({ "spark.executor.memory": "1g" });
    const b = await graph({ "spark.executor.memory": "2g" });
    expect(a.systems.master.expectedSystem).not.toBe(b.systems.master.expectedSystem);
    expect(a.systems.worker.expectedSystem).not.toBe(b.systems.worker.expectedSystem);
    expect([...a.byName.keys()].sort()).toEqual([...b.byName.keys()].sort());

    const changed: string[] = [];
    for (const [name, ra] of a.byName) {
        const rb = b.byName.get(name)!;
        const keys = new Set([...Object.keys(ra.inputs), ...Object.keys(rb.inputs)]);
        for (const k of keys) if (k !== "__provider" && JSON.stringify(ra.inputs[k]) !== JSON.stringify(rb.inputs[k])) changed.push(`${ra.type.split(":").pop()}.${k}`);
    }
    // `flake` moves too (the store copy of nix/ that each evaluation read), but it is no switch key: what switches a node is its system.
    expect([...new Set(changed)].sort()).toEqual(["NixosDeployment.expectedSystem", "NixosDeployment.flake", "SparkHealth.trigger"]);
    const deployments = [...b.byName.values()].filter((r) => r.type.endsWith(":NixosDeployment"));
    // (The secret reaches the mocks as a wrapped object, a new one each run: left out here, equal above.)
    const plain = (inputs: Record<string, unknown>) => ({ ...inputs, secretProperties: undefined });
    for (const d of deployments) expect(deploymentDiff(plain(a.byName.get(d.name)!.inputs), plain(d.inputs)).reasons).toEqual(["expectedSystem changed"]);
    expect(deployments.map((d) => d.name).sort()).toEqual(["dev-master-nixos", "dev-worker-1-nixos", "dev-worker-2-nixos"]);
    // All workers share one configuration: one evaluation, one build.
    expect(new Set(deployments.filter((d) => d.inputs.node !== "master").map((d) => d.inputs.expectedSystem)).size).toBe(1);
});
