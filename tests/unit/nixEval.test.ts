// One `nix eval` per program run, and none for an unchanged one
// (cluster/nixParams.ts: prepareNix, and its cache in .nixspark/<stack>/nix-eval.json, cluster/evalCache.ts).
//
// Real Nix throughout. Every `nix` process is counted by a PATH shim: a
// directory whose `nix` appends its arguments to a log and execs the real one.
// Most tests evaluate tests/fixtures/nix-eval-flake (nix/flake.nix's
// attribute names in miniature, milliseconds per evaluation) with its nixpkgs
// input overridden by a copy of that fixture's pkgs/; one test evaluates the
// real nix/flake.nix against the stand-in nixpkgs.
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseConfig } from "../../cluster/config";
import { buildTopology } from "../../cluster/topology";
import { evalDrvPath, evalSystemPath, gcRootDir, imageAttribute, stackEvaluationsAttribute } from "../../cluster/nixFlake";
import { nixEvalCacheFile, nixEvalCacheKey } from "../../cluster/evalCache";
import { planNixEvaluations, prepareNix, PrepareNixOptions } from "../../cluster/nixParams";
import { FIXTURES, NIX_DIR, nixEnv } from "../fixtures/nix-env";

jest.setTimeout(120_000);

const KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyFakeKeyFakeKeyFakeKeyFakeKeyFakeKey me@host";
const FIXTURE = path.join(FIXTURES, "nix-eval-flake");

const temps: string[] = [];
afterAll(() => temps.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

function tempDir(prefix: string): string {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    temps.push(d);
    return d;
}

/**
 * A `nix` that records its arguments (one line per process) and runs the
 * real one; `count()` is how many nix processes ran since the shim was made.
 */
function nixShim(): { env: NodeJS.ProcessEnv; count: () => number; lines: () => string[] } {
    const real = execFileSync("sh", ["-c", "command -v nix"], { encoding: "utf8", env: nixEnv() }).trim();
    const dir = tempDir("nixspark-shim-");
    const log = path.join(dir, "calls.log");
    fs.writeFileSync(log, "");
    fs.writeFileSync(path.join(dir, "nix"), `#!/bin/sh\nprintf '%s\\n' "$*" >> '${log}'\nexec '${real}' "$@"\n`, { mode: 0o755 });
    const lines = () => fs.readFileSync(log, "utf8").split("\n").filter((l) => l !== "");
    return { env: { ...nixEnv(), PATH: `${dir}:${process.env.PATH}` }, count: () => lines().length, lines };
}

/** A project: nix/ (a copy of a flake), pkgs/ (the nixpkgs override), and the options prepareNix runs with. */
function project(flakeSrc = path.join(FIXTURE, "flake"), pkgsSrc: string | undefined = path.join(FIXTURE, "pkgs")) {
    const proj = tempDir("nixspark-eval-");
    fs.cpSync(flakeSrc, path.join(proj, "nix"), { recursive: true });
    const extraArgs = ["--no-write-lock-file"];
    if (pkgsSrc) {
        fs.cpSync(pkgsSrc, path.join(proj, "pkgs"), { recursive: true });
        extraArgs.push("--override-input", "nixpkgs", `path:${path.join(proj, "pkgs")}`);
    }
    const shim = nixShim();
    const opts: PrepareNixOptions = { cwd: proj, extraArgs, env: shim.env };
    return { proj, dir: path.join(proj, "nix"), flake: `path:${path.join(proj, "nix")}`, opts, shim };
}

function config(stack: string, raw: Record<string, unknown> = {}) {
    const cfg = parseConfig({ ssh: { publicKey: KEY }, ...raw });
    return { stack, cfg, topo: buildTopology(stack, cfg) };
}

/** prepareNix, and how many nix processes it started (counted by the shim). */
async function prepare(p: ReturnType<typeof project>, c: ReturnType<typeof config>, more: Partial<PrepareNixOptions> = {}) {
    const before = p.shim.count();
    const r = await prepareNix(c.stack, c.cfg, c.topo, { ...p.opts, ...more });
    return { ...r, processes: p.shim.count() - before };
}

const values = (r: Awaited<ReturnType<typeof prepareNix>>) => ({
    image: r.image?.drvPath,
    master: r.systems?.master.expectedSystem,
    worker: r.systems?.worker.expectedSystem,
});

beforeAll(() => {
    nixEnv();
});

describe("one evaluation, then none", () => {
    test("a first prepare runs exactly one nix process and gives what separate `nix eval --raw` calls give", async () => {
        const p = project();
        const c = config("dev");
        const r = await prepare(p, c);
        expect(r.processes).toBe(1);
        expect(p.shim.lines()[0]).toContain(`eval --json`);
        expect(p.shim.lines()[0]).toContain(`${p.flake}#lib.stackEvaluations.dev`);
        expect(r).toMatchObject({ cached: false, evaluations: 1 });

        const raw = { extraArgs: p.opts.extraArgs };
        expect(values(r)).toEqual({
            image: await evalDrvPath(p.flake, imageAttribute("dev"), raw),
            master: await evalSystemPath(p.flake, "dev-master", raw),
            worker: await evalSystemPath(p.flake, "dev-worker", raw),
        });
        expect(r.image!.drvPath).toMatch(/^\/nix\/store\/[a-z0-9]{32}-fixture-disk-image\.drv$/);
        expect(r.systems!.master.expectedSystem).not.toBe(r.systems!.worker.expectedSystem);
        expect(r.image).toMatchObject({ flake: p.flake, attribute: "packages.x86_64-linux.dev-base-image", gcRootDir: path.join(p.proj, ".nixspark/dev/gcroots") });
        expect(r.systems).toMatchObject({ evaluatedFlake: p.flake, master: { configuration: "dev-master" }, worker: { configuration: "dev-worker" } });
        expect(r.systems!.flake).toMatch(/^path:\/nix\/store\/[0-9a-z]{32}-source$/);
    });

    test("a second prepare with nothing changed runs no nix process and gives the same values", async () => {
        const p = project();
        const c = config("dev");
        const first = await prepare(p, c);
        const second = await prepare(p, c);
        expect(second.processes).toBe(0);
        expect(second).toMatchObject({ cached: true, evaluations: 0 });
        expect(values(second)).toEqual(values(first));
        expect(second.image).toEqual(first.image);
        expect(second.systems).toEqual(first.systems);
    });

    test("a stack name that needs quoting is one evaluation too, then cached", async () => {
        const p = project();
        const c = config("st.ack");
        expect(stackEvaluationsAttribute("st.ack")).toBe('lib.stackEvaluations."st.ack"');
        const first = await prepare(p, c);
        expect(first.processes).toBe(1);
        expect(first.image!.drvPath).toMatch(/fixture-disk-image\.drv$/);
        expect((await prepare(p, c)).processes).toBe(0);
    });
});

describe("what makes it evaluate again (exactly once)", () => {
    /** Prepares until cached, applies a change, and returns the values before and after it. */
    async function across(change: (p: ReturnType<typeof project>) => void, next?: ReturnType<typeof config>) {
        const p = project();
        const c = config("dev", { spark: { settings: { "spark.executor.memory": "1g" } } });
        const before = await prepare(p, c);
        expect((await prepare(p, c)).processes).toBe(0);
        change(p);
        const after = await prepare(p, next ?? c);
        expect(after.processes).toBe(1);
        expect(after.cached).toBe(false);
        // ... and is cached again right away.
        expect((await prepare(p, next ?? c)).processes).toBe(0);
        return { before: values(before), after: values(after) };
    }

    test("a Spark setting (the stack's settings file)", async () => {
        const next = config("dev", { spark: { settings: { "spark.executor.memory": "2g" } } });
        const { before, after } = await across(() => undefined, next);
        expect(after.master).not.toBe(before.master);
        expect(after.worker).not.toBe(before.worker);
        expect(after.image).toBe(before.image); // the image does not carry Spark settings
    });

    test("the network mode (bridge writes networkMode into the stack's settings file)", async () => {
        const next = config("dev", { spark: { settings: { "spark.executor.memory": "1g" } }, network: { mode: "bridge", bridge: "br0" } });
        await across(() => undefined, next);
    });

    test("a file under nix/modules", async () => {
        const { before, after } = await across((p) => fs.appendFileSync(path.join(p.dir, "modules/role.nix"), "# edited\n"));
        expect(after).toEqual(before); // a comment changes nothing Nix computes, but it had to be evaluated to know
    });

    test("flake.lock", async () => {
        await across((p) => fs.appendFileSync(path.join(p.dir, "flake.lock"), "\n"));
    });

    test("the content of an --override-input directory", async () => {
        const { before, after } = await across((p) => fs.writeFileSync(path.join(p.proj, "pkgs/version"), "24.11-fixture-2\n"));
        expect(after.image).not.toBe(before.image);
        expect(after.master).not.toBe(before.master);
    });

    test("not: another stack's settings, a result symlink, a hidden directory", async () => {
        const p = project();
        const c = config("dev");
        await prepare(p, c);
        fs.writeFileSync(path.join(p.dir, "stacks/other.json"), JSON.stringify({ stack: "other", sshPublicKey: "x" }));
        fs.symlinkSync("/nix/store/nothing-here", path.join(p.dir, "result"));
        fs.mkdirSync(path.join(p.dir, ".git"));
        fs.writeFileSync(path.join(p.dir, ".git/HEAD"), "ref: refs/heads/main\n");
        const again = await prepare(p, c);
        expect(again).toMatchObject({ cached: true, processes: 0 });
    });
});

describe("what is applied is what was evaluated (the flake snapshot)", () => {
    test("deployments get the store copy the evaluation read; an edit under nix/ afterwards does not change what it evaluates to", async () => {
        const p = project();
        const c = config("dev", { spark: { settings: { "spark.executor.memory": "1g" } } });
        const first = await prepare(p, c);
        const ref = first.systems!.flake;
        expect(ref).toMatch(/^path:\/nix\/store\/[0-9a-z]{32}-source$/);
        expect(first.systems!.evaluatedFlake).toBe(p.flake);
        const snapshot = ref.slice("path:".length);
        expect(fs.readFileSync(path.join(snapshot, "stacks/dev.json"), "utf8")).toBe(fs.readFileSync(path.join(p.dir, "stacks/dev.json"), "utf8"));
        const raw = { extraArgs: p.opts.extraArgs, env: p.shim.env };
        expect(await evalSystemPath(ref, "dev-worker", raw)).toBe(first.systems!.worker.expectedSystem);

        // Between the program's evaluation and the switch: another run (or an
        // editor) rewrites the stack's settings in the mutable directory.
        await prepareNix("dev", config("dev", { spark: { settings: { "spark.executor.memory": "2g" } } }).cfg, c.topo, p.opts);
        const moved = await evalSystemPath(p.flake, "dev-worker", raw);
        expect(moved).not.toBe(first.systems!.worker.expectedSystem);
        // The snapshot still evaluates to what the program previewed.
        expect(await evalSystemPath(ref, "dev-worker", raw)).toBe(first.systems!.worker.expectedSystem);
        expect(fs.readFileSync(path.join(snapshot, "stacks/dev.json"), "utf8")).toContain('"1g"');
    });

    test("the snapshot has a GC root in the stack's cache directory while the program runs, moved to each new snapshot, and none is made when it is already there", async () => {
        const p = project();
        const first = await prepare(p, config("dev", { spark: { settings: { "spark.executor.memory": "1g" } } }));
        const snapshot = first.systems!.flake.slice("path:".length);
        const root = path.join(gcRootDir("dev", p.proj), `flake-source-${process.pid}`);
        expect(fs.readlinkSync(root)).toBe(snapshot);
        const roots = execFileSync("nix-store", ["--query", "--roots", snapshot], { encoding: "utf8", env: nixEnv() });
        expect(roots).toContain(root);
        const before = fs.lstatSync(root).mtimeMs;
        await prepare(p, config("dev", { spark: { settings: { "spark.executor.memory": "1g" } } }));
        expect(fs.lstatSync(root).mtimeMs).toBe(before);
        const second = await prepare(p, config("dev", { spark: { settings: { "spark.executor.memory": "2g" } } }));
        expect(second.systems!.flake).not.toBe(first.systems!.flake);
        expect(fs.readlinkSync(root)).toBe(second.systems!.flake.slice("path:".length));
        // The cache directory may go: the next run pins the snapshot again.
        fs.rmSync(path.join(p.proj, ".nixspark"), { recursive: true, force: true });
        await prepare(p, config("dev", { spark: { settings: { "spark.executor.memory": "2g" } } }));
        expect(fs.readlinkSync(root)).toBe(second.systems!.flake.slice("path:".length));
    });

    test("the program's root goes when the program exits", async () => {
        const p = project();
        const script = `require("ts-node/register/transpile-only"); const n = require(${JSON.stringify(path.resolve(__dirname, "../../cluster/nixParams"))});
            n.pinFlakeSnapshot(process.argv[1], process.argv[2]).then(() => { const fs = require("fs"); console.log(fs.readdirSync(process.argv[2]).join(",")); });`;
        const first = await prepare(p, config("dev"));
        const snapshot = first.systems!.flake.slice("path:".length);
        const dir = path.join(p.proj, "roots");
        const out = execFileSync(process.execPath, ["-e", script, snapshot, dir], { encoding: "utf8", env: nixEnv(), cwd: path.resolve(__dirname, "../..") });
        expect(out.trim()).toMatch(/^flake-source-\d+$/);
        expect(fs.readdirSync(dir)).toEqual([]);
    });

    test("a cached evaluation whose snapshot is gone from the store is evaluated again", async () => {
        const p = project();
        const c = config("dev");
        const first = await prepare(p, c);
        const file = nixEvalCacheFile("dev", p.proj);
        const entry = JSON.parse(fs.readFileSync(file, "utf8"));
        expect(entry.values.source).toBe(first.systems!.flake.slice("path:".length));
        entry.values.source = "/nix/store/00000000000000000000000000000000-source";
        fs.writeFileSync(file, JSON.stringify(entry));
        const again = await prepare(p, c);
        expect(again).toMatchObject({ cached: false, processes: 1 });
        expect(again.systems!.flake).toBe(first.systems!.flake);
    });
});

describe("the cache file", () => {
    test("is 0600 in a 0700 directory, and names the key it was computed for", async () => {
        const p = project();
        await prepare(p, config("dev"));
        const file = nixEvalCacheFile("dev", p.proj);
        expect(file).toBe(path.join(p.proj, ".nixspark/dev/nix-eval.json"));
        expect(fs.statSync(file).mode & 0o777).toBe(0o600);
        expect(fs.statSync(path.dirname(file)).mode & 0o777).toBe(0o700);
        const entry = JSON.parse(fs.readFileSync(file, "utf8"));
        expect(entry.key).toMatch(/^[0-9a-f]{64}$/);
        expect(Object.keys(entry.values).sort()).toEqual(["imageDrvPath", "packages", "source", "systems"]);
        expect(fs.readdirSync(path.dirname(file)).filter((f) => f.endsWith(".tmp"))).toEqual([]);
    });

    test("a corrupted or foreign file is ignored: evaluated again, and replaced", async () => {
        const p = project();
        const c = config("dev");
        const good = values(await prepare(p, c));
        const file = nixEvalCacheFile("dev", p.proj);
        const entry = JSON.parse(fs.readFileSync(file, "utf8"));
        const bad = [
            "{ half a file",
            "null",
            JSON.stringify({ ...entry, version: 999 }),
            JSON.stringify({ ...entry, key: "0".repeat(64) }), // another project's, or older inputs
            JSON.stringify({ ...entry, values: { imageDrvPath: "not a path", systems: entry.values.systems } }),
            JSON.stringify({ ...entry, values: { imageDrvPath: entry.values.imageDrvPath } }),
        ];
        for (const text of bad) {
            fs.writeFileSync(file, text);
            const r = await prepare(p, c);
            expect({ text, processes: r.processes, cached: r.cached }).toEqual({ text, processes: 1, cached: false });
            expect(values(r)).toEqual(good);
            expect(JSON.parse(fs.readFileSync(file, "utf8"))).toEqual(entry);
        }
    });

    test("a failed evaluation is not cached, and fails with Nix's message", async () => {
        const p = project();
        const c = config("dev");
        const role = path.join(p.dir, "modules/role.nix");
        const good = fs.readFileSync(role, "utf8");
        fs.writeFileSync(role, "role: throw \"fixture: this role is broken\"\n");
        await expect(prepare(p, c)).rejects.toThrow(/fixture: this role is broken/);
        expect(fs.existsSync(nixEvalCacheFile("dev", p.proj))).toBe(false);
        await expect(prepare(p, c)).rejects.toThrow(/fixture: this role is broken/);
        expect(p.shim.count()).toBe(2); // each failing run asked Nix again
        fs.writeFileSync(role, good);
        expect((await prepare(p, c)).processes).toBe(1);
        expect((await prepare(p, c)).processes).toBe(0);
    });

    test("NIXSPARK_NIX_EVAL_CACHE=0 turns it off (one evaluation every run, nothing read or written)", async () => {
        const p = project();
        const c = config("dev");
        const env = { ...p.opts.env, NIXSPARK_NIX_EVAL_CACHE: "0" };
        expect((await prepare(p, c, { env })).processes).toBe(1);
        expect((await prepare(p, c, { env })).processes).toBe(1);
        expect(fs.existsSync(nixEvalCacheFile("dev", p.proj))).toBe(false);
    });
});

describe("only what the stack needs", () => {
    test("another image attribute: a second evaluation, for its drvPath alone; then none", async () => {
        const p = project();
        const c = config("dev", { image: { attribute: "packages.x86_64-linux.other-image" } });
        const r = await prepare(p, c);
        expect(r.processes).toBe(2);
        expect(p.shim.lines().some((l) => l.endsWith(`${p.flake}#packages.x86_64-linux.other-image.drvPath`))).toBe(true);
        expect(p.shim.lines().some((l) => l.endsWith(`${p.flake}#lib.stackEvaluations.dev.roles`))).toBe(true);
        expect(r.image!.attribute).toBe("packages.x86_64-linux.other-image");
        expect(r.image!.drvPath).toBe(await evalDrvPath(p.flake, "packages.x86_64-linux.other-image", { extraArgs: p.opts.extraArgs }));
        expect((await prepare(p, c)).processes).toBe(0);
    });

    test("image.path set: the roles only; deploy disabled too: no nix at all", async () => {
        const p = project();
        const roles = config("dev", { image: { path: "/images/base.qcow2" } });
        const r = await prepare(p, roles);
        expect(r.processes).toBe(1);
        expect(p.shim.lines()[0]).toMatch(/#lib\.stackEvaluations\.dev\.roles$/);
        expect(r.image).toBeUndefined();
        expect(r.systems!.master.expectedSystem).toMatch(/fixture-master-system$/);

        const nothing = config("dev", { image: { path: "/images/base.qcow2" }, deploy: { enabled: false } });
        expect(await prepare(p, nothing)).toEqual({ cached: false, evaluations: 0, processes: 0 });
    });

    test("image and roles from two flakes: each flake evaluated for its part, once", async () => {
        const p = project();
        const other = path.join(p.proj, "roles");
        fs.cpSync(p.dir, other, { recursive: true });
        const c = config("dev", { deploy: { flake: "path:./roles" } });
        const r = await prepare(p, c);
        expect(r.processes).toBe(2);
        expect(p.shim.lines().map((l) => l.split(" ").pop()).sort()).toEqual(
            [`${p.flake}#lib.stackEvaluations.dev.baseImage.drvPath`, `path:${other}#lib.stackEvaluations.dev.roles`].sort(),
        );
        expect(fs.existsSync(path.join(other, "stacks/dev.json"))).toBe(true);
        expect(r.systems!.evaluatedFlake).toBe(`path:${other}`);
        // The roles' snapshot is the roles' flake, not the image's.
        expect(fs.existsSync(path.join(r.systems!.flake.slice("path:".length), "stacks/dev.json"))).toBe(true);
        expect(r.systems!.flake).not.toBe(r.systems!.evaluatedFlake);
        expect((await prepare(p, c)).processes).toBe(0);
        // A change in the roles' flake alone is seen too.
        fs.appendFileSync(path.join(other, "modules/role.nix"), "# edited\n");
        expect((await prepare(p, c)).processes).toBe(2);
    });

    test("the plan (pure): which attribute of which flake", () => {
        const plan = (raw: Record<string, unknown>) => planNixEvaluations("dev", config("dev", raw).cfg, "/proj").map((e) => `${e.flake}#${e.attrPath}`);
        expect(plan({})).toEqual(["path:/proj/nix#lib.stackEvaluations.dev"]);
        expect(plan({ image: { flake: "./nix" } })).toEqual(["path:/proj/nix#lib.stackEvaluations.dev"]);
        expect(plan({ image: { attribute: "packages.x86_64-linux.mine" } })).toEqual([
            "path:/proj/nix#packages.x86_64-linux.mine.drvPath",
            "path:/proj/nix#lib.stackEvaluations.dev.roles",
        ]);
        expect(plan({ deploy: { flake: "github:me/roles" } })).toEqual([
            "path:/proj/nix#lib.stackEvaluations.dev.baseImage.drvPath",
            "github:me/roles#lib.stackEvaluations.dev.roles",
        ]);
        expect(plan({ image: { path: "/i.qcow2" } })).toEqual(["path:/proj/nix#lib.stackEvaluations.dev.roles"]);
        expect(plan({ deploy: { enabled: false } })).toEqual(["path:/proj/nix#lib.stackEvaluations.dev.baseImage.drvPath"]);
        expect(plan({ image: { path: "/i.qcow2" }, deploy: { enabled: false } })).toEqual([]);
    });
});

describe("the key", () => {
    function keyProject() {
        const proj = tempDir("nixspark-key-");
        fs.cpSync(NIX_DIR, path.join(proj, "nix"), { recursive: true });
        fs.writeFileSync(path.join(proj, "nix/stacks/dev.json"), '{"stack":"dev"}\n');
        fs.cpSync(path.join(FIXTURE, "pkgs"), path.join(proj, "pkgs"), { recursive: true });
        const c = config("dev");
        const opts: { cwd: string; extraArgs: string[]; env: Record<string, string | undefined> } = {
            cwd: proj,
            extraArgs: ["--override-input", "nixpkgs", `path:${path.join(proj, "pkgs")}`],
            env: { NIX_CONFIG: "a = b" },
        };
        const key = (o: Partial<typeof opts> = {}, stack = "dev", raw: Record<string, unknown> = {}) =>
            nixEvalCacheKey(stack, planNixEvaluations(stack, config(stack, raw).cfg, proj), { ...opts, ...o });
        return { proj, c, key };
    }

    test("changes with every input, and with nothing else", () => {
        const { proj, key } = keyProject();
        const base = key();
        expect(base).toMatch(/^[0-9a-f]{64}$/);
        expect(key()).toBe(base);
        const changed: [string, () => string | undefined, () => void][] = [
            ["the stack (the attribute asked)", () => key({}, "prod"), () => undefined],
            ["another image attribute", () => key({}, "dev", { image: { attribute: "packages.x86_64-linux.x" } }), () => undefined],
            ["the flake reference", () => key({}, "dev", { image: { flake: "path:./nix?x=1" }, deploy: { flake: "path:./nix?x=1" } }), () => undefined],
            ["the extra nix arguments", () => key({ extraArgs: ["--override-input", "nixpkgs", `path:${path.join(proj, "pkgs")}`, "--impure"] }), () => undefined],
            ["NIX_CONFIG", () => key({ env: { NIX_CONFIG: "a = c" } }), () => undefined],
            ["no NIX_CONFIG", () => key({ env: {} }), () => undefined],
        ];
        for (const [what, k] of changed) expect({ what, same: k() === base }).toEqual({ what, same: false });

        const edits: [string, () => void][] = [
            ["this stack's settings", () => fs.writeFileSync(path.join(proj, "nix/stacks/dev.json"), '{"stack":"dev","x":1}\n')],
            ["a module", () => fs.appendFileSync(path.join(proj, "nix/modules/spark.nix"), "\n")],
            ["flake.nix", () => fs.appendFileSync(path.join(proj, "nix/flake.nix"), "\n")],
            ["flake.lock", () => fs.appendFileSync(path.join(proj, "nix/flake.lock"), "\n")],
            ["a new file", () => fs.writeFileSync(path.join(proj, "nix/lib/new.nix"), "{}")],
            ["a renamed file", () => fs.renameSync(path.join(proj, "nix/lib/new.nix"), path.join(proj, "nix/lib/new2.nix"))],
            ["an executable bit", () => fs.chmodSync(path.join(proj, "nix/lib/new2.nix"), 0o755)],
            ["the override input's content", () => fs.writeFileSync(path.join(proj, "pkgs/version"), "other\n")],
        ];
        let last = base;
        for (const [what, edit] of edits) {
            edit();
            const now = key();
            expect({ what, same: now === last }).toEqual({ what, same: false });
            last = now;
        }

        const ignored: [string, () => void][] = [
            ["another stack's settings", () => fs.writeFileSync(path.join(proj, "nix/stacks/other.json"), "{}")],
            ["a half-written settings file", () => fs.writeFileSync(path.join(proj, "nix/stacks/dev.json.123.tmp"), "{")],
            ["a result symlink", () => fs.symlinkSync("/nix/store/x", path.join(proj, "nix/result"))],
            ["a result-* symlink", () => fs.symlinkSync("/nix/store/y", path.join(proj, "nix/result-qcow2"))],
            ["a hidden directory", () => fs.mkdirSync(path.join(proj, "nix/.direnv/x"), { recursive: true })],
            ["the project's own .nixspark", () => fs.mkdirSync(path.join(proj, ".nixspark/dev"), { recursive: true })],
        ];
        for (const [what, edit] of ignored) {
            edit();
            expect({ what, same: key() === last }).toEqual({ what, same: true });
        }
        // With a custom image attribute, every stack's settings count: it may read any of them.
        const custom = key({}, "dev", { image: { attribute: "packages.x86_64-linux.base-image" } });
        fs.writeFileSync(path.join(proj, "nix/stacks/other.json"), "{ }");
        expect(key({}, "dev", { image: { attribute: "packages.x86_64-linux.base-image" } })).not.toBe(custom);
    });

    test("a flake or an override input that is not a local directory is never cached", () => {
        const { key } = keyProject();
        expect(key({}, "dev", { deploy: { flake: "github:me/roles" } })).toBeUndefined();
        expect(key({ extraArgs: ["--override-input", "nixpkgs", "github:NixOS/nixpkgs/nixos-24.11"] })).toBeUndefined();
        expect(key({}, "dev", { image: { path: "/i.qcow2" }, deploy: { flake: "github:me/roles" } })).toBeUndefined();
    });

    test("hashing nix/ takes a few milliseconds (pure Node fs)", () => {
        const { key } = keyProject();
        key(); // warm the file cache
        const runs = 20;
        const t = process.hrtime.bigint();
        for (let i = 0; i < runs; i++) key();
        const ms = Number(process.hrtime.bigint() - t) / 1e6 / runs;
        console.log(`nixEvalCacheKey over nix/ and an override input: ${ms.toFixed(2)} ms`);
        expect(ms).toBeLessThan(50);
    });
});

describe("the real nix/flake.nix (stand-in nixpkgs)", () => {
    test("one nix process for image and roles, the same values as separate evaluations, then none", async () => {
        const p = project(NIX_DIR, undefined);
        p.opts.extraArgs!.push("--override-input", "nixpkgs", `path:${path.join(FIXTURES, "nix-stub-nixpkgs")}`);
        const c = config("dev");
        const first = await prepare(p, c);
        expect(first.processes).toBe(1);
        const raw = { extraArgs: p.opts.extraArgs };
        expect(values(first)).toEqual({
            image: await evalDrvPath(p.flake, imageAttribute("dev"), raw),
            master: await evalSystemPath(p.flake, "dev-master", raw),
            worker: await evalSystemPath(p.flake, "dev-worker", raw),
        });
        const second = await prepare(p, c);
        expect(second).toMatchObject({ cached: true, processes: 0 });
        expect(values(second)).toEqual(values(first));
    });
});
