// The code's floors (issue 18): providers/ (and what talks to Spark,
// providers/spark/) sit below cluster/ and scripts/, so nothing under
// providers/ imports from them; and no file in providers/ or cluster/ grows
// past what reads in one sitting.
import * as fs from "node:fs";
import * as path from "node:path";

const REPO = path.resolve(__dirname, "../..");
const MAX_LINES = 450;

function tsFiles(dir: string): string[] {
    return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
        const p = path.join(dir, e.name);
        return e.isDirectory() ? tsFiles(p) : e.name.endsWith(".ts") ? [p] : [];
    });
}

/** Every relative module a file imports or re-exports, resolved to a path inside the repository. */
function relativeImports(file: string): string[] {
    const text = fs.readFileSync(file, "utf8");
    const specs = [...text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^;]*?from\s+"(\.[^"]+)"/g), ...text.matchAll(/require\("(\.[^"]+)"\)/g)].map((m) => m[1]);
    return specs.map((s) => path.relative(REPO, path.resolve(path.dirname(file), s)));
}

test("nothing under providers/ imports from cluster/ or scripts/", () => {
    const upward = tsFiles(path.join(REPO, "providers")).flatMap((f) =>
        relativeImports(f)
            .filter((target) => /^(cluster|scripts)(\/|$)/.test(target))
            .map((target) => `${path.relative(REPO, f)} -> ${target}`),
    );
    expect(upward).toEqual([]);
});

test("providers/spark/ imports nothing from the other provider folders (it sits below them)", () => {
    const upward = tsFiles(path.join(REPO, "providers", "spark")).flatMap((f) =>
        relativeImports(f)
            .filter((target) => /^providers\/[^/]+\//.test(target) && !target.startsWith("providers/spark/"))
            .map((target) => `${path.relative(REPO, f)} -> ${target}`),
    );
    expect(upward).toEqual([]);
});

test(`no file in providers/ or cluster/ is over ${MAX_LINES} lines`, () => {
    const long = [...tsFiles(path.join(REPO, "providers")), ...tsFiles(path.join(REPO, "cluster"))]
        .map((f) => ({ file: path.relative(REPO, f), lines: fs.readFileSync(f, "utf8").split("\n").length - 1 }))
        .filter((x) => x.lines > MAX_LINES);
    expect(long).toEqual([]);
});
