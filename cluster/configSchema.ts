// The stack configuration: one zod schema for every `nixspark:*` key
// (checked and parsed by cluster/config.ts).
//
// Invalid config must stop the program before any resource is registered,
// with one line per problem that names the key the way the user writes it
// (`nixspark:workers.count`) and says what is expected. Defaults cover
// everything a first-time user need not set.
import { z } from "zod";
import { LIBVIRT_ONLY_KEYS, targetProblems } from "./targets/hostsConfig";
import { hostEntry } from "./targets/hostsSchema";
import { bool, dnsLabel, int, oneLine, str } from "./configPrimitives";
import { dataSchema } from "./dataConfig";
import { libvirtHostsProblems, libvirtSchema, networkModeKeys } from "./libvirtHostsConfig";
import { s3CrossChecks, s3KeySchema, s3Schema } from "./s3Config";

// The sections in files of their own, for those who import them from here.
export { dataMountPointProblem, DATA_RESERVED_PATHS, DATA_RESERVED_TREES, VIRTIOFS_TAG_MAX } from "./dataConfig";
export { S3_SECRET_SETTINGS, S3_SETTINGS, s3SecretSettings, s3SparkSettings } from "./s3Config";

export const CONFIG_NAMESPACE = "nixspark";

const nodeSize = (defaults: { vcpus: number; memoryMiB: number; diskGiB: number }) => ({
    vcpus: int(1, 64, "the number of virtual CPUs").default(defaults.vcpus),
    memoryMiB: int(256, 1024 * 1024, "memory in MiB").default(defaults.memoryMiB),
    diskGiB: int(1, 16 * 1024, "the disk size in GiB").default(defaults.diskGiB),
});

const sparkValue = z.union([oneLine(z.string()), z.number(), z.boolean()], {
    errorMap: () => ({ message: "expected a string, number or boolean for each Spark setting" }),
});

export const EXECUTOR_MEMORY = "spark.executor.memory";
/** Spark's executor memory when spark.executor.memory is not set (config EXECUTOR_MEMORY, createWithDefaultString("1g")). */
export const SPARK_DEFAULT_EXECUTOR_MIB = 1024;
/**
 * The least heap Spark starts an executor with: UnifiedMemoryManager.getMaxMemory
 * refuses spark.executor.memory below 1.5 x its 300 MiB reserve
 * (RESERVED_SYSTEM_MEMORY_BYTES), "[INVALID_EXECUTOR_MEMORY] Executor memory
 * ... must be at least 471859200" (checked against the Spark 3.5.7 jars).
 */
export const SPARK_MIN_EXECUTOR_MIB = 450;

const BYTE_SUFFIXES: Record<string, number> = { b: 0, k: 1, kb: 1, m: 2, mb: 2, g: 3, gb: 3, t: 4, tb: 4, p: 5, pb: 5 };

/**
 * A Spark size read the way Spark reads it: JavaUtils.byteStringAs
 * (common/network-common/.../network/util/JavaUtils.java) lower-cases and
 * trims the text, takes digits and an optional suffix b, k/kb, m/mb, g/gb,
 * t/tb or p/pb (powers of 1024), refuses fractions ("Fractional values are
 * not supported") and any other suffix, and converts by truncating (1536k
 * is 1 MiB). `unit` is undefined when the text has none.
 */
export function parseSparkSize(text: string): { bytes: bigint; mib: number; unit?: string } | { error: string } {
    const lower = text.toLowerCase().trim();
    const whole = /^([0-9]+)([a-z]+)?$/.exec(lower);
    if (whole) {
        const unit = whole[2];
        if (unit !== undefined && !(unit in BYTE_SUFFIXES)) return { error: `unknown unit "${unit}"` };
        // No unit: a count of the unit the setting defaults to (MiB for spark.executor.memory).
        const bytes = BigInt(whole[1]) * 1024n ** BigInt(unit === undefined ? 2 : BYTE_SUFFIXES[unit]);
        return { bytes, mib: Number(bytes / 1048576n), unit };
    }
    if (/^[0-9]+\.[0-9]+([a-z]+)?$/.test(lower)) return { error: "fractional" };
    return { error: "not a size" };
}

/** What is wrong with a spark.executor.memory value, in words that end with the fix; undefined when Spark takes it. */
function executorMemoryProblem(value: unknown): string | undefined {
    const text = String(value);
    const setIt = (v: string) => `pulumi config set --path 'spark.settings["${EXECUTOR_MEMORY}"]' ${v}`;
    const size = typeof value === "boolean" ? { error: "not a size" } : parseSparkSize(text);
    if ("error" in size) {
        if (size.error === "fractional") {
            // 1.5g is 1536m: say it in the next smaller unit when that is whole.
            const m = /^([0-9]+\.[0-9]+)(kb|mb|gb|tb|pb|k|m|g|t|p)$/.exec(text.toLowerCase().trim());
            const smaller = m && Number.isInteger(Number(m[1]) * 1024) ? `${Number(m[1]) * 1024}${"bkmgtp"[BYTE_SUFFIXES[m[2]] - 1]}` : undefined;
            return `${text}: Spark refuses fractional sizes; write a whole number${smaller ? `, such as ${smaller}: ${setIt(smaller)}` : " of a smaller unit"}`;
        }
        return `"${text}" is not a size Spark reads: expected a whole number with a unit k, m, g, t or p, such as 2g or 1536m`;
    }
    if (size.unit === undefined) {
        // The master schedules a unitless value as MiB (the config entry's
        // unit), but UnifiedMemoryManager reads it with getSizeAsBytes, as
        // bytes, and refuses to start the driver and every executor
        // ("Executor memory 2048 must be at least 471859200", Spark 3.5.7).
        return `${text} without a unit: Spark's scheduler reads it as MiB but its executors as bytes, and then refuse to start; write the unit: ${setIt(`${text.trim()}m`)}`;
    }
    if (size.bytes < BigInt(SPARK_MIN_EXECUTOR_MIB) * 1048576n) {
        return `${text} is less than Spark starts an executor with (at least ${SPARK_MIN_EXECUTOR_MIB}m: 1.5 times the 300 MiB it reserves): ${setIt("512m")}`;
    }
    return undefined;
}

/** Spark settings that nixspark:security decides (nix/lib/params.nix refuses them in settings too). */
export const SECURITY_SETTINGS = ["spark.authenticate", "spark.authenticate.secret", "spark.network.crypto.enabled", "spark.io.encryption.enabled"];
const settingName = z
    .string()
    .regex(/^spark\.[A-Za-z0-9._-]+$/, "expected Spark setting names that start with 'spark.'")
    .refine((k) => !SECURITY_SETTINGS.includes(k), { message: "set by nixspark:security (authentication and encryption), not as a Spark setting" });

/** Every `nixspark:*` key (Pulumi.yaml declares exactly these). */
export const configObject = z
    .object({
        libvirtUri: str("a libvirt connection URI such as qemu:///system").default("qemu:///system"),
        domainType: z
            .enum(["kvm", "qemu"], { errorMap: () => ({ message: 'expected "kvm" (hardware virtualization) or "qemu" (software emulation, for hosts without usable KVM)' }) })
            .default("kvm"),
        autostart: bool("whether the network and VMs start with the host").default(true),
        // Where libvirt writes each VM's serial console log: deployments read a
        // new VM's host key fingerprints there (nixspark:ssh.hostKeys "console").
        consoleLogDir: str("an absolute directory for the VMs' console logs")
            .refine((p) => p.startsWith("/"), "expected an absolute directory path")
            .default("/var/log/libvirt/qemu"),
        network: z
            .object({
                name: dnsLabel("a short network name").default("net"),
                // Default: a /24 derived from the stack name (cluster/subnet.ts), so that
                // two stacks with default settings can share a host.
                cidr: str("an IPv4 subnet in CIDR form such as 10.77.0.0/24").optional(),
                bridge: z
                    .string()
                    .regex(/^[A-Za-z0-9_-]{1,15}$/, "expected a Linux bridge name: 1 to 15 letters, digits, '-' or '_'")
                    .optional(),
                // nat (default) | bridge, and bridge mode's gateway (cluster/libvirtHostsConfig.ts).
                ...networkModeKeys,
            })
            .strict()
            .default({}),
        storage: z
            .object({
                pool: dnsLabel("a storage pool name").default("pool"),
                path: str("an absolute directory for the stack's volumes")
                    .refine((p) => p.startsWith("/"), "expected an absolute directory path")
                    .default("/var/lib/libvirt/images/nixspark"),
            })
            .strict()
            .default({}),
        image: z
            .object({
                path: str("an absolute path to a qcow2 image")
                    .refine((p) => p.startsWith("/"), "expected an absolute path to a qcow2 image")
                    .optional(),
                flake: str("a flake reference").default("path:./nix"),
                attribute: str("a flake package attribute").default("base-image"),
                kernel: str("an absolute path to a kernel").refine((p) => p.startsWith("/"), "expected an absolute path").optional(),
                initrd: str("an absolute path to an initrd").refine((p) => p.startsWith("/"), "expected an absolute path").optional(),
                cmdline: z.string().optional(),
            })
            .strict()
            .refine((i) => !(i.initrd || i.cmdline) || i.kernel, { message: "initrd and cmdline need image.kernel (direct kernel boot)", path: ["kernel"] })
            .default({}),
        master: z.object(nodeSize({ vcpus: 2, memoryMiB: 2048, diskGiB: 20 })).strict().default({}),
        workers: z
            .object({ count: int(0, 250, "the number of Spark workers").default(2), ...nodeSize({ vcpus: 2, memoryMiB: 4096, diskGiB: 20 }) })
            .strict()
            .default({}),
        ssh: z
            .object({
                user: dnsLabel("a Unix user name for deployments").default("deploy"),
                port: int(1, 65535, "a TCP port").default(22),
                publicKey: str("an SSH public key line")
                    .regex(/^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-ssh-ed25519@openssh\.com) [A-Za-z0-9+/=]+( .*)?$/, "expected an SSH public key line such as 'ssh-ed25519 AAAA... you@host'")
                    .optional(),
                // Default: the stack's own deploy key, made on first use (cluster/stackConfig.ts).
                privateKeyPath: str("the path of the SSH private key used to deploy").optional(),
                // How a new VM's host key is trusted: "console" pins it only when the
                // VM printed its fingerprint to its serial console (nix/modules/guest.nix
                // does); "first-use" trusts the first key that answers. Default:
                // "console" for the stack's own image, "first-use" for nixspark:image.path.
                hostKeys: z.enum(["console", "first-use"], { errorMap: () => ({ message: 'expected "console" (verify against the VM\'s serial console) or "first-use"' }) }).optional(),
            })
            .strict()
            .default({}),
        spark: z
            .object({
                settings: z
                    .record(settingName, sparkValue)
                    .superRefine((settings, ctx) => {
                        if (settings[EXECUTOR_MEMORY] === undefined) return;
                        const problem = executorMemoryProblem(settings[EXECUTOR_MEMORY]);
                        if (problem) ctx.addIssue({ code: z.ZodIssueCode.custom, path: [EXECUTOR_MEMORY], message: problem });
                    })
                    .default({}),
                pythonPackages: z
                    .array(z.string().regex(/^[A-Za-z0-9_.-]+$/, "expected nixpkgs python3Packages attribute names such as numpy"), {
                        invalid_type_error: "expected a list of python3Packages attribute names",
                    })
                    .refine((names) => !names.includes("pyspark"), {
                        message: "remove pyspark: every job already gets PySpark from the cluster's own Spark package (a second one would shadow its spark-submit)",
                    })
                    .default(["numpy", "pandas"]),
            })
            .strict()
            .default({}),
        deploy: z
            .object({
                enabled: bool("whether to deploy the NixOS roles").default(true),
                flake: str("a flake reference for the NixOS roles").default("path:./nix"),
                rebuildCommand: str("the nixos-rebuild executable").default("nixos-rebuild"),
                useSudo: bool("whether nixos-rebuild escalates with sudo on the target").default(true),
                buildHost: z.string().optional(),
                sshWaitSeconds: int(1, 3600, "seconds to wait for SSH on a new VM").default(300),
                switchTimeoutSeconds: int(10, 86400, "seconds allowed for one nixos-rebuild").default(3600),
                // The order nodes switch in (cluster/rollout.ts): master, one canary
                // worker, then batches; a batch starts after the previous one is verified.
                rollout: z
                    .object({
                        maxParallel: int(1, 64, "the largest number of workers switched at once").default(2),
                        canary: bool("whether one worker switches alone before the others").default(true),
                        verifyTimeoutSeconds: int(10, 3600, "seconds each node gets after its switch until Spark reports it ALIVE").default(300),
                    })
                    .strict()
                    .default({}),
                decommissionTimeoutSeconds: int(0, 3600, "seconds a removed worker gets to finish its executors after Spark decommissions it").default(120),
            })
            .strict()
            .default({}),
        health: z
            .object({
                enabled: bool("whether to wait for every worker to be ALIVE").default(true),
                timeoutSeconds: int(1, 3600, "seconds to wait for the Spark master and workers").default(300),
            })
            .strict()
            .default({}),
        security: z
            .object({
                authenticate: bool("whether Spark requires the cluster secret (spark.authenticate, RPC encryption)").default(true),
                ioEncryption: bool("whether Spark encrypts shuffle and spill files on local disks").default(false),
                secretGeneration: int(1, 1_000_000, "the cluster secret's generation (raise it to rotate the secret)").default(1),
            })
            .strict()
            .default({}),
        // Spark settings whose values are secrets (`pulumi config set --secret
        // --path 'sparkSecrets["spark.ssl.keyPassword"]' ...`): delivered with
        // the cluster secret, never written to the stack file or the store.
        sparkSecrets: z
            .record(settingName, oneLine(z.string({ invalid_type_error: "expected each secret Spark setting's value as a string" })))
            .default({}),
        // The shared data directory (cluster/dataConfig.ts).
        data: dataSchema,
        // S3-compatible storage, for s3a:// paths (cluster/s3Config.ts).
        s3: s3Schema,
        s3AccessKeyId: s3KeySchema("the S3 access key id"),
        s3SecretAccessKey: s3KeySchema("the S3 secret access key"),
        // ---- Targets (docs/targets.md; cluster/targets/): where the nodes are.
        // "libvirt" (the default): VMs on one libvirt host, every key above.
        // "hosts": existing NixOS machines, listed in nixspark:hosts.
        // One cluster over several libvirt hosts (cluster/libvirtHostsConfig.ts).
        libvirt: libvirtSchema,
        target: z.enum(["libvirt", "hosts"], { errorMap: () => ({ message: 'expected "libvirt" (VMs on one libvirt host) or "hosts" (existing NixOS machines listed in nixspark:hosts)' }) }).default("libvirt"),
        hosts: z.array(hostEntry, { invalid_type_error: "expected a list of machines: [{ name, address, role, module, hostKey, ... }]" }).default([]),
    })
    .strict();

export type Section = keyof typeof configObject.shape;
export type AddIssue = (path: (string | number)[], message: string) => void;

/**
 * Rules across sections. Each names the sections it reads: checkConfig runs
 * it whenever those sections are valid by themselves, so a bad value in one
 * section hides no problem of another (zod runs a refinement of the whole
 * object only when every field parsed).
 */
export const crossChecks: { needs: Section[]; check: (c: z.infer<typeof configObject>, add: AddIssue) => void }[] = [
    ...s3CrossChecks(),
    {
        needs: ["sparkSecrets", "security"],
        check: (c, add) => {
            if (Object.keys(c.sparkSecrets).length > 0 && !c.security.authenticate) {
                add(["sparkSecrets"], "secret Spark settings reach the nodes with the cluster secret: they need nixspark:security.authenticate (on by default)");
            }
        },
    },
    {
        needs: ["sparkSecrets", "spark"],
        check: (c, add) => {
            for (const k of Object.keys(c.sparkSecrets)) if (k in c.spark.settings) add(["sparkSecrets", k], "also set in nixspark:spark.settings; keep it in one place");
        },
    },
    {
        // The nodes open Spark's ports to the host (the gateway address) only
        // with authentication on (nix/modules/spark.nix; docs/security.md), and
        // the health gate and each deployment's Spark check ask the master from
        // the host: without authentication every `up` would wait out the gate.
        needs: ["security", "health"],
        check: (c, add) => {
            if (c.security.authenticate || !c.health.enabled) return;
            add(
                ["security", "authenticate"],
                `false while nixspark:health.enabled is true: the host then reaches no Spark port (the nodes open them to the host only with authentication, docs/security.md), ` +
                    `so every pulumi up would wait ${c.health.timeoutSeconds} s for the health gate and fail. ` +
                    `Turn the gate off: pulumi config set --path health.enabled false, or keep authentication on: pulumi config set --path security.authenticate true`,
            );
        },
    },
    {
        // nixspark:libvirt.hosts and the network mode (cluster/libvirtHostsConfig.ts).
        needs: ["libvirt", "network", "workers", "libvirtUri", "data", "target"],
        check: (c, add) => {
            if (c.target !== "libvirt") return;
            libvirtHostsProblems(c, { workersCount: configObject.shape.workers.parse(undefined).count, libvirtUri: configObject.shape.libvirtUri.parse(undefined) }, add);
        },
    },
    {
        // nixspark:target and nixspark:hosts (cluster/targets/hostsConfig.ts).
        needs: ["target", "hosts", "ssh", ...LIBVIRT_ONLY_KEYS],
        check: (c, add) => {
            const defaults = Object.fromEntries(LIBVIRT_ONLY_KEYS.map((k) => [k, configObject.shape[k].parse(undefined)]));
            for (const [path, message] of targetProblems(c, defaults)) add(path, message);
        },
    },
];

export const configSchema = configObject.superRefine((c, ctx) => {
    for (const { check } of crossChecks) check(c, (path, message) => ctx.addIssue({ code: z.ZodIssueCode.custom, path, message }));
});

export type ClusterConfig = z.infer<typeof configSchema>;

export class ConfigError extends Error {
    constructor(readonly problems: string[]) {
        super(`invalid stack configuration:\n${problems.map((p) => `  ${p}`).join("\n")}`);
        this.name = "ConfigError";
    }
}

export function keyOf(path: (string | number)[]): string {
    return `${CONFIG_NAMESPACE}:${path.map(String).join(".")}`;
}
