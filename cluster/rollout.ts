// The order in which nodes switch to a new NixOS system, and what Spark must
// report about each node afterwards. Pure functions; SparkCluster turns the
// batches into a dependsOn chain (a batch's deployments depend on every
// deployment of the batch before), so Pulumi starts a batch only after the
// previous one was switched AND verified, and never starts the batches after
// a failed node (the engine skips the dependents of a failed resource).

export interface RolloutOptions {
    /** The largest batch of workers that switch at once (after the canary). */
    maxParallel: number;
    /** One worker switches alone first. */
    canary: boolean;
}

/**
 * Workers in rollout batches: the canary alone (the first worker, when
 * `canary`), then the rest in declaration order, at most `maxParallel` at a
 * time. Every worker appears exactly once.
 */
export function rolloutBatches<T>(workers: readonly T[], opts: RolloutOptions): T[][] {
    const size = Math.max(1, Math.floor(opts.maxParallel));
    const batches: T[][] = [];
    let rest = [...workers];
    if (opts.canary && rest.length > 0) {
        batches.push([rest[0]]);
        rest = rest.slice(1);
    }
    for (let i = 0; i < rest.length; i += size) batches.push(rest.slice(i, i + size));
    return batches;
}

/** The whole rollout: the master alone first (workers register with a running master), then the worker batches. */
export function rolloutOrder<T>(master: T, workers: readonly T[], opts: RolloutOptions): T[][] {
    return [[master], ...rolloutBatches(workers, opts)];
}

/**
 * What a worker VM offers to Spark, by the rule of nix/lib/params.nix: every
 * vCPU is a core; memory is the VM's minus the OS reserve (a tenth of it, at
 * least 512 MiB) and the worker daemon's 512 MiB heap, but at least 256 MiB.
 * The deployment checks that the master lists the worker with exactly this
 * (tests/unit/rollout.test.ts evaluates params.nix to keep the two equal).
 */
export function workerOffer(vcpus: number, vmMemoryMiB: number): { cores: number; memoryMiB: number } {
    const b = workerMemoryBudget(vmMemoryMiB);
    return { cores: vcpus, memoryMiB: Math.max(b.minOfferMiB, b.leftMiB) };
}

/**
 * How a worker VM's memory is shared, by the same rule: the OS reserve, the
 * worker daemon's heap, and what is left for executors. Below `minOfferMiB`
 * the worker offers that floor anyway, memory the VM does not have (the
 * config checks refuse such a worker, cluster/config.ts).
 */
export function workerMemoryBudget(vmMemoryMiB: number): { osReserveMiB: number; daemonMemoryMiB: number; leftMiB: number; minOfferMiB: number } {
    const daemonMemoryMiB = 512;
    const osReserveMiB = Math.max(512, Math.trunc(vmMemoryMiB / 10));
    return { osReserveMiB, daemonMemoryMiB, leftMiB: vmMemoryMiB - osReserveMiB - daemonMemoryMiB, minOfferMiB: 256 };
}
