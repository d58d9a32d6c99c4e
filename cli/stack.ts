// The stack, as the CLI sees it: its outputs from `pulumi stack output`
// (never guessed), with the stack's own files (deploy key, known hosts)
// resolved against the project directory, where the program wrote them.
import * as fs from "node:fs";
import * as path from "node:path";
import { run } from "../providers/run";
import { expandHome } from "../providers/paths";
import { parseStackOutputs, StackOutputs, StackSsh } from "../cluster/sparkStatus";
import { GlobalOptions, UsageError } from "./common";

/** The checkout this CLI belongs to (its .tools/bin may hold the Pulumi CLI). */
export const CLI_REPO = path.resolve(__dirname, "..");

export interface Stack {
    /** The project directory (Pulumi.yaml). */
    dir: string;
    /** The stack name as given (undefined: the selected one). */
    name?: string;
    outputs: StackOutputs;
    /** The outputs as Pulumi printed them (for what StackOutputs does not model). */
    raw: Record<string, unknown>;
}

/** The project directory: --cwd or the working directory; it must hold Pulumi.yaml. */
export function projectDir(g: GlobalOptions): string {
    const dir = path.resolve(g.cwd ?? process.cwd());
    if (!fs.existsSync(path.join(dir, "Pulumi.yaml")) && !fs.existsSync(path.join(dir, "Pulumi.yml"))) {
        throw new UsageError(`${g.cwd ? `--cwd ${g.cwd}` : `the working directory ${dir}`}: no Pulumi.yaml there; run nixspark in the project directory or pass --cwd PROJECT_DIR`);
    }
    return dir;
}

/**
 * The environment for the Pulumi CLI, as scripts/pulumi-env sets it up: the
 * project's .tools/bin (and this checkout's) first on PATH, the project's
 * local state directory when no backend is configured, no update check.
 */
export function pulumiEnv(dir: string, base: NodeJS.ProcessEnv = process.env): Record<string, string | undefined> {
    const env: Record<string, string | undefined> = { ...base };
    const extra = [path.join(dir, ".tools/bin"), path.join(CLI_REPO, ".tools/bin"), path.join(CLI_REPO, "node_modules/@pulumi/pulumi")];
    env.PATH = [...new Set(extra), env.PATH ?? "/usr/bin:/bin"].join(":");
    if (!env.PULUMI_BACKEND_URL && fs.existsSync(path.join(dir, ".pulumi-state"))) env.PULUMI_BACKEND_URL = `file://${path.join(dir, ".pulumi-state")}`;
    if (env.PULUMI_CONFIG_PASSPHRASE === undefined && env.PULUMI_CONFIG_PASSPHRASE_FILE === undefined) env.PULUMI_CONFIG_PASSPHRASE = "";
    env.PULUMI_SKIP_UPDATE_CHECK = "1";
    return env;
}

/** The first `name` on PATH, or undefined. */
export function onPath(name: string, pathVar: string | undefined): string | undefined {
    for (const d of (pathVar ?? "").split(":")) {
        if (!d) continue;
        const p = path.join(d, name);
        try {
            fs.accessSync(p, fs.constants.X_OK);
            if (fs.statSync(p).isFile()) return p;
        } catch {
            /* not here */
        }
    }
    return undefined;
}

/** `pulumi stack output --json --show-secrets [--stack S]` in the project directory, validated. */
export async function loadStack(g: GlobalOptions): Promise<Stack> {
    if (g.outputs !== undefined) return loadOutputsFile(g.outputs, path.resolve(g.cwd ?? process.cwd()));
    const dir = projectDir(g);
    const env = pulumiEnv(dir);
    const pulumi = onPath("pulumi", env.PATH);
    if (!pulumi) throw new UsageError("the Pulumi CLI is not on PATH (nor in .tools/bin): install it (scripts/install-pulumi, see README)");
    const stackFlag = g.stack ? ["--stack", g.stack] : [];
    const argv = [pulumi, "stack", "output", "--json", "--show-secrets", "--non-interactive", ...stackFlag];
    const r = await run(argv, { cwd: dir, env, timeoutMs: 120_000, allowFailure: true });
    const which = g.stack ? `stack ${g.stack}` : "the selected stack";
    if (r.code !== 0) {
        const why = (r.stderr.trim() || r.stdout.trim()).split("\n").slice(-3).join(" | ");
        const hint = /no stack (is )?selected|no current stack/i.test(why)
            ? "pass --stack NAME or run `pulumi stack select NAME`"
            : /passphrase/i.test(why)
              ? "set PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE) for this stack"
              : "check --stack and --cwd, and that PULUMI_BACKEND_URL names the stack's backend (scripts/pulumi-env)";
        throw new UsageError(`reading the outputs of ${which} failed: pulumi stack output exited ${r.code}: ${why}; ${hint}`);
    }
    let raw: unknown;
    try {
        raw = JSON.parse(r.stdout);
    } catch {
        throw new UsageError(`pulumi stack output --json printed no JSON for ${which}: ${r.stdout.slice(0, 200)}`);
    }
    let outputs: StackOutputs;
    try {
        outputs = parseStackOutputs(raw, `${which} outputs`);
    } catch (e) {
        throw new UsageError((e as Error).message.replace(/, or pass --outputs FILE.*$/, ""));
    }
    if (outputs.ssh) outputs.ssh = resolveSshFiles(outputs.ssh, dir);
    return { dir, name: g.stack, outputs, raw: raw as Record<string, unknown> };
}

/** --outputs FILE: the outputs as `pulumi stack output --json` printed them; relative key paths are --cwd's. */
export function loadOutputsFile(file: string, dir: string): Stack {
    let raw: unknown;
    try {
        raw = JSON.parse(fs.readFileSync(file, "utf8"));
    } catch (e) {
        throw new UsageError(`--outputs ${file}: ${(e as Error).message}; give a file that \`pulumi stack output --json\` wrote`);
    }
    let outputs: StackOutputs;
    try {
        outputs = parseStackOutputs(raw, `--outputs ${file}`);
    } catch (e) {
        throw new UsageError((e as Error).message.replace(/, or pass --outputs FILE.*$/, ""));
    }
    if (outputs.ssh) outputs.ssh = resolveSshFiles(outputs.ssh, dir);
    return { dir, outputs, raw: raw as Record<string, unknown> };
}

/** The key and known-hosts paths as absolute paths: "~/" expanded, a relative one is the project directory's. */
export function resolveSshFiles(ssh: StackSsh, dir: string): StackSsh {
    const abs = (p: string) => path.resolve(dir, expandHome(p));
    return { ...ssh, identityFile: abs(ssh.identityFile), knownHostsFile: abs(ssh.knownHostsFile) };
}

/**
 * The stack's ssh settings, with its key and known-hosts files present. Both
 * are caches of the state (cluster/deployKey.ts; providers/nixosDeployment.ts
 * prepareContact writes both on refresh), so a fresh checkout lacks them until
 * a refresh or an update has run there.
 */
export function requireSsh(stack: Stack): StackSsh {
    const ssh = stack.outputs.ssh;
    if (!ssh) throw new UsageError(`the stack has no "ssh" output ({user, port, identityFile, knownHostsFile}); run \`pulumi up\` with this version of nixspark`);
    const stackArg = stack.name ? ` --stack ${stack.name}` : "";
    for (const [what, file] of [["deploy key", ssh.identityFile], ["known-hosts file", ssh.knownHostsFile]] as const) {
        if (!fs.existsSync(file)) {
            throw new UsageError(
                `the stack's ${what} ${file} is missing; it is a cache of the Pulumi state that the program writes: ` +
                    `run \`pulumi refresh${stackArg}\` once in ${stack.dir} (its deployments write the key and the pinned host keys from the state), then try again`,
            );
        }
    }
    return ssh;
}
