// The README speaks of the `nixspark` command in its --help's own words:
// its list of verbs is what `nixspark --help` lists (cli/updateUsageDoc.ts
// writes it), so a verb added, renamed or re-described shows here first.
import * as fs from "node:fs";
import * as path from "node:path";
import { helpText, updateReadme, verbList } from "../../cli/updateUsageDoc";

const README = fs.readFileSync(path.join(__dirname, "../../README.md"), "utf8");

test("the README lists every verb with the summary --help gives it (npx ts-node --transpile-only cli/updateUsageDoc.ts rewrites the list)", () => {
    expect(updateReadme(README)).toBe(README);
    const help = helpText();
    for (const line of verbList().split("\n")) {
        const [, verb, summary] = /npx nixspark (\S+)\s+# (.*)$/.exec(line)!;
        // The same words in `nixspark --help` (which may wrap the summary).
        expect(help).toContain(`  ${verb} `);
        expect(help.replace(/\s+/g, " ")).toContain(summary);
    }
    expect(verbList().split("\n").length).toBeGreaterThanOrEqual(11);
});

test("nixspark --help names the README's first words: an Apache Spark standalone cluster of NixOS machines, deployed with Pulumi", () => {
    expect(README).toMatch(/Reproducible Apache Spark standalone clusters/);
    expect(helpText()).toMatch(/an Apache Spark standalone cluster of NixOS machines/);
});
