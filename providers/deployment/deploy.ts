// A deployment's create and update: reach the node, deliver the secret,
// switch, verify (the system, then Spark), and roll back on failure.
import { lastLines, run } from "../run";
import { ensureKnownHostsFile } from "../knownHosts";
import { destination, privileged, remoteCommand } from "../ssh";
import { firstContact, verifiedFirstContact, waitForSsh } from "../sshContact";
import { deliverSecretProperties } from "../secretDelivery";
import { daemonJournal, sparkBaseline, waitForSpark } from "../spark/verify";
import { UNKNOWN } from "../unknown";
import { restartForDefinition } from "../vmPower";
import { logClosureDiff } from "./closureDiff";
import { prepareContact, recordedHostKeys, targetOf } from "./contact";
import { fingerprintFirstContact } from "./machine";
import { detectFlavour, profileGeneration, readCurrentSystem, rebuildArgv, rebuildEnv, rollBack } from "./rebuild";
import type { NixosDeploymentInputs, NixosDeploymentOutputs } from "./types";

/** Progress lines of one node, on stderr (the engine shows them to the user). */
export function logger(node: string): (m: string) => void {
    return (m: string) => console.error(`[${node}] ${m}`);
}

/**
 * create/update: wait for SSH, switch, verify, and on failure roll back and
 * throw an error naming the node with the last lines of nixos-rebuild's output.
 * `contact` says how to treat the host key: "first" for a VM this stack just
 * created (replace any stale entry), "new-address" for an update that moved
 * the deployment to another address (record an unknown key, refuse a changed
 * one), "known" otherwise (the key must be recorded and match).
 * An update first restarts the VM when it does not run the definition inp.vm
 * describes (a new size, console log, kernel command line, ...), and after a
 * verified switch prints the closure diff from previousSystem when asked
 * (inp.closureDiff).
 */
export async function deploy(inp: NixosDeploymentInputs, contact: "first" | "new-address" | "known", previousSecret?: string, previousSystem?: string, pinned?: unknown): Promise<NixosDeploymentOutputs> {
    const log = logger(inp.node);
    const t = targetOf(inp);
    const where = `${inp.node} (${destination(t)})`;
    ensureKnownHostsFile(inp.knownHostsFile);
    // The key and, for a node it knows, the host keys the state pinned (`pinned`: the old outputs' hostKeys).
    try {
        await prepareContact(inp, contact === "first" ? undefined : pinned, log);
    } catch (e) {
        throw new Error(`NixosDeployment ${where}: ${(e as Error).message}`);
    }

    try {
        // A new VM definition (size, console log, kernel, network, ...): the VM
        // restarts now, in this node's turn of the rollout, and the switch
        // below verifies it came back (Spark too, when asked).
        if (contact !== "first" && inp.vm) await restartForDefinition(inp.vm, log);
        if (contact === "first" && inp.hostKeyFingerprint) {
            await fingerprintFirstContact(inp, inp.hostKeyFingerprint, log);
        } else if (contact === "first" && inp.consoleLog) {
            log(`waiting up to ${inp.sshWaitSeconds} s for the new VM to print its host keys to its console and answer on SSH`);
            await verifiedFirstContact(t, inp.consoleLog, { timeoutSeconds: inp.sshWaitSeconds, log, consoleLogHost: inp.consoleLogHost });
        } else if (contact === "first") {
            log(`waiting up to ${inp.sshWaitSeconds} s for SSH on the new VM; its host key is trusted on first use (nixspark:ssh.hostKeys "first-use") and recorded in ${inp.knownHostsFile}`);
            await firstContact(t, { timeoutSeconds: inp.sshWaitSeconds, log });
        } else {
            try {
                await waitForSsh(t, { timeoutSeconds: inp.sshWaitSeconds, policy: "strict", log });
            } catch (e) {
                if (contact !== "new-address" || !/no SSH host key for .* is recorded/.test((e as Error).message)) throw e;
                log(`first contact with the new address ${inp.host}: recording its host key`);
                await firstContact(t, { timeoutSeconds: inp.sshWaitSeconds, log });
            }
        }
    } catch (e) {
        throw new Error(`NixosDeployment ${where}: ${(e as Error).message}`);
    }

    // The secret first: the new system's Spark reads it when it starts.
    if (inp.secretProperties) {
        log(`writing the cluster secret to the node (root only, outside /nix/store)`);
        try {
            await deliverSecretProperties(t, inp.secretProperties, { useSudo: inp.useSudo });
        } catch (e) {
            throw new Error(`NixosDeployment ${where}: ${(e as Error).message}`);
        }
    }

    const flavour = inp.flavour === "auto" ? await detectFlavour(inp.rebuildCommand, log) : inp.flavour;
    const before = await profileGeneration(t);
    const argv = rebuildArgv(inp, flavour);
    log(`switching to ${inp.flake}#${inp.configuration} (${flavour} nixos-rebuild): ${argv.join(" ")}`);

    let output = "";
    let failure: string | undefined;
    try {
        const r = await run(argv, {
            env: rebuildEnv(inp),
            timeoutMs: inp.switchTimeoutSeconds * 1000,
            allowFailure: true,
            onLine: (line) => {
                output += `${line}\n`;
                log(line);
            },
        });
        if (r.code !== 0) failure = `nixos-rebuild switch failed with exit code ${r.code}`;
    } catch (e) {
        failure = `nixos-rebuild switch did not complete: ${(e as Error).message.split("\n")[0]}`;
    }

    let current = "";
    if (!failure) {
        try {
            current = await readCurrentSystem(t);
            if (current !== inp.expectedSystem) {
                failure = `after the switch the node runs ${current || "(nothing)"}, but the program expected ${inp.expectedSystem} (the flake evaluates differently here than in the program?)`;
            }
        } catch (e) {
            failure = `could not verify the switch: ${(e as Error).message}`;
        }
    }

    if (failure) {
        const rolled = await rollBack(inp, flavour, before, log);
        const tail = lastLines(output, 20) || "(no output)";
        throw new Error(`NixosDeployment ${where}: ${failure}. ${rolled.sentence}\nLast lines of nixos-rebuild's output:\n${tail}`);
    }
    // A rotated secret on a running node: the switch alone restarts nothing
    // when the system did not change, so restart what reads the secret.
    if (previousSecret !== undefined && inp.secretProperties !== undefined && previousSecret !== inp.secretProperties && (inp.secretUnits ?? []).length > 0) {
        const units = inp.secretUnits as string[];
        log(`the cluster secret changed: restarting ${units.join(", ")}`);
        try {
            await remoteCommand(t, privileged(["systemctl", "restart", ...units], { useSudo: inp.useSudo }), 300_000);
        } catch (e) {
            throw new Error(`NixosDeployment ${where}: the new cluster secret was written, but restarting ${units.join(", ")} failed: ${(e as Error).message}`);
        }
    }
    if (inp.spark) {
        const spark = inp.spark;
        log(`waiting up to ${spark.timeoutSeconds} s for Spark to report the ${spark.role} at ${spark.address} ALIVE`);
        // The worker's registration as the switch left it: the master must hear from it anew.
        const verdict = await waitForSpark(spark, await sparkBaseline(spark), spark.timeoutSeconds, log);
        if (!verdict.ok) {
            log(`Spark did not confirm the ${spark.role}: ${verdict.said}`);
            const journal = await daemonJournal(t, inp.useSudo, spark.unit);
            const rolled = await rollBack(inp, flavour, before, log);
            let after = "";
            if (rolled.outcome === "rolled-back") {
                const again = await waitForSpark(spark, await sparkBaseline(spark), spark.timeoutSeconds, log);
                after = ` After the rollback Spark reports: ${again.ok ? "" : "still not confirmed: "}${again.said}.`;
            }
            throw new Error(
                `NixosDeployment ${where}: Spark did not confirm the ${spark.role} within ${spark.timeoutSeconds} s after the switch ` +
                    `(deploy.rollout.verifyTimeoutSeconds): ${verdict.said}. ${rolled.sentence}${after} Later rollout batches do not start.\n` +
                    `Last lines of journalctl -u ${spark.unit} on the node:\n${journal}`,
            );
        }
        log(`Spark agrees: ${verdict.said}`);
    }
    if (inp.closureDiff && previousSystem && previousSystem !== UNKNOWN && previousSystem !== current) await logClosureDiff(inp, previousSystem, current, log);
    log(`now running ${current}`);
    return { ...inp, currentSystem: current, flavourUsed: flavour, ...recordedHostKeys(inp, pinned) };
}
