// The stack configuration: one zod schema for every `nixspark:*` key.
//
// Invalid config must stop the program before any resource is registered,
// with one line per problem that names the key the way the user writes it
// (`nixspark:workers.count`) and says what is expected. Defaults cover
// everything a first-time user need not set.
import { z } from "zod";
import { workerMemoryBudget } from "./rollout";

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

/**
 * Every Spark setting becomes one line "<name> <value>" of spark-defaults.conf
 * (nix/modules/spark.nix; the secret ones are appended on the node), which
 * Spark reads with java.util.Properties.load: a line feed or a carriage
 * return in a value would end it and start a setting of its own.
 */
const ONE_LINE = "expected a one-line value: a line break would start another line of spark-defaults.conf";
const oneLine = (s: z.ZodString) => s.regex(/^[^\r\n]*$/, ONE_LINE);

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
    })
    .strict();

type Section = keyof typeof configObject.shape;
type AddIssue = (path: (string | number)[], message: string) => void;

/**
 * Rules across sections. Each names the sections it reads: checkConfig runs
 * it whenever those sections are valid by themselves, so a bad value in one
 * section hides no problem of another (zod runs a refinement of the whole
 * object only when every field parsed).
 */
const crossChecks: { needs: Section[]; check: (c: z.infer<typeof configObject>, add: AddIssue) => void }[] = [
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

function keyOf(path: (string | number)[]): string {
    return `${CONFIG_NAMESPACE}:${path.map(String).join(".")}`;
}

// ---- Unknown keys: a guess at what was meant, and the commands that move the value there.

/** Optimal string alignment distance: insertions, deletions, substitutions and swaps of neighbours cost 1. */
export function editDistance(a: string, b: string): number {
    const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
    for (let i = 1; i <= a.length; i++) {
        for (let j = 1; j <= b.length; j++) {
            const cost = a[i - 1] === b[j - 1] ? 0 : 1;
            d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
            if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
        }
    }
    return d[a.length][b.length];
}

/**
 * The known key closest to a misspelt one, if any is close: the same key in
 * other case, a few edits away (1 for keys of up to 3 letters, 2 up to 6, 3
 * beyond), or one a prefix of the other (timeout for timeoutSeconds).
 */
export function closestKey(typed: string, known: readonly string[]): string | undefined {
    const t = typed.toLowerCase();
    const limit = t.length <= 3 ? 1 : t.length <= 6 ? 2 : 3;
    let best: { key: string; score: number } | undefined;
    for (const key of known) {
        const k = key.toLowerCase();
        const prefix = Math.min(t.length, k.length) >= 4 && (k.startsWith(t) || t.startsWith(k));
        const score = editDistance(t, k);
        if ((score <= limit || prefix) && (!best || score < best.score)) best = { key, score };
    }
    return best?.key;
}

function unwrapSchema(t: z.ZodTypeAny): z.ZodTypeAny {
    for (;;) {
        if (t instanceof z.ZodDefault) t = t._def.innerType;
        else if (t instanceof z.ZodOptional) t = t._def.innerType;
        else if (t instanceof z.ZodEffects) t = t._def.schema;
        else return t;
    }
}

/** The schema at a path through the config's objects (undefined past a record, a list or a value). */
function schemaAt(path: readonly (string | number)[]): z.ZodTypeAny | undefined {
    let t: z.ZodTypeAny = configObject;
    for (const seg of path) {
        const u = unwrapSchema(t);
        if (!(u instanceof z.ZodObject) || typeof seg !== "string" || !(seg in u.shape)) return undefined;
        t = u.shape[seg];
    }
    return unwrapSchema(t);
}

/** The keys of the config object at a path (undefined at a record, a list or a value). */
function knownKeysAt(path: readonly (string | number)[]): string[] | undefined {
    const t = schemaAt(path);
    return t instanceof z.ZodObject ? Object.keys(t.shape) : undefined;
}

/**
 * A path with every object key that is not known replaced by the closest
 * known one (where there is one). Below a record of Spark settings the rest
 * is one name: spark.settings.spark.executor.memory is
 * spark.settings["spark.executor.memory"].
 */
function correctedPath(path: readonly (string | number)[]): (string | number)[] {
    const out: (string | number)[] = [];
    for (let i = 0; i < path.length; i++) {
        const seg = path[i];
        const rest = path.slice(i);
        if (schemaAt(out) instanceof z.ZodRecord && rest.every((r) => typeof r === "string")) return [...out, rest.join(".")];
        const known = knownKeysAt(out);
        out.push(known && typeof seg === "string" && !known.includes(seg) ? (closestKey(seg, known) ?? seg) : seg);
    }
    return out;
}

/** Pulumi's --path syntax: a.b, a["b.c"], a[0]. Undefined when the text is not one. */
function parsePulumiPath(text: string): (string | number)[] | undefined {
    const segs: (string | number)[] = [];
    const re = /^(?:\.?([A-Za-z0-9_-]+)|\["((?:[^"\\]|\\.)*)"\]|\[([0-9]+)\])/;
    let rest = text;
    while (rest.length > 0) {
        const m = re.exec(rest);
        if (!m || (segs.length === 0 && rest.startsWith("."))) return undefined;
        segs.push(m[1] ?? (m[2] !== undefined ? m[2].replace(/\\(.)/g, "$1") : Number(m[3])));
        rest = rest.slice(m[0].length);
    }
    return segs;
}

function pulumiPath(path: readonly (string | number)[]): string {
    return path
        .map((seg, i) => (typeof seg === "number" ? `[${seg}]` : /^[A-Za-z_][A-Za-z0-9_]*$/.test(seg) ? `${i === 0 ? "" : "."}${seg}` : `[${JSON.stringify(seg)}]`))
        .join("");
}

function shellWord(s: string): string {
    return /^[A-Za-z0-9_.:\/@%+=,-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * The `pulumi config set` commands that put a value at a path, one per leaf
 * (at most four; else undefined). A secret value is never printed: the
 * command says VALUE and --secret.
 */
function setCommands(path: (string | number)[], value: unknown, secret: boolean): string[] | undefined {
    const leaves: [(string | number)[], unknown][] = [];
    const walk = (p: (string | number)[], v: unknown) => {
        if (Array.isArray(v)) v.forEach((x, i) => walk([...p, i], x));
        else if (v !== null && typeof v === "object") for (const [k, x] of Object.entries(v)) walk([...p, k], x);
        else leaves.push([p, v]);
    };
    walk(path, value);
    if (leaves.length > 4) return undefined;
    return leaves.map(([p, v]) => {
        const where = p.length === 1 && typeof p[0] === "string" ? p[0] : `--path ${shellWord(pulumiPath(p))}`;
        return `pulumi config set ${secret ? "--secret " : ""}${where} ${secret ? "VALUE" : shellWord(String(v))}`;
    });
}

function valueAt(raw: unknown, path: readonly (string | number)[]): unknown {
    return path.reduce<unknown>((v, seg) => (v !== null && typeof v === "object" ? (v as Record<string, unknown>)[seg] : undefined), raw);
}

/** The problem line for a key the schema does not know, with a guess and the fix where there is one. */
function unknownKeyProblem(raw: Record<string, unknown>, path: (string | number)[], isSecret: (topKey: string) => boolean): string {
    const top = String(path[0]);
    const value = valueAt(raw, path);
    const secret = isSecret(top);
    const move = (from: string, target: (string | number)[]) => {
        const sets = setCommands(target, value, secret || target[0] === "sparkSecrets");
        if (!sets) return `${from}, then set its fields under ${CONFIG_NAMESPACE}:${pulumiPath(target)} (pulumi config set --path ${pulumiPath(target)}.FIELD VALUE)`;
        return [from, ...sets].join(" && ");
    };
    // `pulumi config set nixspark:workers.count 3` without --path keeps a key
    // literally named "workers.count" at the top level.
    if (path.length === 1) {
        const dotted = parsePulumiPath(top);
        if (dotted && dotted.length > 1) {
            const target = correctedPath(dotted);
            if (knownKeysAt([])!.includes(String(target[0]))) {
                return `${keyOf(path)}: set without --path, so Pulumi keeps a key literally named \`${top}\` that nixspark does not read; set the field instead: ${move(`pulumi config rm ${shellWord(`${CONFIG_NAMESPACE}:${top}`)}`, target)}`;
            }
        }
    }
    const parent = path.slice(0, -1);
    const guess = closestKey(String(path[path.length - 1]), knownKeysAt(parent) ?? []);
    const rm = path.length === 1 ? `pulumi config rm ${shellWord(`${CONFIG_NAMESPACE}:${top}`)}` : `pulumi config rm --path ${shellWord(pulumiPath(path))}`;
    if (guess === undefined) return `${keyOf(path)}: unknown key (check the spelling; see Pulumi.yaml for every key); remove it: ${rm}`;
    const target = [...parent, guess];
    return `${keyOf(path)}: unknown key; did you mean \`${pulumiPath(target)}\`? ${move(rm, target)}`;
}

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
