// The example stack files under examples/ (README, "Example stacks") are
// what a newcomer copies first: each must pass the program's own config
// checks (cluster/config.ts, the same ones preview runs), start an executor
// on every worker, and be the size its header promises.
import * as fs from "node:fs";
import * as path from "node:path";
import { checkConfig, rawFromPulumiConfig, workerMemoryProblems } from "../../cluster/config";

const yaml = require("js-yaml");
const EXAMPLES = path.join(__dirname, "../../examples");

/** A stack file's config as Pulumi hands it to the program (objects JSON-encoded). */
function load(file: string) {
    const doc = yaml.load(fs.readFileSync(path.join(EXAMPLES, file), "utf8")) as Record<string, unknown>;
    expect(Object.keys(doc)).toEqual(["config"]);
    const flat: Record<string, string> = {};
    for (const [k, v] of Object.entries(doc.config as Record<string, unknown>)) {
        expect(k).toMatch(/^nixspark:/);
        flat[k] = typeof v === "string" ? v : JSON.stringify(v);
    }
    return checkConfig(rawFromPulumiConfig(flat));
}

const guestMemoryMiB = (c: ReturnType<typeof load>["config"]) => c.master.memoryMiB + c.workers.count * c.workers.memoryMiB;

test("every example stack file is named Pulumi.<stack>.yaml and passes the program's config checks", () => {
    const files = fs.readdirSync(EXAMPLES).filter((f) => f.endsWith(".yaml"));
    expect(files.sort()).toEqual(["Pulumi.laptop.yaml", "Pulumi.workstation.yaml"]);
    for (const f of files) {
        const { config, problems } = load(f);
        expect({ f, problems }).toEqual({ f, problems: [] });
        expect({ f, memory: workerMemoryProblems(config) }).toEqual({ f, memory: [] });
    }
});

test("laptop: one master and one worker, under 4 GiB of guest memory in all", () => {
    const { config } = load("Pulumi.laptop.yaml");
    expect(config.workers.count).toBe(1);
    expect(guestMemoryMiB(config)).toBeLessThan(4096);
});

test("workstation: one master and eight workers", () => {
    const { config } = load("Pulumi.workstation.yaml");
    expect(config.workers.count).toBe(8);
    expect(guestMemoryMiB(config)).toBe(2048 + 8 * 3072);
});

test("the examples' networks differ from each other and from the dev stack's, so they can share a host", () => {
    const dev = yaml.load(fs.readFileSync(path.join(__dirname, "../../Pulumi.dev.yaml"), "utf8")).config["nixspark:network"].cidr;
    const cidrs = ["Pulumi.laptop.yaml", "Pulumi.workstation.yaml"].map((f) => load(f).config.network.cidr);
    expect(new Set([dev, ...cidrs]).size).toBe(3);
});
