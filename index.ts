// The nixspark program: read and validate the stack config, ask Nix what the
// image and the role systems will be (before anything is registered, so that
// preview knows and a bad setting stops early), build the cluster, and export
// what a user (and `npm run status` / `npm run smoke`) needs to reach it.
import * as pulumi from "@pulumi/pulumi";
import { loadStackConfig, resolveSsh, stackStateDir } from "./cluster/stackConfig";
import { NixParamsError, prepareNix } from "./cluster/nixParams";
import { SparkCluster } from "./cluster/sparkCluster";

async function main() {
    const stack = pulumi.getStack();
    // A secret Spark setting kept inside nixspark:spark would make the whole
    // object secret and still be written to the stack file and the store.
    // (runtime.isConfigSecret is in the SDK's JavaScript but not its typings.)
    const isConfigSecret = (pulumi.runtime as unknown as { isConfigSecret?: (k: string) => boolean }).isConfigSecret;
    if (isConfigSecret?.("nixspark:spark")) {
        throw new pulumi.RunError(
            "invalid stack configuration:\n  nixspark:spark: holds a secret, but its settings go to the Nix store in plain text; " +
                `move the secret setting to nixspark:sparkSecrets: pulumi config rm --path 'spark.settings["KEY"]' && pulumi config set --secret --path 'sparkSecrets["KEY"]' VALUE`,
        );
    }
    const loaded = loadStackConfig(stack, pulumi.runtime.allConfig());
    let ssh;
    try {
        ssh = resolveSsh(loaded.config, stackStateDir(stack), stack);
    } catch (e) {
        throw new pulumi.RunError(`invalid stack configuration:\n  ${(e as Error).message}`);
    }
    if (ssh.keySource === "legacy-default") {
        void pulumi.log.warn(
            `deploying with ~/.ssh/id_ed25519, this stack's key from before per-stack deploy keys; to move to a key of the stack's own, ` +
                `set nixspark:ssh.privateKeyPath to it explicitly now, or see docs/security.md ("Deploy key")`,
        );
    }
    const config = { ...loaded.config, ssh: { ...loaded.config.ssh, publicKey: ssh.publicKey } };
    const topology = loaded.topology;

    let prepared;
    try {
        // One `nix eval` at most, none when nothing it reads changed since the
        // last run (cluster/nixParams.ts); says so only at debug level.
        prepared = await prepareNix(stack, config, topology, { log: (m) => void pulumi.log.debug(m) });
    } catch (e) {
        if (e instanceof NixParamsError) throw new pulumi.RunError(`invalid stack configuration:\n  ${e.message}`);
        // Nix's own words (a misspelt package in nixspark:spark.pythonPackages, no
        // nix on PATH, ...): a user-facing error before anything is registered.
        const hint = /could not start/.test(String(e)) ? "\nInstall Nix with flakes (see README: Prerequisites)." : "";
        throw new pulumi.RunError(`evaluating the Nix flake failed, nothing was changed:\n${(e as Error).message}${hint}`);
    }
    const image = config.image.path ? { path: config.image.path } : { nix: prepared.image! };
    const systems = prepared.systems;

    const cluster = new SparkCluster("nixspark", {
        stack,
        config,
        baseImage: image,
        systems,
        ssh: { identityFile: ssh.identityFile, knownHostsFile: ssh.knownHostsFile },
        consoleLogDir: config.consoleLogDir,
        // Always a Pulumi secret, whether or not the user set it with --secret.
        sparkSecrets: pulumi.secret(config.sparkSecrets),
    });

    return {
        libvirtUri: config.libvirtUri,
        network: cluster.network.name,
        // `system`: what each node must run (npm run status compares it with the node).
        nodes: cluster.nodeOutputs.map((n) => ({ ...n, system: systems ? systems[n.role === "master" ? "master" : "worker"].expectedSystem : undefined })),
        masterAddress: cluster.masterAddress,
        masterUrl: cluster.masterUrl,
        webUiUrl: cluster.webUiUrl,
        ssh: { user: config.ssh.user, port: config.ssh.port, identityFile: ssh.identityFile, knownHostsFile: ssh.knownHostsFile },
        // Where the secret lives is no secret; the secret itself is never an output.
        security: { authenticate: config.security.authenticate, ioEncryption: config.security.ioEncryption, secretGeneration: config.security.secretGeneration },
        baseImagePath: cluster.image ? cluster.image.imagePath : config.image.path,
        health: cluster.health
            ? { aliveWorkers: cluster.health.aliveWorkers, totalCores: cluster.health.totalCores, totalMemoryMiB: cluster.health.totalMemoryMiB }
            : undefined,
    };
}

export = main();
