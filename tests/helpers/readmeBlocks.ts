// The README's walkthrough blocks: a fenced block right after an HTML
// comment `<!-- walkthrough:NAME ... -->`. Tests run or check them as
// written (tests/unit/walkthrough.test.ts, tests/integration/submit.test.ts).
import * as fs from "node:fs";
import * as path from "node:path";

export const README = path.resolve(__dirname, "../../README.md");

/** The text of the fenced block after `<!-- walkthrough:name`, without the fences. */
export function walkthroughBlock(name: string, readme = fs.readFileSync(README, "utf8")): string {
    const re = new RegExp("<!-- walkthrough:" + name + "\\b[^>]*-->\\n```[a-z]*\\n([\\s\\S]*?)\\n```", "m");
    const m = re.exec(readme);
    if (!m) throw new Error(`README.md has no fenced block after <!-- walkthrough:${name} -->`);
    return m[1] + "\n";
}

/** The block's commands: one per line, comments and blank lines dropped, `&&` chains split. */
export function commands(block: string): string[][] {
    return block
        .split("\n")
        .map((l) => l.replace(/\s+#.*$/, "").trim())
        .filter((l) => l !== "" && !l.startsWith("#"))
        .flatMap((l) => l.split(/\s*&&\s*/))
        .map((c) => c.split(/\s+/));
}
