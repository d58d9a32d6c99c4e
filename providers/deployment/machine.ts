// A deployment onto an existing machine (target "hosts", docs/targets.md):
// its host key checked against the fingerprint the user gave before anything
// else happens, and, when it leaves the stack, a switch to its configuration
// without the role. Nothing here powers a machine off.
import { run } from "../run";
import { replaceHostKeys } from "../knownHosts";
import { destination } from "../ssh";
import { keyFingerprint, scanHostKeys, waitForSsh } from "../sshContact";
import { targetOf } from "./contact";
import { detectFlavour, readCurrentSystem, rebuildArgv, rebuildEnv } from "./rebuild";
import type { NixosDeploymentInputs } from "./types";

/**
 * First contact with a machine whose host key fingerprint the user gave
 * (nixspark:hosts[i].hostKey): the key that answers is pinned only when its
 * SHA256 fingerprint is that one; otherwise the deployment stops here, before
 * any secret is written or anything switched, naming the machine and both
 * fingerprints. Waits up to sshWaitSeconds for SSH to answer at all.
 */
export async function fingerprintFirstContact(inp: NixosDeploymentInputs, expected: string, log: (m: string) => void): Promise<void> {
    const t = targetOf(inp);
    const where = `${destination(t)} port ${t.port}`;
    const deadline = Date.now() + inp.sshWaitSeconds * 1000;
    let answered: { line: string; fingerprint: string }[] = [];
    for (let attempt = 1; ; attempt++) {
        answered = (await scanHostKeys(t)).map((line) => ({ line, fingerprint: keyFingerprint(line)!.fingerprint }));
        if (answered.length > 0 || Date.now() >= deadline) break;
        if (attempt === 1 || attempt % 10 === 0) log(`waiting for SSH on ${where} to check its host key against ${expected}`);
        await new Promise((r) => setTimeout(r, Math.max(0, Math.min(1000, deadline - Date.now()))));
    }
    if (answered.length === 0) throw new Error(`SSH on ${where} did not answer within ${inp.sshWaitSeconds} s, so machine ${inp.node}'s host key could not be checked; is the machine up and sshd listening on port ${t.port}?`);
    const matching = answered.filter((a) => a.fingerprint === expected);
    if (matching.length === 0) {
        throw new Error(
            `host key mismatch for machine ${inp.node} at ${where}: nixspark:hosts gives ${expected}, but the machine answering presents ${[...new Set(answered.map((a) => a.fingerprint))].join(", ")}. ` +
                `Nothing was pinned, written or switched. Check the key on the machine's console (ssh-keygen -l -E sha256 -f /etc/ssh/ssh_host_ed25519_key.pub) and correct nixspark:hosts' hostKey for ${inp.node}.`,
        );
    }
    await replaceHostKeys(t.knownHostsFile, t.host, t.port, matching.map((m) => m.line));
    log(`host key of ${where} is ${expected}, as nixspark:hosts gives; pinned`);
    await waitForSsh(t, { timeoutSeconds: Math.max(1, Math.ceil((deadline - Date.now()) / 1000)), policy: "strict", log });
}

/**
 * The machine leaves the stack: switch it to its configuration without the
 * role (`release`: the machine's own module alone, evaluated by the program
 * when the role system was), and check it runs that system. Throws when the
 * switch fails, so the deployment stays in the state and the next run tries
 * again; the machine keeps running either way.
 */
export async function releaseMachine(inp: NixosDeploymentInputs, release: { configuration: string; expectedSystem: string }, log: (m: string) => void): Promise<void> {
    const leaving = { ...inp, configuration: release.configuration, expectedSystem: release.expectedSystem };
    const flavour = inp.flavour === "auto" ? await detectFlavour(inp.rebuildCommand, log) : inp.flavour;
    const argv = rebuildArgv(leaving, flavour);
    log(`leaves the stack: switching to its own configuration without the role, ${inp.flake}#${release.configuration}: ${argv.join(" ")}`);
    const r = await run(argv, { env: rebuildEnv(leaving), timeoutMs: inp.switchTimeoutSeconds * 1000, allowFailure: true, onLine: log });
    if (r.code !== 0) throw new Error(`machine ${inp.node} could not be switched to its configuration without the role (exit ${r.code}); it still runs the role. Fix what the output above says and run pulumi up again`);
    const current = await readCurrentSystem(targetOf(leaving));
    if (current !== release.expectedSystem) throw new Error(`machine ${inp.node} runs ${current} after leaving the stack, not its configuration without the role ${release.expectedSystem}`);
    log(`now runs its own configuration without the role (${current}); the machine stays up`);
}
