// The nixspark program: read and validate the stack config, settle the
// stack's deploy key with its state (the image and the role systems carry its
// public half), ask Nix what the image and the role systems will be (before
// the cluster is registered, so that preview knows and a bad setting stops
// early), build the cluster, and export what a user (and `npm run status` /
// `npm run smoke`) needs to reach it.
import * as pulumi from "@pulumi/pulumi";
import { loadStackConfig, resolveSsh, settleDeployKey, stackStateDir } from "./cluster/stackConfig";
import type { ResolvedSsh } from "./cluster/stackConfig";
import { markRetiredBases } from "./providers/baseVolume";
import { NixParamsError, prepareNix } from "./cluster/nixParams";
import { SparkCluster } from "./cluster/sparkCluster";
import { hostsProgram } from "./cluster/targets/hosts";

// Stack traces in V8's own format. Pulumi's runner installs source-map-support,
// and the SDK formats a full stack trace for every resource it registers and
// every promise it makes (Resource.callsites, debuggablePromise): mapping each
// of those frames through @pulumi/pulumi's source maps was about a fifth of the
// program's CPU in a 1+64 preview (docs/benchmarks.md). The program itself is
// compiled without source maps, so its own frames read the same either way
// (bin/*.js, whose code follows the .ts file line for line in structure).
delete (Error as { prepareStackTrace?: unknown }).prepareStackTrace;

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
    const stateDir = stackStateDir(stack);
    let ssh: ResolvedSsh;
    try {
        ssh = resolveSsh(loaded.config, stateDir, stack);
    } catch (e) {
        throw new pulumi.RunError(`invalid stack configuration:\n  ${(e as Error).message}`);
    }
    // The stack's own key (or its record of deploying with ~/.ssh/id_ed25519)
    // is in its state: the DeployKey resource, registered and awaited before
    // the Nix evaluation. .nixspark/<stack>/ is only a cache of it.
    let privateKey: pulumi.Output<string> | undefined;
    if (ssh.keySource !== "configured") {
        try {
            const settled = await settleDeployKey(stack, ssh, loaded.config, {
                stateDir,
                dryRun: pulumi.runtime.isDryRun(),
                log: { info: (m) => void pulumi.log.info(m), warn: (m) => void pulumi.log.warn(m) },
            });
            ssh = settled;
            privateKey = settled.privateKey;
        } catch (e) {
            throw new pulumi.RunError(`the stack's deploy key: ${(e as Error).message}`);
        }
    }
    if (ssh.keySource === "legacy-default") {
        void pulumi.log.warn(
            `deploying with ~/.ssh/id_ed25519, this stack's key from before per-stack deploy keys; to move to a key of the stack's own, ` +
                `set nixspark:ssh.privateKeyPath to it explicitly now, or see docs/security.md ("Deploy key")`,
        );
    }
    const config = { ...loaded.config, ssh: { ...loaded.config.ssh, publicKey: ssh.publicKey } };
    const topology = loaded.topology;
    // nixspark:target "hosts": existing NixOS machines, no libvirt object (cluster/targets/hosts.ts).
    if (config.target === "hosts") {
        const rel = (p: string) => require("node:path").relative(process.cwd(), p) as string;
        const local = (p: string) => (rel(p) !== "" && !rel(p).startsWith("..") && !require("node:path").isAbsolute(rel(p)) ? rel(p) : p);
        return hostsProgram(
            {
                stack,
                config,
                ssh: { identityFile: ssh.keySource === "stack" ? local(ssh.identityFile) : ssh.identityFile, knownHostsFile: local(ssh.knownHostsFile) },
                privateKey,
                sparkSecrets: pulumi.secret(config.sparkSecrets),
                log: { info: (m) => void pulumi.log.info(m), warn: (m) => void pulumi.log.warn(m), debug: (m) => void pulumi.log.debug(m) },
            },
            { user: config.ssh.user, port: config.ssh.port, identityFile: ssh.identityFile, knownHostsFile: ssh.knownHostsFile },
        );
    }

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

    // The stack's own files are named relative to the project directory, where
    // the engine runs the program and the providers: what the state records
    // then means the same files in any checkout (a second clone, a CI runner).
    const inProject = (p: string) => {
        const rel = require("node:path").relative(process.cwd(), p) as string;
        return rel !== "" && !rel.startsWith("..") && !require("node:path").isAbsolute(rel) ? rel : p;
    };
    const cluster = new SparkCluster(
        "nixspark",
        {
            stack,
            config,
            baseImage: image,
            systems,
            ssh: { identityFile: ssh.keySource === "stack" ? inProject(ssh.identityFile) : ssh.identityFile, knownHostsFile: inProject(ssh.knownHostsFile) },
            consoleLogDir: config.consoleLogDir,
            // Always a Pulumi secret, whether or not the user set it with --secret.
            sparkSecrets: pulumi.secret(config.sparkSecrets),
            stateDir: inProject(stateDir),
        },
        // Each deployment also holds the deploy key itself (a secret), so that a
        // refresh or destroy reaches the nodes from the state alone, before any
        // program run could write the cache file. (SparkCluster passes the
        // identity file only; the key is added here.)
        privateKey
            ? {
                  transforms: [
                      ({ type, props, opts }) => (type === "pulumi-nodejs:dynamic/nixspark:NixosDeployment" ? { props: { ...props, privateKey }, opts } : undefined),
                  ],
              }
            : undefined,
    );
    // Retired base volumes are in the state (the BaseVolume's retiredBases);
    // the markers the overlays' deletes look for are this checkout's cache.
    for (const base of cluster.baseVolumes) {
        pulumi.all([base.retiredBases, base.name]).apply(([retired, current]) => {
            const marked = markRetiredBases(stateDir, retired, current);
            if (marked.length > 0) void pulumi.log.debug(`retired base volumes noted again from the state: ${marked.join(", ")}`);
        });
    }

    return {
        // The first (or only) libvirt host; with several, each node names its own (nodes[].libvirtUri).
        libvirtUri: cluster.topology.hosts[0].uri,
        network: cluster.network?.name,
        // `system`: what each node must run (npm run status compares it with the node).
        nodes: cluster.nodeOutputs.map((n) => ({ ...n, system: systems ? systems[n.role === "master" ? "master" : "worker"].expectedSystem : undefined })),
        masterAddress: cluster.masterAddress,
        masterUrl: cluster.masterUrl,
        webUiUrl: cluster.webUiUrl,
        // Finished applications (their event logs on the master): nix/modules/master.nix.
        historyUrl: cluster.historyUrl,
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
