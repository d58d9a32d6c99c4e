// nixspark:data, the shared data directory: its schema (a section of
// cluster/configSchema.ts).
import { z } from "zod";
import { bool, str } from "./configPrimitives";

// ---- nixspark:data: the shared data directory (issue 17) ----
// A host directory every node mounts at the same path with virtiofs
// (providers/libvirtXml.ts: the domain's <filesystem>; nix/modules/guest.nix:
// the mount by tag). Unset path: no shared directory.

/** The longest virtiofs tag: the virtio-fs device's config space holds 36 bytes (QEMU refuses a longer tag). */
export const VIRTIOFS_TAG_MAX = 36;
/**
 * Guest paths the data directory may not be mounted on or under: the store,
 * the system's own state and the Spark daemons' (nix/modules/spark.nix), and
 * the kernel's and systemd's file systems.
 */
export const DATA_RESERVED_TREES = ["/nix", "/etc", "/boot", "/proc", "/sys", "/dev", "/run", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/var/lib/spark", "/var/lib/nixspark", "/var/lib/nixos", "/var/log"];
/** ... and paths it may not be mounted on (it would hide what they hold), though below them is fine. */
export const DATA_RESERVED_PATHS = ["/", "/var", "/var/lib", "/home", "/root", "/tmp"];

/** What is wrong with a guest mount point, or undefined. */
export function dataMountPointProblem(p: string): string | undefined {
    if (p !== "/" && (!/^(\/[A-Za-z0-9._-]+)+$/.test(p)) || p.split("/").some((seg) => seg === "." || seg === "..")) {
        return `"${p}": expected an absolute path of letters, digits, '.', '_' and '-' without a trailing '/', such as /data`;
    }
    const tree = DATA_RESERVED_TREES.find((t) => p === t || p.startsWith(`${t}/`));
    if (tree !== undefined || DATA_RESERVED_PATHS.includes(p)) {
        return `${p} is ${tree ? `in ${tree}, ` : ""}a system path the nodes need for themselves; mount the data directory elsewhere: pulumi config set --path data.mountPoint /data`;
    }
    return undefined;
}

export const dataSchema = z
    .object({
        // The host directory shared with every node (absolute; the provider checks that it is a directory).
        path: str("an absolute directory on the host to share with every node")
            .refine((p) => p.startsWith("/"), "expected an absolute directory path on the host, such as /srv/spark-data")
            .transform((p) => (p.length > 1 ? p.replace(/\/+$/, "") : p))
            .optional(),
        mountPoint: str("the absolute path every node mounts the data directory on")
            .superRefine((p, ctx) => {
                const problem = dataMountPointProblem(p);
                if (problem) ctx.addIssue({ code: z.ZodIssueCode.custom, message: problem });
            })
            .default("/data"),
        // Read-only by default: jobs read input from it; read-write also puts the event logs there.
        readOnly: bool("whether the nodes mount the data directory read-only").default(true),
        tag: str("the virtiofs tag the nodes mount the data directory by")
            .refine((t) => Buffer.byteLength(t) <= VIRTIOFS_TAG_MAX, `expected a virtiofs tag of at most ${VIRTIOFS_TAG_MAX} bytes (the virtio-fs device holds no more)`)
            .refine((t) => /^[A-Za-z0-9._-]+$/.test(t), "expected a tag of letters, digits, '.', '_' and '-'")
            .default("nixspark-data"),
        // Default: libvirt finds virtiofsd through QEMU's vhost-user descriptors (Debian: /usr/lib/qemu/virtiofsd).
        virtiofsd: str("the absolute path of virtiofsd on the host")
            .refine((p) => p.startsWith("/"), "expected the absolute path of virtiofsd, such as /usr/lib/qemu/virtiofsd")
            .optional(),
    })
    .strict()
    .default({});
