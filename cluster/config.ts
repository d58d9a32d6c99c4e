// The stack configuration: one zod schema for every `nixspark:*` key.
//
// Invalid config must stop the program before any resource is registered,
// with one line per problem that names the key the way the user writes it
// (`nixspark:workers.count`) and says what is expected. Defaults cover
// everything a first-time user need not set.
import { z } from "zod";

export const CONFIG_NAMESPACE = "nixspark";

/** Accepts 3 and "3" (top-level Pulumi config values arrive as strings). */
const int = (min: number, max: number, what: string) =>
    z.preprocess(
        (v) => (typeof v === "string" && /^-?\d+$/.test(v.trim()) ? Number(v) : v),
        z
            .number({ invalid_type_error: `expected ${what}: a whole number from ${min} to ${max}` })
            .int(`expected ${what}: a whole number from ${min} to ${max}`)
            .min(min, `expected ${what}: a whole number from ${min} to ${max}`)
            .max(max, `expected ${what}: a whole number from ${min} to ${max}`),
    );

const bool = (what: string) =>
    z.preprocess(
        (v) => (v === "true" ? true : v === "false" ? false : v),
        z.boolean({ invalid_type_error: `expected ${what}: true or false` }),
    );

const str = (what: string) =>
    z.string({ invalid_type_error: `expected ${what}`, required_error: `required: ${what}` }).min(1, `expected ${what}, got an empty string`);

/** A name that is safe inside libvirt object names, hostnames and file names. */
const dnsLabel = (what: string) =>
    str(what).regex(/^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z]$/, `expected ${what}: lower-case letters, digits and '-', starting with a letter`);

const nodeSize = (defaults: { vcpus: number; memoryMiB: number; diskGiB: number }) => ({
    vcpus: int(1, 64, "the number of virtual CPUs").default(defaults.vcpus),
    memoryMiB: int(256, 1024 * 1024, "memory in MiB").default(defaults.memoryMiB),
    diskGiB: int(1, 16 * 1024, "the disk size in GiB").default(defaults.diskGiB),
});

const sparkValue = z.union([z.string(), z.number(), z.boolean()], {
    errorMap: () => ({ message: "expected a string, number or boolean for each Spark setting" }),
});

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
                settings: z.record(settingName, sparkValue).default({}),
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
            .record(settingName, z.string({ invalid_type_error: "expected each secret Spark setting's value as a string" }).regex(/^[^\r\n]*$/, "expected a one-line value"))
            .default({}),
    })
    .strict();

export const configSchema = configObject.superRefine((c, ctx) => {
        if (Object.keys(c.sparkSecrets).length > 0 && !c.security.authenticate) {
            ctx.addIssue({ code: z.ZodIssueCode.custom, path: ["sparkSecrets"], message: "secret Spark settings reach the nodes with the cluster secret: they need nixspark:security.authenticate (on by default)" });
        }
        for (const k of Object.keys(c.sparkSecrets)) {
            if (k in c.spark.settings) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ["sparkSecrets", k], message: "also set in nixspark:spark.settings; keep it in one place" });
        }
});

export type ClusterConfig = z.infer<typeof configSchema>;

export class ConfigError extends Error {
    constructor(readonly problems: string[]) {
        super(`invalid stack configuration:\n${problems.map((p) => `  ${p}`).join("\n")}`);
        this.name = "ConfigError";
    }
}

function keyOf(path: (string | number)[]): string {
    return `${CONFIG_NAMESPACE}:${path.map(String).join(".")}`;
}

/** Validates raw config (already JSON-decoded); throws ConfigError listing every problem. */
export function parseConfig(raw: Record<string, unknown>): ClusterConfig {
    const result = configSchema.safeParse(raw);
    if (result.success) return result.data;
    const problems: string[] = [];
    for (const issue of result.error.issues) {
        if (issue.code === "unrecognized_keys") {
            for (const k of issue.keys) problems.push(`${keyOf([...issue.path, k])}: unknown key (check the spelling; see Pulumi.yaml for every key)`);
        } else if (issue.code === "invalid_type" && issue.received === "undefined") {
            problems.push(`${keyOf(issue.path)}: required: ${issue.message.replace(/^required: /, "")}`);
        } else {
            problems.push(`${keyOf(issue.path)}: ${issue.message}`);
        }
    }
    throw new ConfigError([...new Set(problems)]);
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
