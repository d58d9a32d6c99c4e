// nixos-rebuild as a deployment runs it: argv and environment, which
// generation the command is, the node's system profile, and the rollback.
import { run } from "../run";
import { destination, nixSshOpts, remoteCommand, SshTarget } from "../ssh";
import { targetOf } from "./contact";
import type { NixosDeploymentInputs } from "./types";

/**
 * argv of nixos-rebuild for a switch (or its rollback). The privilege flag is
 * the one each generation documents: the shell script knows only
 * --use-remote-sudo (it rejects --sudo as an unknown option); nixos-rebuild-ng
 * has --sudo and keeps --use-remote-sudo only as a deprecated alias.
 * A rollback adds --rollback and --fast: --fast keeps either generation from
 * first building nixos-rebuild out of the (possibly broken) new flake.
 */
export function rebuildArgv(inp: NixosDeploymentInputs, flavour: "legacy" | "ng", opts: { rollback?: boolean } = {}): string[] {
    const argv = [inp.rebuildCommand, "switch"];
    if (opts.rollback) argv.push("--rollback", "--fast");
    argv.push("--flake", `${inp.flake}#${inp.configuration}`, "--target-host", destination(targetOf(inp)));
    if (inp.buildHost) argv.push("--build-host", inp.buildHost);
    if (inp.useSudo) argv.push(flavour === "ng" ? "--sudo" : "--use-remote-sudo");
    return argv;
}

/** Environment for nixos-rebuild: this process's, plus NIX_SSHOPTS (strict host keys). */
export function rebuildEnv(inp: NixosDeploymentInputs, base: Record<string, string | undefined> = process.env): Record<string, string | undefined> {
    return { ...base, NIX_SSHOPTS: nixSshOpts(targetOf(inp), "strict") };
}

/**
 * Which generation `command` is. A name ending in "nixos-rebuild-ng" is ng.
 * Otherwise ask it about an option neither knows: the shell script answers
 * "unknown option `...'" (its `*)` case), nixos-rebuild-ng's argparse answers
 * "unrecognized arguments" after a "usage:" line. Both exit before doing
 * anything (`--help` would start man instead). When the answer is neither,
 * assume the shell script: its --use-remote-sudo is also accepted by ng.
 */
export async function detectFlavour(command: string, log: (m: string) => void = () => undefined): Promise<"legacy" | "ng"> {
    const path = require("node:path") as typeof import("node:path");
    if (/nixos-rebuild-ng$/.test(path.basename(command))) return "ng";
    let out = "";
    try {
        const r = await run([command, "--nixspark-flavour-probe"], { timeoutMs: 30_000, allowFailure: true });
        out = `${r.stdout}\n${r.stderr}`;
    } catch (e) {
        throw new Error(`cannot run ${command} (deploy.rebuildCommand): ${(e as Error).message.split("\n")[0]}`);
    }
    if (/unrecognized arguments|usage: nixos-rebuild/.test(out)) return "ng";
    if (/unknown option/.test(out)) return "legacy";
    log(`could not tell which nixos-rebuild ${command} is; assuming the shell script (its --use-remote-sudo is accepted by both)`);
    return "legacy";
}

/** What a rollback did: "rolled-back" (the node runs its previous generation), "not-needed" (nothing was activated) or "failed". */
export interface RollbackResult {
    outcome: "rolled-back" | "not-needed" | "failed";
    /** For the error message. */
    sentence: string;
}

const PROFILE = "/nix/var/nix/profiles/system";

/**
 * The system profile's current generation link ("system-42-link"), or
 * undefined if it cannot be read. A dropped connection is tried again twice:
 * the rollback decision rests on this answer (rollBack).
 */
export async function profileGeneration(t: SshTarget, attempts = 3): Promise<string | undefined> {
    for (let i = 1; i <= attempts; i++) {
        try {
            return (await remoteCommand(t, ["readlink", PROFILE], 30_000)) || undefined;
        } catch {
            if (i < attempts) await new Promise((r) => setTimeout(r, 1_000 * i));
        }
    }
    return undefined;
}

/** Where the system profile points now (its store path), or undefined if that cannot be read. */
async function profileSystem(t: SshTarget): Promise<string | undefined> {
    try {
        return (await remoteCommand(t, ["readlink", "-f", PROFILE], 30_000)) || undefined;
    } catch {
        return undefined;
    }
}

export async function readCurrentSystem(t: SshTarget): Promise<string> {
    return remoteCommand(t, ["readlink", "-f", "/run/current-system"], 30_000);
}

/**
 * Rolls a node back after a failed switch or verification, but only if the
 * switch got as far as moving the system profile: a failure before that
 * (evaluation, build, copy) changed nothing on the node, and rolling back then
 * would step one generation *behind* what it ran. Says what happened and a
 * sentence for the error message; never throws.
 */
export async function rollBack(inp: NixosDeploymentInputs, flavour: "legacy" | "ng", before: string | undefined, log: (m: string) => void): Promise<RollbackResult> {
    const t = targetOf(inp);
    const after = await profileGeneration(t);
    if (before !== undefined && after !== undefined && before === after) {
        log(`the system profile is still ${before}: nothing was activated, no rollback needed`);
        return { outcome: "not-needed", sentence: `Nothing was activated (the system profile is still ${before}), so no rollback was needed.` };
    }
    // The generation before the switch could not be read: roll back only if
    // the profile now points at the system this switch was to activate (a
    // failure before that moved nothing, and a rollback would step behind).
    if (before === undefined && typeof inp.expectedSystem === "string") {
        const points = await profileSystem(t);
        if (points !== undefined && points !== inp.expectedSystem) {
            log(`the system profile does not point at ${inp.expectedSystem} (it points at ${points}): nothing was activated, no rollback needed`);
            return { outcome: "not-needed", sentence: `Nothing was activated (the system profile points at ${points}, not the new system), so no rollback was needed.` };
        }
    }
    const argv = rebuildArgv(inp, flavour, { rollback: true });
    log(`rolling back: ${argv.join(" ")}`);
    try {
        await run(argv, {
            env: rebuildEnv(inp),
            timeoutMs: Math.min(inp.switchTimeoutSeconds, 900) * 1000,
            onLine: (l) => log(`rollback: ${l}`),
        });
    } catch (e) {
        return { outcome: "failed", sentence: `The ROLLBACK FAILED as well: ${(e as Error).message}\nRoll back by hand: NIX_SSHOPTS='${nixSshOpts(t, "strict")}' ${argv.join(" ")}` };
    }
    let now = "an unknown system";
    try {
        now = await readCurrentSystem(t);
    } catch {
        /* reported as unknown */
    }
    log(`rolled back; the node runs ${now}`);
    return { outcome: "rolled-back", sentence: `The node was rolled back to its previous generation and runs ${now}.` };
}
