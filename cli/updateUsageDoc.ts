// Rewrites the --help blocks of docs/usage.md from the program itself, so
// that the document says what --help says (tests/integration/cli.test.ts
// compares them). The prose around the blocks is the document's own.
//
//     npx ts-node --transpile-only cli/updateUsageDoc.ts
import * as fs from "node:fs";
import * as path from "node:path";
import { buildProgram } from "./main";

/** What `nixspark [VERB] --help` prints. */
export function helpText(verb?: string): string {
    const out: string[] = [];
    const program = buildProgram({ out: (t) => void out.push(t), err: (t) => void out.push(t) });
    const cmd = verb ? program.commands.find((c) => c.name() === verb) : program;
    if (!cmd) throw new Error(`no verb ${verb}`);
    cmd.outputHelp();
    return out.join("");
}

/** The document with the first fenced block after the title and after each "## nixspark VERB" replaced by that help. */
export function updateUsageDoc(doc: string): string {
    const sections = doc.split(/^(?=## nixspark \S+\s*$)/m);
    return sections
        .map((s) => {
            const verb = /^## nixspark (\S+)/.exec(s)?.[1];
            return s.replace(/^```\n(?:[\s\S]*?\n)?```$/m, () => "```\n" + helpText(verb).trimEnd() + "\n```");
        })
        .join("");
}

if (require.main === module) {
    const file = path.resolve(__dirname, "..", "docs", "usage.md");
    fs.writeFileSync(file, updateUsageDoc(fs.readFileSync(file, "utf8")));
    process.stdout.write(`updated ${file}\n`);
}
