// nixspark:hosts, one entry per existing NixOS machine (target "hosts",
// docs/targets.md): its schema (a section of cluster/configSchema.ts; the
// rules across keys are in hostsConfig.ts).
import { z } from "zod";
import { dnsLabel, int, str } from "../configPrimitives";

const HOST_KEY =
    'expected the machine\'s SSH host key fingerprint (SHA256:..., from ssh-keygen -l -E sha256 -f /etc/ssh/ssh_host_ed25519_key.pub on the machine) or "first-use"';
/** A whole number in a range, or "auto". */
const autoOr = (min: number, max: number, what: string) =>
    z.union([z.literal("auto"), z.number().int().min(min).max(max)], { errorMap: () => ({ message: `expected ${what}: a whole number from ${min} to ${max}, or "auto"` }) });
/** One machine of nixspark:hosts (target "hosts", docs/targets.md). */
export const hostEntry = z
    .object({
        name: dnsLabel("the machine's name in the stack"),
        address: str("the machine's IPv4 address").regex(/^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/, "expected an IPv4 address such as 192.168.1.20 (Spark binds to it)"),
        role: z.enum(["master", "worker"], { errorMap: () => ({ message: 'expected "master" or "worker"' }) }),
        // Default: nixspark:ssh.user / nixspark:ssh.port.
        sshUser: dnsLabel("a Unix user name for deployments").optional(),
        sshPort: int(1, 65535, "a TCP port").optional(),
        // What a worker offers Spark; "auto": Spark's own default (every core; the memory less 1 GiB).
        cores: autoOr(1, 1024, "the cores the worker offers Spark").default("auto"),
        memoryMiB: autoOr(256, 64 * 1024 * 1024, "the memory in MiB the worker offers Spark").default("auto"),
        // The machine's own NixOS configuration module (it imports its
        // hardware-configuration.nix): a path inside the deploy flake's
        // directory, relative to it (cluster/targets/hosts.ts checks it exists).
        module: str("the machine's NixOS configuration module: a path inside the deploy flake directory, such as machines/lab1/configuration.nix").refine(
            (p) => !p.startsWith("/") && !p.split("/").includes(".."),
            "expected a path relative to the deploy flake directory (nixspark:deploy.flake, default nix/), without '..', such as machines/lab1/configuration.nix",
        ),
        // The SSH host key's fingerprint as `ssh-keygen -l -E sha256 -f /etc/ssh/ssh_host_ed25519_key.pub` prints it, or "first-use".
        hostKey: z
            .string({ invalid_type_error: HOST_KEY, required_error: `required: ${HOST_KEY}` })
            .refine((k) => k === "first-use" || /^SHA256:[A-Za-z0-9+/]{43}$/.test(k), HOST_KEY),
    })
    .strict();
