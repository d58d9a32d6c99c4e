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

pulumi.runtime.setMocks(
    {
        newResource(args: pulumi.runtime.MockResourceArgs) {
            registered.push({ type: args.type, name: args.name, inputs: args.inputs });
            const state: Record<string, any> = { ...args.inputs };
            if (args.type === "pulumi-nodejs:dynamic/nixspark:Volume") {
                state.path = `/pool/${args.inputs.name}`;
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
    const ids = [cluster.network.id, cluster.pool.id, ...cluster.nodes.flatMap((n) => [n.volume.id, n.domain.id])];
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
