// Checking the stack configuration (the schema is cluster/configSchema.ts):
// every problem in one round, one line per problem naming the key as the
// user writes it (`nixspark:workers.count`) and the fix; then the checks
// across sections that need sizes (worker memory against the reserve and the
// executors).
import { workerMemoryBudget } from "./rollout";
import type { z } from "zod";
import { configObject, ConfigError, CONFIG_NAMESPACE, crossChecks, EXECUTOR_MEMORY, keyOf, parseSparkSize, SPARK_DEFAULT_EXECUTOR_MIB, SPARK_MIN_EXECUTOR_MIB } from "./configSchema";
import type { ClusterConfig, Section } from "./configSchema";
import { plainSecretProblems, unknownKeyProblem } from "./configKeys";

export { ConfigError } from "./configSchema";
export type { ClusterConfig } from "./configSchema";

// ---- Checking a whole config in one round.

export interface ConfigCheck {
    /** The config, with each invalid section replaced by its defaults: for further checks only, never to deploy. */
    config: ClusterConfig;
    /** One line per problem, each naming its key. */
    problems: string[];
    /** The top-level sections that are invalid by themselves; checks that read them should not run. */
    invalid: ReadonlySet<string>;
}

/**
 * Validates raw config (already JSON-decoded) and collects every problem
 * without throwing: each field's own, then the cross-section rules over the
 * sections that are valid. `isSecret` says which top-level keys Pulumi holds
 * as secrets, so that no fix command prints their values.
 */
export function checkConfig(raw: Record<string, unknown>, opts: { isSecret?: (topKey: string) => boolean } = {}): ConfigCheck {
    const isSecret = opts.isSecret ?? (() => false);
    const problems: string[] = [];
    const full = configObject.safeParse(raw);
    const issues = full.success ? [] : full.error.issues;
    for (const issue of issues) {
        if (issue.code === "unrecognized_keys") {
            for (const k of issue.keys) problems.push(unknownKeyProblem(raw, [...issue.path, k], isSecret));
        } else if (issue.code === "invalid_type" && issue.received === "undefined") {
            problems.push(`${keyOf(issue.path)}: required: ${issue.message.replace(/^required: /, "")}`);
        } else {
            problems.push(`${keyOf(issue.path)}: ${issue.message}`);
        }
    }
    const invalid = new Set<string>();
    const sections: Record<string, unknown> = {};
    for (const [key, schema] of Object.entries(configObject.shape) as [Section, z.ZodTypeAny][]) {
        const r = schema.safeParse(raw[key]);
        if (!r.success) invalid.add(key);
        sections[key] = r.success ? r.data : schema.parse(undefined);
    }
    const config = sections as ClusterConfig;
    for (const { needs, check } of crossChecks) {
        if (needs.some((s) => invalid.has(s))) continue;
        check(config, (path, message) => problems.push(`${keyOf(path)}: ${message}`));
    }
    if (opts.isSecret) problems.push(...plainSecretProblems(raw, opts.isSecret)); // the S3 keys: Pulumi secrets only
    return { config, problems: [...new Set(problems)], invalid };
}

/** Validates raw config (already JSON-decoded); throws ConfigError listing every problem. */
export function parseConfig(raw: Record<string, unknown>): ClusterConfig {
    const { config, problems } = checkConfig(raw);
    if (problems.length > 0) throw new ConfigError(problems);
    return config;
}

/**
 * Whether Spark can start an executor on a worker, for stacks that run Spark
 * (nixspark:health.enabled: with it off the program asks Spark nothing, as for
 * the tests' tiny guests, and holds the VMs to nothing either).
 *
 * What Spark does (its sources, core/src/main/scala/org/apache/spark/...):
 * the standalone master starts an executor on a worker only when the
 * worker's free memory is at least the executor's (deploy/master/Master.scala,
 * canLaunch: `worker.memoryFree >= memoryReq` with memoryReq =
 * resourceDesc.memoryMbPerExecutor). That is spark.executor.memory alone:
 * ApplicationInfo takes memoryMbPerExecutor from the resource profile's
 * getExecutorMemory (else ApplicationDescription.memoryPerExecutorMB, the
 * same), the "memory" request that ResourceProfile.getDefaultExecutorResources
 * makes from conf.get(EXECUTOR_MEMORY) (1g when not set); the default
 * profile of the Spark 3.5.7 jars says so too (memory 2048 for "2g", and
 * memoryOverhead a request of its own). spark.executor.memoryOverhead "is
 * currently supported on YARN and Kubernetes" (docs/configuration.md): the
 * standalone master never adds it. A worker's memory is SPARK_WORKER_MEMORY
 * (deploy/worker/WorkerArguments.scala, Utils.memoryStringToMb), which the
 * NixOS role sets to workerOffer's number with an "m" (nix/modules/worker.nix).
 * An executor bigger than that never starts: every job waits for resources.
 */
export function workerMemoryProblems(c: ClusterConfig): string[] {
    if (!c.health.enabled) return [];
    const vm = c.workers.memoryMiB;
    const b = workerMemoryBudget(vm);
    const offer = Math.max(b.minOfferMiB, b.leftMiB);
    const set = c.spark.settings[EXECUTOR_MEMORY];
    const size = set === undefined ? undefined : parseSparkSize(String(set));
    if (size && "error" in size) return []; // the schema says what is wrong with it
    const executorMiB = size ? size.mib : SPARK_DEFAULT_EXECUTOR_MIB;
    const need = smallestWorkerFor(executorMiB);
    const grow = need === undefined ? "no worker size up to 1 TiB offers that" : `pulumi config set --path workers.memoryMiB ${need}`;
    const shrink = offer >= SPARK_MIN_EXECUTOR_MIB ? `pulumi config set --path 'spark.settings["${EXECUTOR_MEMORY}"]' ${offer}m` : undefined;
    const split = `less ${b.osReserveMiB} MiB for the OS and ${b.daemonMemoryMiB} MiB for the worker daemon`;
    if (b.leftMiB < b.minOfferMiB) {
        const executor = set === undefined ? `Spark's default executor (1g)` : `spark.executor.memory ${set}`;
        return [
            `${keyOf(["workers", "memoryMiB"])}: ${vm} MiB is too small for a Spark worker: the OS reserve (${b.osReserveMiB} MiB) and the worker daemon (${b.daemonMemoryMiB} MiB) leave ${Math.max(0, b.leftMiB)} MiB, ` +
                `yet a worker offers Spark at least ${b.minOfferMiB} MiB, memory the VM does not have. Give each worker room for ${executor}: ${grow}`,
        ];
    }
    if (executorMiB <= offer) return [];
    if (set !== undefined) {
        return [
            `${keyOf(["spark", "settings", EXECUTOR_MEMORY])}: ${set} (${executorMiB} MiB) does not fit the ${offer} MiB each worker offers Spark (nixspark:workers.memoryMiB = ${vm}, ${split}), ` +
                `so the master would start no executor and every job would wait for resources. ${shrink ? `Lower it: ${shrink}, or give` : "Give"} workers more memory: ${grow}`,
        ];
    }
    return [
        `${keyOf(["workers", "memoryMiB"])}: ${vm} MiB leaves each worker ${offer} MiB for executors (${split}), and spark.executor.memory is not set: Spark's default 1g (${SPARK_DEFAULT_EXECUTOR_MIB} MiB) does not fit, ` +
            `so the master would start no executor. Give workers more memory: ${grow}${shrink ? `, or set a smaller executor: ${shrink}` : ""}`,
    ];
}

/** The smallest worker VM (MiB) that offers Spark at least `executorMiB` of its own memory. */
function smallestWorkerFor(executorMiB: number): number | undefined {
    const fits = (vm: number) => workerMemoryBudget(vm).leftMiB >= Math.max(executorMiB, workerMemoryBudget(vm).minOfferMiB);
    let lo = 256;
    let hi = 1024 * 1024;
    if (!fits(hi)) return undefined;
    // What is left grows with the VM (by 0 or 1 MiB per MiB), so the first fit is found by halving.
    while (lo < hi) {
        const mid = Math.floor((lo + hi) / 2);
        if (fits(mid)) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

/**
 * Turns Pulumi's flat config map ({"nixspark:workers": '{"count":3}'}) into the raw
 * object parseConfig takes. Object and array values arrive JSON-encoded.
 */
export function rawFromPulumiConfig(all: Record<string, string>): Record<string, unknown> {
    const raw: Record<string, unknown> = {};
    const prefix = `${CONFIG_NAMESPACE}:`;
    for (const [k, v] of Object.entries(all)) {
        if (!k.startsWith(prefix)) continue;
        const key = k.slice(prefix.length);
        const t = v.trim();
        if (t.startsWith("{") || t.startsWith("[")) {
            try {
                raw[key] = JSON.parse(t);
                continue;
            } catch {
                /* keep the string: the schema says what it expected */
            }
        }
        raw[key] = v;
    }
    return raw;
}
