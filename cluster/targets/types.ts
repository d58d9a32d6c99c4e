// Targets: where a stack's nodes are (docs/targets.md). Every target gives
// the program the same things (deployments in rollout order, the health
// gate, the addresses a user reaches Spark at, one row per node), so status,
// smoke and the nixspark verbs read every stack alike.
//
// Built: "libvirt" (VMs on one libvirt host: cluster/sparkCluster.ts, which
// already has this shape and can move behind it as cluster/targets/libvirt.ts)
// and "hosts" (existing NixOS machines: ./hosts.ts). Planned (issue 19), each
// one file beside these: libvirt across several hosts, and containers.
import type * as pulumi from "@pulumi/pulumi";
import type { NixosDeployment } from "../../providers/nixosDeployment";
import type { SparkHealth } from "../../providers/sparkHealth";

export type TargetKind = "libvirt" | "hosts";

/** One node as the stack exports it (cluster/sparkStatus.ts reads these). */
export interface TargetNodeOutput {
    name: string;
    role: string;
    ip: string;
    hostname: string;
    /** The libvirt domain; absent on targets without one. */
    libvirtName?: string;
    /** How this node is reached when it differs per node (target hosts); else the stack's nixspark:ssh. */
    sshUser?: string;
    sshPort?: number;
}

/** What a target's component gives the program, whatever made it. */
export interface TargetCluster {
    /** Every node's deployment, in rollout order. */
    readonly deployments: NixosDeployment[];
    /** The gate (absent with nixspark:health.enabled false). */
    readonly health?: SparkHealth;
    readonly masterAddress: string;
    readonly masterUrl: string;
    readonly webUiUrl: string;
    readonly historyUrl: string;
    readonly nodeOutputs: TargetNodeOutput[];
}

/** What the program hands a target once the stack's config and deploy key are settled. */
export interface TargetContext<Config> {
    stack: string;
    config: Config;
    /** The deploy key file and the stack's known-hosts file, as the state records them (relative to the project). */
    ssh: { identityFile: string; knownHostsFile: string };
    /** The stack's own deploy key (a Pulumi secret), when it has one: each deployment holds it. */
    privateKey?: pulumi.Output<string>;
    /** nixspark:sparkSecrets, as a Pulumi secret. */
    sparkSecrets: pulumi.Input<Record<string, string>>;
    log: { info(m: string): void; warn(m: string): void; debug(m: string): void };
}

/**
 * A target: what it must know before anything is registered (its Nix
 * evaluation, so preview knows every system and a bad setting stops early),
 * then its resources under one component.
 */
export interface Target<Config, Prepared> {
    kind: TargetKind;
    prepare(ctx: TargetContext<Config>): Promise<Prepared>;
    create(ctx: TargetContext<Config>, prepared: Prepared): TargetCluster;
}
