// The inputs, outputs and arguments of a NixosDeployment (providers/nixosDeployment.ts).
import type * as pulumi from "@pulumi/pulumi";
import type { SparkCheck } from "../spark/verify";
import type { VmRef } from "../vmPower";

export type RebuildFlavour = "auto" | "legacy" | "ng";

/** Resolved inputs, as the provider sees them (every one is also in the outputs). */
export interface NixosDeploymentInputs {
    /** Node name, for messages ("master", "worker-1"). */
    node: string;
    /**
     * Flake reference holding the NixOS configurations: the immutable store
     * copy the program evaluated ("path:/nix/store/...-source"), so the switch
     * builds exactly the system the program previewed. Changing it alone
     * switches nothing (see SWITCH_KEYS).
     */
    flake: string;
    /** Name under nixosConfigurations, e.g. "dev-worker". */
    configuration: string;
    /** Address of the node. */
    host: string;
    /**
     * Identity of the VM behind the address (its libvirt domain UUID). A new
     * one means a new VM: it is deployed again and its new host key replaces
     * the old one in the known-hosts file, as on first contact.
     */
    machineId?: string;
    sshUser: string;
    sshPort: number;
    identityFile: string;
    /** The stack's known-hosts file (a cache: the keys pinned for this node are `hostKeys` in the outputs). */
    knownHostsFile: string;
    /**
     * The stack's own deploy key, when it deploys with one (a Pulumi secret,
     * from the DeployKey resource): written to identityFile when that file is
     * missing, so read, update and delete reach the node from the state alone.
     */
    privateKey?: string;
    /** The toplevel OUT path the program evaluated (`nix eval --raw ...toplevel.outPath`). */
    expectedSystem: string;
    /** Optional `--build-host`; it gets the same NIX_SSHOPTS as the target. */
    buildHost?: string;
    /** Activate with sudo on the target (legacy: --use-remote-sudo, ng: --sudo). */
    useSudo: boolean;
    /** The nixos-rebuild executable (name on PATH or absolute path). */
    rebuildCommand: string;
    flavour: RebuildFlavour;
    sshWaitSeconds: number;
    switchTimeoutSeconds: number;
    /**
     * Spark properties that must not enter /nix/store (the cluster secret,
     * secret Spark settings), as providers/clusterSecret.ts renders them. A
     * Pulumi secret: written to the node before the switch, never logged.
     */
    secretProperties?: string;
    /** Units restarted when secretProperties change on a running node (its Spark daemon and the unit that assembles its configuration). */
    secretUnits?: string[];
    /** When given: after the switch, wait until Spark agrees (else roll back); on delete, decommission a worker. */
    spark?: SparkCheck;
    /**
     * The VM's serial console log on this host (libvirt writes it). When set,
     * a first contact pins the host key only if the VM printed its
     * fingerprint there; otherwise the first key that answers is trusted.
     */
    consoleLog?: string;
    /** The libvirt URI of the host that writes consoleLog, when it is another machine's (read over ssh: providers/consoleLog.ts). */
    consoleLogHost?: string;
    /** An existing machine's SSH host key fingerprint (SHA256:...; target hosts): a first contact pins the key only when it is this one. */
    hostKeyFingerprint?: string;
    /** An existing machine's configuration without the role (target hosts): what a delete switches it to, after a worker's decommission. */
    release?: { configuration: string; expectedSystem: string };
    /** Versions of what the expected system runs (from the evaluation that gave it): what preview shows moving. */
    packages?: Record<string, unknown>;
    /**
     * Print `nix store diff-closures` of the node's previous and new system
     * after its switch. SparkCluster sets it on the first node of each role
     * in the rollout (the master, the canary): once per role, not per node.
     */
    closureDiff?: boolean;
    /**
     * The VM behind the node and the definition its Domain gives it: size,
     * and what else a restart applies (domain type, kernel, initrd, command
     * line, console log, network, host name). When it changes, the update
     * restarts the VM (its Domain only saved the new definition) before it
     * switches: VM restarts follow the rollout order and each is verified
     * with the switch that follows it.
     */
    vm?: VmRef;
}

export interface NixosDeploymentOutputs extends NixosDeploymentInputs {
    /** What `readlink -f /run/current-system` said on the node at the last deploy or refresh. */
    currentSystem: string;
    /** The nixos-rebuild generation used at the last deploy. */
    flavourUsed: "legacy" | "ng";
    /**
     * The node's SSH host keys as known_hosts lines: what first contact pinned
     * (verified against the VM's console, or first use), then what the
     * known-hosts file held when the node last answered. Put back into the
     * known-hosts file when a checkout's file has no entry for the node.
     */
    hostKeys?: string[];
}

/** The resource's arguments (what SparkCluster passes per node). */
export interface NixosDeploymentArgs {
    node: pulumi.Input<string>;
    flake: pulumi.Input<string>;
    configuration: pulumi.Input<string>;
    host: pulumi.Input<string>;
    /** The VM's identity (libvirt domain UUID): a new VM at the same address is deployed again. */
    machineId?: pulumi.Input<string>;
    sshUser: pulumi.Input<string>;
    /** Default 22. */
    sshPort?: pulumi.Input<number>;
    identityFile: pulumi.Input<string>;
    knownHostsFile: pulumi.Input<string>;
    /** The stack's own deploy key (pass a Pulumi secret): the deployment reaches its node from the state alone. */
    privateKey?: pulumi.Input<string>;
    expectedSystem: pulumi.Input<string>;
    buildHost?: pulumi.Input<string>;
    /** Default true. */
    useSudo?: pulumi.Input<boolean>;
    /** Default "nixos-rebuild". */
    rebuildCommand?: pulumi.Input<string>;
    /** Default "auto". */
    flavour?: pulumi.Input<RebuildFlavour>;
    /** Default 300. */
    sshWaitSeconds?: pulumi.Input<number>;
    /** Default 3600. */
    switchTimeoutSeconds?: pulumi.Input<number>;
    /** The secret Spark properties for the node (pass a Pulumi secret). */
    secretProperties?: pulumi.Input<string>;
    secretUnits?: pulumi.Input<pulumi.Input<string>[]>;
    /** What Spark must report after the switch; a worker is decommissioned through Spark on delete. */
    spark?: pulumi.Input<SparkCheck>;
    /** The VM's console log, to verify its host key on first contact. */
    consoleLog?: pulumi.Input<string>;
    /** The libvirt URI of the host that writes the console log (several libvirt hosts). */
    consoleLogHost?: pulumi.Input<string>;
    /** The machine's host key fingerprint, to verify its key on first contact (target hosts). */
    hostKeyFingerprint?: pulumi.Input<string>;
    /** The machine's configuration without the role, switched to on delete (target hosts). */
    release?: pulumi.Input<{ configuration: string; expectedSystem: string }>;
    /** Versions of what the expected system runs, for a package-level preview. */
    packages?: pulumi.Input<Record<string, unknown>>;
    /** The VM and its definition: a new one restarts it, in rollout order, before the switch. */
    vm?: pulumi.Input<VmRef> | { [K in keyof VmRef]: pulumi.Input<VmRef[K]> };
    /** Print `nix store diff-closures` of the old and new system after the switch (one node per role). */
    closureDiff?: pulumi.Input<boolean>;
}
