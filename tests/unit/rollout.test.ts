// The rollout order (cluster/rollout.ts) as properties, the worker offer
// against nix/lib/params.nix evaluated by real Nix, and the dependsOn chain
// SparkCluster builds from them, as the Pulumi SDK sends it to the engine
// (the registration's dependencies, seen by a mocked resource monitor).
import * as fs from "node:fs";
import * as path from "node:path";
import * as fc from "fast-check";
import * as pulumi from "@pulumi/pulumi";
import { rolloutBatches, rolloutOrder, workerOffer } from "../../cluster/rollout";
import { parseConfig } from "../../cluster/config";
import { evalJson, NIX_DIR, nixEnv } from "../fixtures/nix-env";

jest.setTimeout(120_000);

describe("rolloutOrder / rolloutBatches", () => {
    const workersArb = fc.integer({ min: 0, max: 40 }).map((n) => Array.from({ length: n }, (_, i) => `worker-${i + 1}`));
    const optsArb = fc.record({ maxParallel: fc.integer({ min: 1, max: 64 }), canary: fc.boolean() });

    test("every worker exactly once, in declaration order; the master alone first", () => {
        fc.assert(
            fc.property(workersArb, optsArb, (workers, opts) => {
                const order = rolloutOrder("master", workers, opts);
                expect(order[0]).toEqual(["master"]);
                const rest = order.slice(1);
                expect(rest.flat()).toEqual(workers); // each once, order preserved
                expect(rest.every((b) => b.length > 0)).toBe(true);
                expect(rest).toEqual(rolloutBatches(workers, opts));
            }),
        );
    });

    test("the canary (worker-1) switches alone; no batch is larger than maxParallel", () => {
        fc.assert(
            fc.property(workersArb, optsArb, (workers, opts) => {
                const batches = rolloutBatches(workers, opts);
                if (opts.canary && workers.length > 0) expect(batches[0]).toEqual(["worker-1"]);
                for (const b of batches) expect(b.length).toBeLessThanOrEqual(opts.maxParallel);
                // Only the last batch after the canary may be short: as few batches as the limit allows.
                const after = opts.canary && workers.length > 0 ? batches.slice(1) : batches;
                expect(after.slice(0, -1).every((b) => b.length === opts.maxParallel)).toBe(true);
            }),
        );
    });

    test("examples: 1+5 workers with maxParallel 2; without a canary", () => {
        const w = ["w1", "w2", "w3", "w4", "w5"];
        expect(rolloutOrder("m", w, { maxParallel: 2, canary: true })).toEqual([["m"], ["w1"], ["w2", "w3"], ["w4", "w5"]]);
        expect(rolloutOrder("m", w, { maxParallel: 2, canary: false })).toEqual([["m"], ["w1", "w2"], ["w3", "w4"], ["w5"]]);
        expect(rolloutOrder("m", [], { maxParallel: 2, canary: true })).toEqual([["m"]]);
    });
});

describe("workerOffer follows nix/lib/params.nix", () => {
    beforeAll(() => nixEnv());

    test("cores and Spark memory for VM sizes from 256 MiB to 1 TiB, as Nix computes them", () => {
        const example = JSON.parse(fs.readFileSync(path.join(NIX_DIR, "stacks/example.json"), "utf8"));
        const sizes = [
            ...[256, 1023, 1024, 1279, 1280, 2048, 4096, 5119, 5120, 5129, 8192, 65536, 1024 * 1024].map((m, i) => ({ vcpus: 1 + (i % 64), memoryMiB: m })),
            ...fc.sample(fc.record({ vcpus: fc.integer({ min: 1, max: 64 }), memoryMiB: fc.integer({ min: 256, max: 1024 * 1024 }) }), { numRuns: 60, seed: 11 }),
        ];
        // One evaluation for all sizes.
        const expr = `map (w: (import ./lib/params.nix ((builtins.fromJSON ${JSON.stringify(JSON.stringify(example))}) // { worker = w; })).worker) (builtins.fromJSON ${JSON.stringify(JSON.stringify(sizes))})`;
        const fromNix = evalJson<{ cores: number; sparkMemoryMiB: number }[]>(expr);
        expect(fromNix).toHaveLength(sizes.length);
        expect(sizes.map((s) => workerOffer(s.vcpus, s.memoryMiB))).toEqual(fromNix.map((w) => ({ cores: w.cores, memoryMiB: w.sparkMemoryMiB })));
    });
});

describe("SparkCluster: the deployments' dependsOn chain", () => {
    /** Resource name -> names of the resources its registration depends on. */
    let deps = new Map<string, string[]>();
    let inputs = new Map<string, Record<string, any>>();

    beforeAll(async () => {
        await pulumi.runtime.setMocks(
            {
                newResource(args: pulumi.runtime.MockResourceArgs) {
                    inputs.set(args.name, args.inputs);
                    const state: Record<string, any> = { ...args.inputs };
                    if (args.type.endsWith(":Volume")) state.path = `/pool/${args.inputs.name}`;
                    if (args.type.endsWith(":Domain")) state.uuid = `uuid-of-${args.name}`;
                    return { id: `${args.name}-id`, state };
                },
                call: () => ({}),
            },
            "nixspark",
            "dev",
            false,
        );
        // The mock monitor ignores dependencies; record what the SDK sends it.
        const monitor = pulumi.runtime.getMonitor() as any;
        const register = monitor.registerResource.bind(monitor);
        monitor.registerResource = (req: any, cb: any) => {
            deps.set(req.getName(), (req.getDependenciesList() as string[]).map((urn) => urn.split("::").pop() as string));
            return register(req, cb);
        };
    });

    const systems = {
        flake: "path:/p/nix",
        master: { configuration: "dev-master", expectedSystem: "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-dev-master" },
        worker: { configuration: "dev-worker", expectedSystem: "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-dev-worker" },
    };

    async function build(raw: Record<string, unknown>) {
        deps = new Map();
        inputs = new Map();
        const { SparkCluster } = await import("../../cluster/sparkCluster");
        const config = parseConfig({ ...raw, network: { cidr: "10.77.0.0/24" }, image: { path: "/images/base.qcow2" } });
        const cluster = new SparkCluster("dev", { stack: "dev", config, baseImage: { path: "/images/base.qcow2" }, systems, ssh: { identityFile: "/k", knownHostsFile: "/kh" } });
        const all = [...cluster.nodes.map((n) => n.domain), ...cluster.deployments, ...(cluster.health ? [cluster.health] : [])];
        await new Promise<void>((resolve) => pulumi.all(all.map((r) => r.urn)).apply(() => resolve()));
        const deploymentDeps = (node: string) => (deps.get(`dev-${node}-nixos`) ?? []).filter((d) => d.endsWith("-nixos")).map((d) => d.replace(/^dev-|-nixos$/g, "")).sort();
        return { cluster, deploymentDeps };
    }

    test("1+5 workers, maxParallel 2: master, then the canary worker-1, then [2,3], then [4,5]; each deployment also waits for its own domain", async () => {
        const g = await build({ workers: { count: 5 }, deploy: { rollout: { maxParallel: 2 } } });
        expect(g.deploymentDeps("master")).toEqual([]);
        expect(g.deploymentDeps("worker-1")).toEqual(["master"]);
        expect(g.deploymentDeps("worker-2")).toEqual(["worker-1"]);
        expect(g.deploymentDeps("worker-3")).toEqual(["worker-1"]);
        expect(g.deploymentDeps("worker-4")).toEqual(["worker-2", "worker-3"]);
        expect(g.deploymentDeps("worker-5")).toEqual(["worker-2", "worker-3"]);
        for (const n of ["master", "worker-1", "worker-2", "worker-3", "worker-4", "worker-5"]) expect(deps.get(`dev-${n}-nixos`)).toContain(`dev-${n}`);
        // The health gate still waits for every deployment.
        expect(deps.get("dev-spark-health")?.filter((d) => d.endsWith("-nixos")).sort()).toEqual(["master", "worker-1", "worker-2", "worker-3", "worker-4", "worker-5"].map((n) => `dev-${n}-nixos`));
    });

    test("no canary, maxParallel 1: a strict chain master -> worker-1 -> worker-2 -> worker-3", async () => {
        const g = await build({ workers: { count: 3 }, deploy: { rollout: { maxParallel: 1, canary: false } } });
        expect(["master", "worker-1", "worker-2", "worker-3"].map(g.deploymentDeps)).toEqual([[], ["master"], ["worker-1"], ["worker-2"]]);
    });

    test("each deployment is told what Spark must report: the master ALIVE; a worker at its address with the cores and memory its VM offers", async () => {
        await build({ workers: { count: 2, vcpus: 3, memoryMiB: 8192 }, deploy: { rollout: { verifyTimeoutSeconds: 90 }, decommissionTimeoutSeconds: 45 } });
        expect(inputs.get("dev-master-nixos")?.spark).toEqual({ role: "master", webUiUrl: "http://10.77.0.10:8080", address: "10.77.0.10", unit: "spark-master", timeoutSeconds: 90 });
        expect(inputs.get("dev-worker-2-nixos")?.spark).toEqual({
            role: "worker",
            webUiUrl: "http://10.77.0.10:8080",
            address: "10.77.0.12",
            cores: 3,
            memoryMiB: 6861, // 8192 - 819 (OS) - 512 (daemon heap), as params.nix says
            unit: "spark-worker",
            timeoutSeconds: 90,
            decommissionTimeoutSeconds: 45,
        });
    });
});
