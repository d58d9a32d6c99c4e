// scripts/build.js on a two-file program in a temp directory: the build
// records exactly the sources it read, and the guard's staleness check (no
// TypeScript loaded, on every preview) notices an edit, a deleted file, a
// changed tsconfig and a missing build, but not a file that was only touched
// or copied. And the project is wired to run what it builds.
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const REPO = path.resolve(__dirname, "..", "..");
const guard = require(path.join(REPO, "scripts", "build.js")) as {
    staleReason(root: string): string | undefined;
    build(root: string): number;
    ensureFresh(root: string, say: (m: string) => void): boolean;
};

// Each build runs tsc (2-4 s on a quiet host, far more on a busy one).
jest.setTimeout(120_000);

let dir: string;

beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "nxs-build-unit-"));
    fs.symlinkSync(path.join(REPO, "node_modules"), path.join(dir, "node_modules"));
    fs.writeFileSync(path.join(dir, "tsconfig.json"), JSON.stringify({ compilerOptions: { target: "ES2022", module: "commonjs", strict: true, types: [] } }));
    fs.copyFileSync(path.join(REPO, "tsconfig.build.json"), path.join(dir, "tsconfig.build.json"));
    fs.mkdirSync(path.join(dir, "lib"));
    fs.writeFileSync(path.join(dir, "lib", "value.ts"), "export const value: number = 1;\n");
    fs.writeFileSync(path.join(dir, "index.ts"), 'import { value } from "./lib/value";\nexport = { value };\n');
    fs.writeFileSync(path.join(dir, "unused.ts"), "export const unused = 1;\n");
});

afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

/** What the compiled program exports, run by a fresh node as the runtime would. */
const load = () =>
    JSON.parse(execFileSync(process.execPath, ["-e", "process.stdout.write(JSON.stringify(require(process.argv[1])))", path.join(dir, "bin", "index.js")], { encoding: "utf8", timeout: 30_000 })) as { value: number };

test("a build records the sources it compiled, and is fresh until one changes", () => {
    expect(guard.staleReason(dir)).toBe("no build in bin/ yet");
    guard.build(dir);
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, "bin", ".sources.json"), "utf8"));
    expect(Object.keys(manifest.files).sort()).toEqual(["index.ts", path.join("lib", "value.ts"), "tsconfig.build.json", "tsconfig.json"]);
    expect(guard.staleReason(dir)).toBeUndefined();
    expect(load().value).toBe(1);

    // Touched or rewritten with the same bytes (a copy, a checkout): still fresh.
    const later = new Date(Date.now() + 60_000);
    fs.utimesSync(path.join(dir, "index.ts"), later, later);
    fs.writeFileSync(path.join(dir, "lib", "value.ts"), "export const value: number = 1;\n");
    expect(guard.staleReason(dir)).toBeUndefined();
    // A file the program does not import changes nothing.
    fs.writeFileSync(path.join(dir, "unused.ts"), "export const unused = 2;\n");
    expect(guard.staleReason(dir)).toBeUndefined();

    fs.writeFileSync(path.join(dir, "lib", "value.ts"), "export const value: number = 2;\n");
    expect(guard.staleReason(dir)).toBe(`${path.join("lib", "value.ts")} changed`);
    const said: string[] = [];
    expect(guard.ensureFresh(dir, (m) => said.push(m))).toBe(true);
    expect(said).toEqual([`nixspark: ${path.join("lib", "value.ts")} changed since the last build: compiling the program into bin/ (npm run build)`]);
    expect(load().value).toBe(2);
    expect(guard.ensureFresh(dir, (m) => said.push(m))).toBe(false);
    expect(said).toHaveLength(1);
});

test("a deleted source, a changed tsconfig or a missing bin/index.js make the build stale", () => {
    guard.build(dir);
    fs.writeFileSync(path.join(dir, "tsconfig.json"), JSON.stringify({ compilerOptions: { target: "ES2020", module: "commonjs", strict: true, types: [] } }));
    expect(guard.staleReason(dir)).toBe("tsconfig.json changed");
    guard.build(dir);
    fs.rmSync(path.join(dir, "bin", "index.js"));
    expect(guard.staleReason(dir)).toBe("bin/index.js is missing");
    guard.build(dir);
    expect(load().value).toBe(1);
    // Any other output gone: tsc's incremental state alone would not emit it again.
    fs.rmSync(path.join(dir, "bin", "lib", "value.js"));
    expect(guard.staleReason(dir)).toBe(`bin/${path.join("lib", "value.js")} is missing`);
    guard.build(dir);
    expect(load().value).toBe(1);
    fs.rmSync(path.join(dir, "lib", "value.ts"));
    expect(guard.staleReason(dir)).toBe(`${path.join("lib", "value.ts")} is gone`);
});

test("a type error fails the build with tsc's message and leaves it stale", () => {
    guard.build(dir);
    fs.writeFileSync(path.join(dir, "lib", "value.ts"), 'export const value: number = "two";\n');
    expect(() => guard.ensureFresh(dir, () => undefined)).toThrow(/does not compile, nothing was run.*npm run build[\s\S]*lib\/value\.ts\(1,14\): error TS2322/);
    expect(guard.staleReason(dir)).toBe("no build in bin/ yet");
});

test("the project runs what it builds: Pulumi.yaml, package.json and tsconfig.build.json agree", () => {
    const yaml = require("js-yaml");
    const project = yaml.load(fs.readFileSync(path.join(REPO, "Pulumi.yaml"), "utf8"));
    const pkg = JSON.parse(fs.readFileSync(path.join(REPO, "package.json"), "utf8"));
    const build = JSON.parse(fs.readFileSync(path.join(REPO, "tsconfig.build.json"), "utf8"));
    // Compiled JavaScript, not ts-node; no `main:` in Pulumi.yaml, so the program runs from the project directory.
    expect(project.runtime).toEqual({ name: "nodejs", options: { typescript: false, nodeargs: "--require ./scripts/build.js" } });
    expect(project.main).toBeUndefined();
    expect(build.files).toEqual(["index.ts"]);
    expect(pkg.main).toBe(`${build.compilerOptions.outDir}/index.js`);
    expect(pkg.scripts.build).toBe("node scripts/build.js");
    expect(pkg.scripts.prepare).toBe("node scripts/build.js");
});
