// The rules of nixspark:target and nixspark:hosts across the config (pure; run
// by configSchema.ts's crossChecks, one problem line per key with its fix).
//
// Under target "hosts" the libvirt keys mean nothing (no VM, network, pool or
// image is made), and one set to anything but its default is refused rather
// than ignored: a user who sets workers.count 5 on a list of three machines
// should learn that the list decides, before anything runs. Under "libvirt" a
// non-empty nixspark:hosts is refused the same way.

/** The keys that only the libvirt target reads. */
export const LIBVIRT_ONLY_KEYS = ["libvirtUri", "domainType", "autostart", "consoleLogDir", "network", "storage", "image", "master", "workers", "data", "libvirt"] as const;

export interface HostEntry {
    name: string;
    address: string;
    role: "master" | "worker";
    sshUser?: string;
    sshPort?: number;
    cores: number | "auto";
    memoryMiB: number | "auto";
    module: string;
    hostKey: string;
}

function same(a: unknown, b: unknown): boolean {
    return JSON.stringify(sorted(a)) === JSON.stringify(sorted(b));
}

function sorted(v: unknown): unknown {
    if (Array.isArray(v)) return v.map(sorted);
    if (v !== null && typeof v === "object") return Object.fromEntries(Object.keys(v as object).sort().map((k) => [k, sorted((v as Record<string, unknown>)[k])]));
    return v;
}

/**
 * Problems of the target choice: `config` is the parsed config, `defaults`
 * the schema's defaults of each libvirt-only key (to tell a set key from an
 * unset one). Each problem is [path, message].
 */
export function targetProblems(
    config: { target: "libvirt" | "hosts"; hosts: HostEntry[]; ssh: { hostKeys?: string } } & Record<string, unknown>,
    defaults: Record<string, unknown>,
): [(string | number)[], string][] {
    const out: [(string | number)[], string][] = [];
    if (config.target === "libvirt") {
        if (config.hosts.length > 0) {
            out.push([["hosts"], `lists ${config.hosts.length} machine(s), but nixspark:target is "libvirt" (VMs), which reads no machine list. Deploy onto the machines: pulumi config set nixspark:target hosts; or remove the list: pulumi config rm nixspark:hosts`]);
        }
        return out;
    }
    for (const key of LIBVIRT_ONLY_KEYS) {
        if (!same(config[key], defaults[key])) {
            out.push([[key], `set, but nixspark:target is "hosts": no VM, network, pool or image is made, and the machines in nixspark:hosts decide the cluster's size. Remove it: pulumi config rm nixspark:${key}`]);
        }
    }
    if (config.ssh.hostKeys !== undefined) {
        out.push([["ssh", "hostKeys"], `set, but under nixspark:target "hosts" each machine's host key is its own nixspark:hosts[i].hostKey (a fingerprint or "first-use"). Remove it: pulumi config rm --path ssh.hostKeys`]);
    }
    const hosts = config.hosts;
    if (hosts.length === 0) {
        out.push([["hosts"], `empty, but nixspark:target is "hosts": list the machines, e.g. pulumi config set --path 'hosts[0].name' lab1 (name, address, role, module, hostKey; see docs/targets.md)`]);
        return out;
    }
    const masters = hosts.filter((h) => h.role === "master");
    if (masters.length !== 1) {
        out.push([["hosts"], masters.length === 0
            ? `no machine has role "master": exactly one must (pulumi config set --path 'hosts[0].role' master)`
            : `${masters.length} machines have role "master" (${masters.map((m) => m.name).join(", ")}): exactly one must; make the others workers (pulumi config set --path 'hosts[${hosts.indexOf(masters[1])}].role' worker)`]);
    }
    const seen = (key: "name" | "address") => {
        const first = new Map<string, number>();
        hosts.forEach((h, i) => {
            const j = first.get(h[key]);
            if (j === undefined) first.set(h[key], i);
            else out.push([["hosts", i, key], `"${h[key]}" is also the ${key} of nixspark:hosts[${j}] (${hosts[j].name}); every machine needs its own ${key}`]);
        });
    };
    seen("name");
    seen("address");
    hosts.forEach((h, i) => {
        if (h.role === "master" && (h.cores !== "auto" || h.memoryMiB !== "auto")) {
            out.push([["hosts", i, h.cores !== "auto" ? "cores" : "memoryMiB"], `only a worker offers Spark cores and memory; remove it from the master ${h.name}: pulumi config rm --path 'hosts[${i}].${h.cores !== "auto" ? "cores" : "memoryMiB"}'`]);
        }
    });
    return out;
}
