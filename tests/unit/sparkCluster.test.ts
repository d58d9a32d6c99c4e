// The resource graph under Pulumi's mocks: no engine, no libvirt.
import * as fs from "node:fs";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";
import { parseConfig, rawFromPulumiConfig } from "../../cluster/config";

interface Registered {
    type: string;
    name: string;
    inputs: Record<string, any>;
}

let registered: Registered[] = [];
/** The UUID libvirt gives each domain (by resource name); a new one = a re-created VM. */
let uuids: Record<string, string> = {};

pulumi.runtime.setMocks(
    {
        newResource(args: pulumi.runtime.MockResourceArgs) {
            registered.push({ type: args.type, name: args.name, inputs: args.inputs });
            const state: Record<string, any> = { ...args.inputs };
            if (args.type === "pulumi-nodejs:dynamic/nixspark:Volume") {
                state.path = `/pool/${args.inputs.name}`;
                state.diskId = `disk-id-of-${args.name}`;
            }
            if (args.type === "pulumi-nodejs:dynamic/nixspark:ClusterSecret") {
                state.value = "mock-cluster-secret";
            }
            if (args.type === "pulumi-nodejs:dynamic/nixspark:Domain") {
                state.uuid = uuids[args.name] ?? `uuid-of-${args.name}`;
            }
            return { id: `${args.name}-id`, state };
        },
        call: () => ({}),
    },
    "nixspark",
    "dev",
    false,
);

/** The dev stack's config, exactly as Pulumi hands it to the program (objects JSON-encoded). */
function devConfig(overrides: Record<string, unknown> = {}) {
    const yaml = require("js-yaml");
    const doc = yaml.load(fs.readFileSync(path.join(__dirname, "../../Pulumi.dev.yaml"), "utf8")) as { config: Record<string, unknown> };
    const flat: Record<string, string> = {};
    for (const [k, v] of Object.entries(doc.config)) flat[k] = typeof v === "string" ? v : JSON.stringify(v);
    const cfg = parseConfig(rawFromPulumiConfig(flat));
    return { ...cfg, ...overrides, image: { ...cfg.image, path: "/images/base.qcow2" } } as typeof cfg;
}

async function build(workers?: number) {
    registered = [];
    const { SparkCluster } = await import("../../cluster/sparkCluster");
    const base = devConfig();
    const config = workers === undefined ? base : { ...base, workers: { ...base.workers, count: workers } };
    const cluster = new SparkCluster("dev", { stack: "dev", config, baseImage: { path: "/images/base.qcow2" } });
    // Wait until every resource has been registered with the mocks.
    const ids = [cluster.network!.id, cluster.pool.id, ...cluster.nodes.flatMap((n) => [n.volume.id, n.domain.id])];
    await new Promise<void>((resolve) => pulumi.all(ids).apply(() => resolve()));
    const ofType = (t: string) => registered.filter((r) => r.type === `pulumi-nodejs:dynamic/nixspark:${t}`);
    return { cluster, networks: ofType("Network"), volumes: ofType("Volume"), domains: ofType("Domain"), pools: ofType("StoragePool") };
}

describe("SparkCluster under mocks", () => {
    test("the dev config yields 1 network, 3 volumes and 3 domains with the expected names and addresses", async () => {
        const g = await build();
        expect(g.networks).toHaveLength(1);
        expect(g.pools).toHaveLength(1);
        expect(g.volumes.map((v) => v.inputs.name).sort()).toEqual(["dev-master.qcow2", "dev-worker-1.qcow2", "dev-worker-2.qcow2"]);
        expect(g.domains.map((d) => d.inputs.name).sort()).toEqual(["dev-master", "dev-worker-1", "dev-worker-2"]);
        const net = g.networks[0].inputs;
        expect(net.name).toBe("dev-net");
        expect(net.hosts.map((h: any) => [h.name, h.ip])).toEqual([
            ["dev-master", "10.77.0.10"],
            ["dev-worker-1", "10.77.0.11"],
            ["dev-worker-2", "10.77.0.12"],
        ]);
        // Each domain's NIC carries the MAC its reservation names.
        for (const d of g.domains) expect(net.hosts.find((h: any) => h.name === d.inputs.name).mac).toBe(d.inputs.mac);
        const master = g.domains.find((d) => d.inputs.name === "dev-master")!.inputs;
        expect([master.vcpus, master.memoryMiB, master.diskPath, master.network]).toEqual([1, 2048, "/pool/dev-master.qcow2", "dev-net"]);
        expect(g.cluster.masterUrl).toBe("spark://10.77.0.10:7077");
        expect(g.cluster.webUiUrl).toBe("http://10.77.0.10:8080");
        expect(g.cluster.historyUrl).toBe("http://10.77.0.10:18080");
    });

    test("workers 2 -> 5 adds exactly 3 volumes and 3 domains and keeps the same network", async () => {
        const two = await build(2);
        const five = await build(5);
        const names = (rs: Registered[]) => rs.map((r) => r.name);
        expect(five.volumes.length - two.volumes.length).toBe(3);
        expect(five.domains.length - two.domains.length).toBe(3);
        expect(names(five.domains).filter((n) => !names(two.domains).includes(n)).sort()).toEqual(["dev-worker-3", "dev-worker-4", "dev-worker-5"]);
        // Same network resource (name), same replace-relevant inputs: only the reservations grow.
        expect(names(five.networks)).toEqual(names(two.networks));
        const { hosts: h2, ...rest2 } = two.networks[0].inputs;
        const { hosts: h5, ...rest5 } = five.networks[0].inputs;
        expect(rest5).toEqual(rest2);
        expect(h5.slice(0, 3)).toEqual(h2);
        expect(h5).toHaveLength(6);
        // Existing nodes' inputs are untouched.
        for (const d of two.domains) expect(five.domains.find((x) => x.name === d.name)!.inputs).toEqual(d.inputs);
    });
});

describe("SparkCluster with deployments and the health gate, under mocks", () => {
    const systems = {
        flake: "path:/p/nix",
        master: { configuration: "dev-master", expectedSystem: "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-dev-master" },
        worker: { configuration: "dev-worker", expectedSystem: "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-dev-worker" },
    };

    async function buildFull(machineUuids: Record<string, string> = {}, overrides: Record<string, unknown> = {}) {
        registered = [];
        uuids = machineUuids;
        const { SparkCluster } = await import("../../cluster/sparkCluster");
        const config = devConfig(overrides);
        const cluster = new SparkCluster("dev", { stack: "dev", config, baseImage: { path: "/images/base.qcow2" }, systems, ssh: { identityFile: "/k", knownHostsFile: "/kh" } });
        const all = [cluster.network!, cluster.pool, ...cluster.nodes.flatMap((n) => [n.volume, n.domain]), ...cluster.deployments, ...(cluster.health ? [cluster.health] : [])];
        await new Promise<void>((resolve) => pulumi.all(all.map((r) => r.id)).apply(() => resolve()));
        const one = (t: string) => registered.filter((r) => r.type === `pulumi-nodejs:dynamic/nixspark:${t}`);
        return { domains: one("Domain"), deployments: one("NixosDeployment"), health: one("SparkHealth") };
    }

    test("with authentication (the default) one cluster secret reaches every deployment with the secret settings, and what to restart", async () => {
        registered = [];
        const { SparkCluster } = await import("../../cluster/sparkCluster");
        const config = devConfig();
        const cluster = new SparkCluster("dev", {
            stack: "dev",
            config,
            baseImage: { path: "/images/base.qcow2" },
            systems,
            ssh: { identityFile: "/k", knownHostsFile: "/kh" },
            sparkSecrets: pulumi.secret({ "spark.ssl.keyPassword": "pw" }),
        });
        await new Promise<void>((resolve) => pulumi.all(cluster.deployments.map((r) => r.id)).apply(() => resolve()));
        const secrets = registered.filter((r) => r.type === "pulumi-nodejs:dynamic/nixspark:ClusterSecret");
        expect(secrets.map((r) => [r.name, r.inputs.generation])).toEqual([["dev-spark-secret", 1]]);
        const deps = registered.filter((r) => r.type === "pulumi-nodejs:dynamic/nixspark:NixosDeployment");
        expect(deps).toHaveLength(3);
        for (const d of deps) {
            // Sent to the engine as a secret (Pulumi's secret signature), so the state keeps it encrypted.
            expect(d.inputs.secretProperties).toEqual({
                "4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270",
                value: "spark.authenticate.secret mock-cluster-secret\nspark.ssl.keyPassword pw\n",
            });
            expect(d.inputs.secretUnits).toEqual(["nixspark-spark-conf.service", d.inputs.node === "master" ? "spark-master.service" : "spark-worker.service"]);
        }
    });

    test("the S3 keys reach every deployment inside the secret properties only: no other input of any resource holds them", async () => {
        registered = [];
        const { SparkCluster } = await import("../../cluster/sparkCluster");
        const config = { ...devConfig(), s3: { endpoint: "http://10.77.0.1:9000" }, s3AccessKeyId: "AKIAS3KEYIDOFTHETEST", s3SecretAccessKey: "s3-secret-of-the-test" };
        const cluster = new SparkCluster("dev", { stack: "dev", config, baseImage: { path: "/images/base.qcow2" }, systems, ssh: { identityFile: "/k", knownHostsFile: "/kh" }, sparkSecrets: pulumi.secret({}) });
        await new Promise<void>((resolve) => pulumi.all(cluster.deployments.map((r) => r.id)).apply(() => resolve()));
        const deps = registered.filter((r) => r.type === "pulumi-nodejs:dynamic/nixspark:NixosDeployment");
        expect(deps).toHaveLength(3);
        for (const d of deps) {
            expect(d.inputs.secretProperties).toEqual({
                "4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270",
                value: "spark.authenticate.secret mock-cluster-secret\nspark.hadoop.fs.s3a.access.key AKIAS3KEYIDOFTHETEST\nspark.hadoop.fs.s3a.secret.key s3-secret-of-the-test\n",
            });
        }
        const elsewhere = registered.filter((r) => /AKIAS3KEYIDOFTHETEST|s3-secret-of-the-test/.test(JSON.stringify({ ...r.inputs, secretProperties: undefined })));
        expect(elsewhere.map((r) => r.name)).toEqual([]);
    });

    test("with the health gate off nothing asks Spark: no per-node verification, no decommission", async () => {
        registered = [];
        const { SparkCluster } = await import("../../cluster/sparkCluster");
        const base = devConfig();
        const off = { ...base, health: { ...base.health, enabled: false } };
        const cluster = new SparkCluster("dev", { stack: "dev", config: off, baseImage: { path: "/images/base.qcow2" }, systems, ssh: { identityFile: "/k", knownHostsFile: "/kh" } });
        await new Promise<void>((resolve) => pulumi.all(cluster.deployments.map((r) => r.id)).apply(() => resolve()));
        const deps = registered.filter((r) => r.type === "pulumi-nodejs:dynamic/nixspark:NixosDeployment");
        expect(deps.map((d) => d.inputs.spark)).toEqual([undefined, undefined, undefined]);
        registered = [];
        const on = new SparkCluster("dev", { stack: "dev", config: base, baseImage: { path: "/images/base.qcow2" }, systems, ssh: { identityFile: "/k", knownHostsFile: "/kh" } });
        await new Promise<void>((resolve) => pulumi.all(on.deployments.map((r) => r.id)).apply(() => resolve()));
        expect(registered.filter((r) => r.type === "pulumi-nodejs:dynamic/nixspark:NixosDeployment").map((d) => d.inputs.spark?.role).sort()).toEqual(["master", "worker", "worker"]);
    });

    test("with deployments, a VM's restart is its deployment's (in rollout order): each domain says so, each deployment knows its VM, size and definition", async () => {
        const { domains, deployments } = await buildFull();
        expect(domains.map((d) => d.inputs.restartBy)).toEqual(["deployment", "deployment", "deployment"]);
        for (const d of deployments) {
            const dom = domains.find((x) => x.name === d.inputs.vm.domain)!;
            // The deployment restarts its VM into the same definition its Domain saves.
            const def = dom.inputs;
            expect(def.resilience).toBe("watchdog i6300esb/reset, panic isa"); // the watchdog and panic devices, in every domain
            expect(d.inputs.vm).toEqual({
                uri: def.uri,
                domain: def.name,
                diskPath: expect.stringMatching(new RegExp(`/${def.name}\\.qcow2$`)),
                // Its Volume's identity: a re-created disk gets a new one, and the deployment applies the role again.
                diskId: `disk-id-of-${def.name}-disk`,
                mac: def.mac,
                vcpus: def.vcpus,
                memoryMiB: def.memoryMiB,
                shutdownTimeoutSeconds: def.shutdownTimeoutSeconds,
                definition: { domainType: def.domainType, consoleLog: def.consoleLog, network: "dev-net", hostname: def.hostname, resilience: "watchdog i6300esb/reset, panic isa" },
            });
        }
        expect(new Set(deployments.map((d) => d.inputs.vm.domain)).size).toBe(3);
    });

    test("the shared data directory (nixspark:data): every domain shares it by its tag and each deployment restarts its VM into that same definition; none without data.path", async () => {
        const { domains, deployments } = await buildFull({}, { data: parseConfig({ data: { path: "/srv/spark-data", tag: "datasets", virtiofsd: "/usr/lib/qemu/virtiofsd" } }).data });
        expect(domains).toHaveLength(3);
        for (const d of domains) expect(d.inputs).toMatchObject({ dataDir: "/srv/spark-data", dataTag: "datasets", virtiofsd: "/usr/lib/qemu/virtiofsd" });
        for (const d of deployments) expect(d.inputs.vm.definition).toMatchObject({ dataDir: "/srv/spark-data", dataTag: "datasets", virtiofsd: "/usr/lib/qemu/virtiofsd" });
        const plain = await buildFull();
        for (const d of plain.domains) expect(d.inputs).not.toHaveProperty("dataDir");
    });

    test("the closure diff is printed once per role: by the master and by the first worker to switch (the canary), no other node", async () => {
        const { deployments } = await buildFull();
        expect(Object.fromEntries(deployments.map((d) => [d.inputs.node, d.inputs.closureDiff ?? false]))).toEqual({ master: true, "worker-1": true, "worker-2": false });
    });

    test("host keys: checked against each VM's console log when asked (the default for the stack's own image), trusted on first use for an image of the user's", async () => {
        const { SparkCluster } = await import("../../cluster/sparkCluster");
        const base = devConfig(); // image.path: an image of the user's
        for (const [hostKeys, expected] of [[undefined, [undefined, undefined, undefined]], ["console", ["/logs/dev-master-console.log", "/logs/dev-worker-1-console.log", "/logs/dev-worker-2-console.log"]]] as const) {
            registered = [];
            const config = { ...base, ssh: { ...base.ssh, hostKeys } };
            const c = new SparkCluster("dev", { stack: "dev", config, baseImage: { path: "/images/base.qcow2" }, systems, ssh: { identityFile: "/k", knownHostsFile: "/kh" }, consoleLogDir: "/logs/" });
            await new Promise<void>((resolve) => pulumi.all(c.deployments.map((r) => r.id)).apply(() => resolve()));
            const deps = registered.filter((r) => r.type === "pulumi-nodejs:dynamic/nixspark:NixosDeployment").sort((a, b) => a.name.localeCompare(b.name));
            expect(deps.map((d) => d.inputs.consoleLog)).toEqual(expected);
        }
        // The stack's own image (no image.path) prints its host keys on the console: "console" unless the stack says otherwise.
        const own = { ...base, image: { ...base.image, path: undefined } };
        for (const [hostKeys, expected] of [[undefined, ["/logs/dev-master-console.log", "/logs/dev-worker-1-console.log", "/logs/dev-worker-2-console.log"]], ["first-use", [undefined, undefined, undefined]]] as const) {
            registered = [];
            const config = { ...own, ssh: { ...own.ssh, hostKeys } };
            const c = new SparkCluster("dev", { stack: "dev", config, baseImage: { path: "/nix/store/00000000000000000000000000000000-base-image/nixos.qcow2" }, systems, ssh: { identityFile: "/k", knownHostsFile: "/kh" }, consoleLogDir: "/logs/" });
            await new Promise<void>((resolve) => pulumi.all(c.deployments.map((r) => r.id)).apply(() => resolve()));
            const deps = registered.filter((r) => r.type === "pulumi-nodejs:dynamic/nixspark:NixosDeployment").sort((a, b) => a.name.localeCompare(b.name));
            expect(deps.map((d) => d.inputs.consoleLog)).toEqual(expected);
        }
    });

    test("without authentication there is no secret and nothing to deliver", async () => {
        registered = [];
        const { SparkCluster } = await import("../../cluster/sparkCluster");
        const base = devConfig();
        const config = { ...base, security: { ...base.security, authenticate: false } };
        const cluster = new SparkCluster("dev", { stack: "dev", config, baseImage: { path: "/images/base.qcow2" }, systems, ssh: { identityFile: "/k", knownHostsFile: "/kh" } });
        await new Promise<void>((resolve) => pulumi.all(cluster.deployments.map((r) => r.id)).apply(() => resolve()));
        expect(registered.filter((r) => r.type === "pulumi-nodejs:dynamic/nixspark:ClusterSecret")).toEqual([]);
        expect(registered.filter((r) => r.type === "pulumi-nodejs:dynamic/nixspark:NixosDeployment").every((d) => d.inputs.secretProperties === undefined)).toBe(true);
    });

    test("each domain is given its host name (the systemd credential libvirt hands the guest)", async () => {
        const g = await buildFull();
        expect(g.domains.map((d) => [d.name, d.inputs.hostname]).sort()).toEqual([
            ["dev-master", "dev-master"],
            ["dev-worker-1", "dev-worker-1"],
            ["dev-worker-2", "dev-worker-2"],
        ]);
    });

    test("the health trigger holds every node's machine id, the same one its deployment gets", async () => {
        const g = await buildFull({ "dev-master": "u-m", "dev-worker-1": "u-w1", "dev-worker-2": "u-w2" });
        expect(g.health).toHaveLength(1);
        expect(g.health[0].inputs.trigger.machineIds).toEqual(["master=u-m", "worker-1=u-w1", "worker-2=u-w2"]);
        expect(g.deployments.map((d) => `${d.inputs.node}=${d.inputs.machineId}`).sort()).toEqual(["master=u-m", "worker-1=u-w1", "worker-2=u-w2"]);
    });

    test("a re-created VM (new UUID) changes the trigger, so the gate runs again", async () => {
        const before = (await buildFull({ "dev-master": "u-m", "dev-worker-1": "u-w1", "dev-worker-2": "u-w2" })).health[0].inputs;
        const after = (await buildFull({ "dev-master": "u-m", "dev-worker-1": "u-w1-new", "dev-worker-2": "u-w2" })).health[0].inputs;
        expect(after.trigger).not.toEqual(before.trigger);
        const { sparkHealthProvider } = await import("../../providers/sparkHealth");
        const olds = { ...before, aliveWorkers: 2, totalCores: 2, totalMemoryMiB: 2048, checkedAt: "t", masterStatus: "ALIVE", workers: [] };
        expect(await sparkHealthProvider.diff!("id", olds, after)).toMatchObject({ changes: true, replaces: [] });
        expect(await sparkHealthProvider.diff!("id", olds, before)).toMatchObject({ changes: false });
    });

    test("the network's Pulumi name does not follow its libvirt name, so a rename is one resource replaced delete-first", async () => {
        registered = [];
        const { SparkCluster } = await import("../../cluster/sparkCluster");
        const base = devConfig();
        const renamed = { ...base, network: { ...base.network, name: "other" } };
        const cluster = new SparkCluster("dev", { stack: "dev", config: renamed, baseImage: { path: "/images/base.qcow2" } });
        await new Promise<void>((resolve) => pulumi.all([cluster.network!.id]).apply(() => resolve()));
        const nets = registered.filter((r) => r.type === "pulumi-nodejs:dynamic/nixspark:Network");
        expect(nets.map((n) => [n.name, n.inputs.name])).toEqual([["dev-network", "dev-other"]]);
        const first = await build();
        expect(first.networks.map((n) => [n.name, n.inputs.name])).toEqual([["dev-network", "dev-net"]]);
    });
});
