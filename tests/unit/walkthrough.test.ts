// The README's five-minute walkthrough, its first block (bringing the
// cluster up): the stack file it copies and the settings it makes pass the
// program's own config rules, so a newcomer's first `pulumi up` gets past
// the config check. (The second block, using the cluster, runs as written
// in tests/integration/submit.test.ts; `pulumi up` itself is what the e2e
// stories run.)
import * as fs from "node:fs";
import * as path from "node:path";
import { checkConfig, rawFromPulumiConfig } from "../../cluster/config";
import { commands, walkthroughBlock } from "../helpers/readmeBlocks";

const yaml = require("js-yaml");
const REPO = path.resolve(__dirname, "../..");
const HOME = "/home/newcomer";

/** `pulumi config set --path a.b VALUE` onto the stack file's config (Pulumi's own --path semantics for plain keys). */
function setPath(config: Record<string, unknown>, key: string, value: string) {
    const [top, ...rest] = key.split(".");
    const full = `nixspark:${top}`;
    if (rest.length === 0) {
        config[full] = value;
        return;
    }
    let o = (config[full] ??= {}) as Record<string, unknown>;
    for (const k of rest.slice(0, -1)) o = (o[k] ??= {}) as Record<string, unknown>;
    // Pulumi's --path stores true/false and numbers as such.
    o[rest[rest.length - 1]] = value === "true" ? true : value === "false" ? false : /^\d+$/.test(value) ? Number(value) : value;
}

test("walkthrough:up: the copied stack file plus the settings it makes pass the config check, in the stack it selects", () => {
    const cmds = commands(walkthroughBlock("up")).map((c) => c.map((w) => w.replace(/^~\//, `${HOME}/`)));
    const cp = cmds.find((c) => c[0] === "cp");
    expect(cp).toBeDefined();
    const [, from, to] = cp!;
    const stack = /^Pulumi\.(.+)\.yaml$/.exec(to)?.[1];
    expect(stack).toBeDefined();
    expect(fs.existsSync(path.join(REPO, from))).toBe(true);
    expect(cmds).toContainEqual(["pulumi", "stack", "select", "--create", stack!]);

    const config = yaml.load(fs.readFileSync(path.join(REPO, from), "utf8")).config as Record<string, unknown>;
    const sets = cmds.filter((c) => c[0] === "pulumi" && c[1] === "config" && c[2] === "set");
    expect(sets.length).toBeGreaterThan(0);
    for (const c of sets) {
        expect(c.slice(3, 4)).toEqual(["--path"]);
        setPath(config, c[4], c[5]);
    }
    const flat: Record<string, string> = {};
    for (const [k, v] of Object.entries(config)) flat[k] = typeof v === "string" ? v : JSON.stringify(v);
    const { config: parsed, problems } = checkConfig(rawFromPulumiConfig(flat));
    expect(problems).toEqual([]);

    // The data directory the jobs use: made before up (preview refuses a missing one), and read-write for their output.
    expect(parsed.data?.path).toBe(`${HOME}/nixspark-data`);
    expect(parsed.data?.readOnly).toBe(false);
    const mkdir = cmds.findIndex((c) => c[0] === "mkdir" && c.includes(parsed.data!.path!));
    expect(mkdir).toBeGreaterThanOrEqual(0);
    expect(mkdir).toBeLessThan(cmds.findIndex((c) => c[0] === "pulumi" && c[1] === "up"));
});
