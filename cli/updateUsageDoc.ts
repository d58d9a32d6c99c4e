// Rewrites the --help blocks of docs/usage.md, and the README's list of
// verbs, from the program itself, so that both say what --help says
// (tests/integration/cli.test.ts and tests/unit/cliHelp.test.ts compare
// them). The prose around them is the documents' own.
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

const VERBS_BEGIN = "<!-- verbs: cli/updateUsageDoc.ts writes this list from each verb's --help -->";
const VERBS_END = "<!-- /verbs -->";

/** The README's list of verbs: `npx nixspark VERB` and the verb's summary, as `nixspark --help` lists them. */
export function verbList(): string {
    const program = buildProgram({ out: () => undefined, err: () => undefined });
    const verbs = program.commands.map((c) => [`npx nixspark ${c.name()}`, c.summary() || c.description()] as const);
    const width = Math.max(...verbs.map(([v]) => v.length)) + 2;
    return verbs.map(([v, s]) => `    ${v.padEnd(width)}# ${s}`).join("\n");
}

/** The README with the lines between the verbs markers replaced by verbList(). */
export function updateReadme(readme: string): string {
    const begin = readme.indexOf(VERBS_BEGIN);
    const end = readme.indexOf(VERBS_END, begin);
    if (begin < 0 || end < 0) throw new Error(`README.md has no ${VERBS_BEGIN} ... ${VERBS_END} block`);
    return `${readme.slice(0, begin + VERBS_BEGIN.length)}\n\n${verbList()}\n\n${readme.slice(end)}`;
}

if (require.main === module) {
    const root = path.resolve(__dirname, "..");
    const usage = path.join(root, "docs", "usage.md");
    fs.writeFileSync(usage, updateUsageDoc(fs.readFileSync(usage, "utf8")));
    const readme = path.join(root, "README.md");
    fs.writeFileSync(readme, updateReadme(fs.readFileSync(readme, "utf8")));
    process.stdout.write(`updated ${usage} and ${readme}\n`);
}
