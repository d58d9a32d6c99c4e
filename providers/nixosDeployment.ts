// NixosDeployment: one node's NixOS configuration, applied in place with
// `nixos-rebuild switch --flake REF#NAME --target-host USER@HOST`.
//
// A configuration change is an *update* of this resource, never a replace:
// the VM keeps running and switches to the new system. See
// docs/live-updates.md for the user's view and for the lines of nixos-rebuild
// (shell script and nixos-rebuild-ng) this file relies on.
//
// This file holds the provider and the resource; their helpers are beside it
// in ./deployment/ by concept: types, inputs (defaults, check), diff, contact
// (SSH target, key and host keys from the state), rebuild (argv, flavour,
// rollback), deploy (create/update), vmState (refresh), closureDiff. What
// talks to Spark is in ./spark/.
//
// Provider rules (docs/design.md, Provider rules): modules are required
// inside functions, the provider object captures neither zod nor
// @pulumi/pulumi, outs carry every input. Progress goes to console.error: the
// Pulumi engine shows a dynamic provider's stderr to the user line by line
// (pkg plugin.go, runtrace -> Diag.Infoerrf).
import * as pulumi from "@pulumi/pulumi";
import { keptOutputs, providerCodeChanged } from "./unknown";
import { describePackageChanges } from "./packageChanges";
import { decommissionWorker } from "./spark/decommission";
import type { SparkCheck } from "./spark/verify";
import { prepareContact, recordedHostKeys, targetOf } from "./deployment/contact";
import { deploy, logger } from "./deployment/deploy";
import { releaseMachine } from "./deployment/machine";
import { deploymentDiff, diskRecreated } from "./deployment/diff";
import { defaultInputs, checkInputs, inputsOf, reachOf, withDefaults } from "./deployment/inputs";
import { readCurrentSystem } from "./deployment/rebuild";
import { diskGoneOf, vmGoneOf, vmPendingOf } from "./deployment/vmState";
import type { NixosDeploymentArgs } from "./deployment/types";
import { providerRef } from "./codeRef";

export type { NixosDeploymentArgs, NixosDeploymentInputs, NixosDeploymentOutputs, RebuildFlavour } from "./deployment/types";
export type { SparkCheck } from "./spark/verify";

/**
 * The provider object. Its methods only call functions of ./deployment/,
 * ./spark/, ./run and ./ssh, which serialize with it; nothing here touches
 * @pulumi/pulumi (it is only used by the Resource class below).
 */
export const nixosDeploymentProvider: pulumi.dynamic.ResourceProvider = {
    async check(_olds: Record<string, unknown>, news: Record<string, unknown>) {
        const inputs = withDefaults(news);
        return { inputs, failures: checkInputs(inputs) };
    },

    async diff(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
        const d = deploymentDiff(olds, withDefaults(news));
        // The package-level preview: what the switch will move on this node,
        // by version, shown by `pulumi preview` (and `up`) before any build.
        if (d.changes && news.expectedSystem !== olds.expectedSystem) {
            const node = typeof news.node === "string" ? news.node : _id;
            for (const line of describePackageChanges(olds.packages as Record<string, unknown>, news.packages as Record<string, unknown>)) console.error(`[${node}] will switch: ${line}`);
        }
        if (d.replaces.length > 0) {
            const node = typeof news.node === "string" ? news.node : _id;
            const spark = olds.spark as SparkCheck | undefined;
            console.error(
                spark && spark.role === "worker"
                    ? `[${node}] its VM will be replaced: the worker is decommissioned through Spark first (its executors get up to ${spark.decommissionTimeoutSeconds ?? 120} s, deploy.decommissionTimeoutSeconds), then the new VM is deployed`
                    : `[${node}] its VM will be replaced: the new VM gets a first deployment`,
            );
        }
        // New provider code alone is an update too, one that keeps the outputs (see update).
        return { changes: d.changes || providerCodeChanged(olds, news), replaces: d.replaces, deleteBeforeReplace: d.deleteBeforeReplace };
    },

    async create(inputs: Record<string, unknown>) {
        const inp = inputsOf(inputs);
        const outs = await deploy(inp, "first");
        return { id: `${inp.node}@${inp.host}`, outs };
    },

    async update(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
        // Only the provider code changed: no switch, keep the outputs.
        // The `spark` input is taken over though: a delete decommissions with what the state holds.
        if (!deploymentDiff(olds, withDefaults(news)).changes) return { outs: { ...keptOutputs(olds), ...(news.spark ? { spark: news.spark } : {}), ...reachOf(news) } };
        const inp = inputsOf(news);
        // A different VM (same address, new machine) is a first contact: this
        // stack created it, so its new host key replaces the recorded one.
        // So is a new disk under the same VM: a fresh system with new host keys.
        const contact = (olds.machineId !== undefined && olds.machineId !== inp.machineId) || diskRecreated(olds, news) ? "first" : olds.host !== inp.host ? "new-address" : "known";
        const previousSecret = typeof olds.secretProperties === "string" ? olds.secretProperties : undefined;
        const previousSystem = typeof olds.currentSystem === "string" && olds.currentSystem !== "" ? olds.currentSystem : undefined;
        return { outs: await deploy(inp, contact, previousSecret, previousSystem, olds.hostKeys) };
    },

    async read(id: string, props: Record<string, unknown>) {
        const inp = inputsOf(props);
        const log = logger(inp.node ?? id);
        // Does the VM run the definition its deployment restarted it for? (Its Domain saved another one.)
        const vm = { ...(await vmPendingOf(inp, log)), ...(await vmGoneOf(inp, log)), ...(await diskGoneOf(inp, log)) };
        try {
            // From the state when this checkout lacks them: a refresh runs before the program.
            await prepareContact(inp, props.hostKeys, log);
            const current = await readCurrentSystem(targetOf(inp));
            props = { ...props, ...recordedHostKeys(inp, props.hostKeys) };
            if (current !== inp.expectedSystem) log(`refresh: the node runs ${current}, not the recorded ${inp.expectedSystem}; the next \`pulumi up\` switches it back`);
            return { id, props: { ...props, ...vm, currentSystem: current } };
        } catch (e) {
            log(`refresh: could not ask the node which system it runs, keeping the recorded state: ${(e as Error).message.split("\n")[0]}`);
            return { id, props: { ...props, ...vm } };
        }
    },

    async delete(id: string, props: Record<string, unknown>) {
        const node = typeof props.node === "string" ? props.node : id;
        // A worker leaves through Spark before its VM stops (the deployment
        // depends on the domain, so this runs before the domain's delete).
        const spark = props.spark as SparkCheck | undefined;
        if (spark && spark.role === "worker") {
            await prepareContact(inputsOf(props), props.hostKeys, logger(node)).catch((e: Error) => console.error(`[${node}] ${e.message.split("\n")[0]}`));
            const inp = inputsOf(props);
            await decommissionWorker(targetOf(inp), inp.useSudo, spark, logger(node));
        }
        // An existing machine (target hosts) is never powered off: it goes back to its own configuration.
        const release = props.release as { configuration: string; expectedSystem: string } | undefined;
        if (release) {
            const inp = inputsOf(props);
            await prepareContact(inp, props.hostKeys, logger(node));
            await releaseMachine(inp, release, logger(node));
            return;
        }
        if (spark && spark.role === "worker") return;
        console.error(`[${node}] nothing to do on the VM for its NixOS deployment: the VM is deleted with its domain`);
    },
};

export class NixosDeployment extends pulumi.dynamic.Resource {
    declare readonly node: pulumi.Output<string>;
    declare readonly host: pulumi.Output<string>;
    declare readonly expectedSystem: pulumi.Output<string>;
    /** What the node ran at the last deploy or refresh. */
    declare readonly currentSystem: pulumi.Output<string>;
    declare readonly flavourUsed: pulumi.Output<string>;
    /** The node's pinned SSH host keys (known_hosts lines). */
    declare readonly hostKeys: pulumi.Output<string[] | undefined>;

    constructor(name: string, args: NixosDeploymentArgs, opts?: pulumi.CustomResourceOptions) {
        const DEFAULTS = defaultInputs();
        super(
            providerRef("NixosDeployment", nixosDeploymentProvider),
            name,
            {
                ...args,
                sshPort: args.sshPort ?? DEFAULTS.sshPort,
                useSudo: args.useSudo ?? DEFAULTS.useSudo,
                rebuildCommand: args.rebuildCommand ?? DEFAULTS.rebuildCommand,
                flavour: args.flavour ?? DEFAULTS.flavour,
                sshWaitSeconds: args.sshWaitSeconds ?? DEFAULTS.sshWaitSeconds,
                switchTimeoutSeconds: args.switchTimeoutSeconds ?? DEFAULTS.switchTimeoutSeconds,
                currentSystem: undefined,
                flavourUsed: undefined,
                hostKeys: undefined,
            },
            // Secret whatever the caller passed: the deploy key and the Spark secret properties.
            { ...opts, additionalSecretOutputs: [...(opts?.additionalSecretOutputs ?? []), "privateKey", "secretProperties"] },
            "nixspark",
            "NixosDeployment",
        );
    }
}
