// A NixosDeployment's inputs: defaults, check, and the resolved inputs the
// provider's methods work with. No I/O.
//
// DEFAULTS (like SWITCH_KEYS in ./diff.ts) is a const that is not exported, on
// purpose: TypeScript compiles references to an exported const into
// `exports.X`, which makes a serialized provider capture the whole module.
// Callers get copies (defaultInputs()).
import { checkSpark } from "../spark/verify";
import { UNKNOWN } from "../unknown";
import type { NixosDeploymentInputs, RebuildFlavour } from "./types";

const DEFAULTS = {
    sshPort: 22,
    useSudo: true,
    rebuildCommand: "nixos-rebuild",
    flavour: "auto" as RebuildFlavour,
    sshWaitSeconds: 300,
    switchTimeoutSeconds: 3600,
};

/** Default values of optional inputs. */
export function defaultInputs(): typeof DEFAULTS {
    return { ...DEFAULTS };
}

export function withDefaults(news: Record<string, unknown>): Record<string, unknown> {
    const out: Record<string, unknown> = { ...news };
    for (const [k, v] of Object.entries(DEFAULTS)) if (out[k] === undefined || out[k] === null) out[k] = v;
    return out;
}

/** check: problems with the inputs, one per key; unknown (preview) values pass. */
export function checkInputs(news: Record<string, unknown>): { property: string; reason: string }[] {
    const failures: { property: string; reason: string }[] = [];
    const known = (k: string) => news[k] !== UNKNOWN && news[k] !== undefined;
    for (const k of ["node", "flake", "configuration", "host", "sshUser", "identityFile", "knownHostsFile", "expectedSystem", "rebuildCommand"]) {
        if (news[k] === UNKNOWN) continue;
        if (typeof news[k] !== "string" || news[k] === "") failures.push({ property: k, reason: `${k} must be a non-empty string` });
    }
    if (known("configuration") && typeof news.configuration === "string" && !/^[A-Za-z0-9_.-]+$/.test(news.configuration)) {
        failures.push({ property: "configuration", reason: "configuration must be a plain nixosConfigurations name (letters, digits, '_', '.', '-')" });
    }
    if (known("flake") && typeof news.flake === "string" && news.flake.includes("#")) {
        failures.push({ property: "flake", reason: "flake must not contain '#': the configuration name goes in `configuration`" });
    }
    if (known("expectedSystem") && typeof news.expectedSystem === "string" && news.expectedSystem !== "") {
        if (news.expectedSystem.endsWith(".drv")) {
            failures.push({
                property: "expectedSystem",
                reason: "expectedSystem must be the toplevel OUT path (nix eval --raw <flake>#nixosConfigurations.<name>.config.system.build.toplevel.outPath), not a .drv",
            });
        } else if (!news.expectedSystem.startsWith("/")) {
            failures.push({ property: "expectedSystem", reason: "expectedSystem must be an absolute store path such as /nix/store/...-nixos-system-..." });
        }
    }
    for (const [k, lo, hi] of [["sshPort", 1, 65535], ["sshWaitSeconds", 1, 3600], ["switchTimeoutSeconds", 10, 86400]] as const) {
        const v = news[k];
        if (v === UNKNOWN || v === undefined) continue;
        if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi) failures.push({ property: k, reason: `${k} must be a whole number from ${lo} to ${hi}` });
    }
    if (known("flavour") && !["auto", "legacy", "ng"].includes(news.flavour as string)) {
        failures.push({ property: "flavour", reason: 'flavour must be "auto", "legacy" or "ng"' });
    }
    if (known("useSudo") && typeof news.useSudo !== "boolean") failures.push({ property: "useSudo", reason: "useSudo must be true or false" });
    failures.push(...checkSpark(news.spark));
    const vm = news.vm as Record<string, unknown> | string | undefined;
    if (vm !== undefined && vm !== null && vm !== UNKNOWN) {
        const whole = (v: unknown) => v === UNKNOWN || (typeof v === "number" && Number.isInteger(v) && v > 0);
        if (typeof vm !== "object" || !(vm.uri === UNKNOWN || typeof vm.uri === "string") || !(vm.domain === UNKNOWN || typeof vm.domain === "string") || !whole(vm.vcpus) || !whole(vm.memoryMiB) || !whole(vm.shutdownTimeoutSeconds)) {
            failures.push({ property: "vm", reason: "vm must be { uri, domain, vcpus, memoryMiB, shutdownTimeoutSeconds } with whole positive numbers" });
        }
    }
    return failures;
}

/** The resolved inputs from a state's or the engine's properties, defaults filled in, empty values dropped. */
export function inputsOf(props: Record<string, unknown>): NixosDeploymentInputs {
    const p = withDefaults(props) as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    for (const k of ["node", "flake", "configuration", "host", "machineId", "sshUser", "sshPort", "identityFile", "knownHostsFile", "privateKey", "expectedSystem", "buildHost", "useSudo", "rebuildCommand", "flavour", "sshWaitSeconds", "switchTimeoutSeconds", "secretProperties", "secretUnits", "spark", "consoleLog", "consoleLogHost", "hostKeyFingerprint", "release", "packages", "vm", "closureDiff"]) {
        if (p[k] !== undefined && p[k] !== null && p[k] !== "") out[k] = p[k];
    }
    return out as unknown as NixosDeploymentInputs;
}

/**
 * An update for new provider code keeps the outputs, but takes how to reach
 * the node from the new inputs (the key, the stack's files): what a later
 * refresh or delete uses. (A state from before hostKeys gets them at the
 * node's next refresh or deploy, from the known-hosts file that worked.)
 */
export function reachOf(news: Record<string, unknown>): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const k of ["identityFile", "knownHostsFile", "privateKey"]) if (typeof news[k] === "string" && news[k] !== UNKNOWN) out[k] = news[k];
    return out;
}
