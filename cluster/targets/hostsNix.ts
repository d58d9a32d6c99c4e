// Target "hosts": the stack settings the flake needs about the machines, and
// one `nix eval --json` of lib.stackEvaluations.<stack>.hosts that gives each
// machine's role system (its own configuration module + common + the role)
// and its system without the role (its module alone), before anything is
// registered (nix/flake.nix: hostSystem, releasedSystem).
import * as fs from "node:fs";
import * as path from "node:path";
import type { ClusterConfig } from "../config";
import { writeNixStackParams } from "../nixParams";
import type { NixStackParams } from "../nixParams";
import { absoluteFlakeRef, localFlakeDir, nixEvalJson, NixParamsError, stackEvaluationsAttribute, valueAt } from "../nixFlake";
import type { NixEvalOptions, PackageSummary } from "../nixFlake";
import { evalCacheDisabled, nixEvalCacheKey } from "../evalCache";
import type { HostEntry } from "./hostsConfig";

/** One machine as nix/lib/params.nix reads it (null: "auto"). */
export interface NixHost {
    name: string;
    address: string;
    role: "master" | "worker";
    sshUser: string;
    module: string;
    cores: number | null;
    memoryMiB: number | null;
}

/** The nixosConfigurations names of a machine: with the role, and without it. */
export function hostConfiguration(stack: string, name: string): { role: string; released: string } {
    return { role: `${stack}-host-${name}`, released: `${stack}-host-${name}-released` };
}

const ipInt = (ip: string) => ip.split(".").reduce((a, o) => a * 256 + Number(o), 0);
const intIp = (n: number) => [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join(".");

/**
 * The smallest IPv4 subnet that holds every machine's address (nixspark.
 * clusterCidr on the nodes; the firewall itself opens Spark's ports to the
 * block from the lowest to the highest address: nix/lib/params.nix).
 */
export function coveringSubnet(addresses: string[]): { cidr: string; prefix: number } {
    const ints = addresses.map(ipInt);
    let prefix = 30;
    const block = (p: number) => 2 ** (32 - p);
    while (prefix > 8 && new Set(ints.map((i) => Math.floor(i / block(prefix)))).size > 1) prefix--;
    if (new Set(ints.map((i) => Math.floor(i / block(prefix)))).size > 1) {
        throw new NixParamsError(`nixspark:hosts: the machines' addresses (${addresses.join(", ")}) span more than a /8; list machines of one network`);
    }
    return { cidr: `${intIp(Math.floor(ints[0] / block(prefix)) * block(prefix))}/${prefix}`, prefix };
}

/** The stack settings of a hosts stack: the libvirt ones with the master, the subnet and the machines taken from the list. Pure. */
export function hostsStackParams(cfg: ClusterConfig, base: NixStackParams): NixStackParams & { hosts: NixHost[] } {
    const hosts = cfg.hosts as HostEntry[];
    const master = hosts.find((h) => h.role === "master")!;
    return {
        ...base,
        ...coveringSubnet(hosts.map((h) => h.address)),
        masterIp: master.address,
        masterHostname: master.name,
        hosts: hosts.map((h) => ({
            name: h.name,
            address: h.address,
            role: h.role,
            sshUser: h.sshUser ?? cfg.ssh.user,
            module: h.module.replace(/^\.\//, ""),
            cores: h.cores === "auto" ? null : h.cores,
            memoryMiB: h.memoryMiB === "auto" ? null : h.memoryMiB,
        })),
    };
}

/** Every machine's module must be a file inside the deploy flake's directory (the pure evaluation sees nothing else). */
export function checkHostModules(cfg: ClusterConfig, flakeDir: string): string[] {
    return (cfg.hosts as HostEntry[]).flatMap((h, i) => {
        const file = path.join(flakeDir, h.module);
        const rel = path.relative(flakeDir, file);
        if (rel.startsWith("..") || path.isAbsolute(rel)) return [`nixspark:hosts.${i}.module: ${h.module} is outside ${flakeDir}; put the machine's configuration inside the flake directory, e.g. machines/${h.name}/configuration.nix`];
        if (!fs.existsSync(file)) {
            return [`nixspark:hosts.${i}.module: ${file} does not exist; copy ${h.name}'s configuration there (with its hardware-configuration.nix beside it), e.g. scp ${h.name}:/etc/nixos/*.nix ${path.dirname(file)}/`];
        }
        return [];
    });
}

export interface PreparedHostSystem {
    configuration: string;
    expectedSystem: string;
    packages?: PackageSummary;
    /** The machine without the role (its module alone). */
    released: { configuration: string; expectedSystem: string };
}

export interface PreparedHosts {
    /** The flake deployments switch from (the evaluated store copy when the flake gives it). */
    flake: string;
    machines: Record<string, PreparedHostSystem>;
    /** The store copy of the flake, to pin against a garbage collection. */
    source?: string;
    /** True when the answer came from the evaluation cache and no nix process ran. */
    cached?: boolean;
}

/** What lib.stackEvaluations.<stack>.hosts answered, checked. */
export function hostsFromAnswer(stack: string, answer: unknown, hosts: { name: string }[], evaluated: string): PreparedHosts {
    const storePath = (v: unknown, where: string) => {
        if (typeof v !== "string" || !v.startsWith("/nix/store/")) throw new NixParamsError(`nix eval ${evaluated}#${stackEvaluationsAttribute(stack)}.hosts.${where} gave ${JSON.stringify(v)}, not a store path`);
        return v;
    };
    const machines: Record<string, PreparedHostSystem> = {};
    for (const h of hosts) {
        const m = valueAt(answer, ["machines", h.name]) as Record<string, unknown> | undefined;
        const names = hostConfiguration(stack, h.name);
        machines[h.name] = {
            configuration: names.role,
            expectedSystem: storePath(m?.system, `machines.${h.name}.system`),
            packages: (m?.packages ?? undefined) as PackageSummary | undefined,
            released: { configuration: names.released, expectedSystem: storePath(m?.released, `machines.${h.name}.released`) },
        };
    }
    const source = valueAt(answer, ["source"]);
    const ok = typeof source === "string" && /^\/nix\/store\/[^/]+$/.test(source);
    return { flake: ok ? `path:${source}` : evaluated, machines, ...(ok ? { source } : {}) };
}

/**
 * Writes the stack's settings into the deploy flake (a local directory: the
 * machines' modules must be in it) and evaluates every machine's systems.
 */
export async function prepareHostsNix(stack: string, cfg: ClusterConfig, base: NixStackParams, opts: NixEvalOptions & { cwd?: string; cache?: boolean } = {}): Promise<PreparedHosts> {
    const cwd = opts.cwd ?? process.cwd();
    const dir = localFlakeDir(cfg.deploy.flake, cwd);
    if (dir === undefined) {
        throw new NixParamsError(`nixspark:deploy.flake: "${cfg.deploy.flake}" is not a local directory; with nixspark:target "hosts" the machines' modules and the stack's settings live in it, so use a path: reference such as path:./nix`);
    }
    const problems = checkHostModules(cfg, dir);
    if (problems.length > 0) throw new NixParamsError(problems.join("\n  "));
    writeNixStackParams(dir, hostsStackParams(cfg, base));
    const evaluated = absoluteFlakeRef(cfg.deploy.flake, cwd);
    const attrPath = `${stackEvaluationsAttribute(stack)}.hosts`;
    // The evaluation cache of every stack (cluster/evalCache.ts): its key hashes
    // the flake directory (the machines' modules and this stack's settings
    // inside it), the nix arguments and NIX_CONFIG; an unchanged preview
    // starts no nix process. Its own file: the libvirt cache holds other values.
    const useCache = opts.cache ?? !evalCacheDisabled(opts.env ?? process.env);
    const key = useCache ? nixEvalCacheKey(stack, [{ flake: evaluated, attrPath }], { ...opts, cwd }) : undefined;
    const file = path.resolve(cwd, ".nixspark", stack, "nix-eval-hosts.json");
    if (key !== undefined) {
        try {
            const entry = JSON.parse(fs.readFileSync(file, "utf8")) as { key?: string; answer?: unknown };
            const prepared = entry.key === key ? hostsFromAnswer(stack, entry.answer, cfg.hosts as HostEntry[], evaluated) : undefined;
            // The snapshot deployments switch from must still be in the store.
            if (prepared && (prepared.source === undefined || fs.existsSync(prepared.source))) return { ...prepared, cached: true };
        } catch {
            /* a miss: no file, another key, an answer that lacks a machine */
        }
    }
    const answer = await nixEvalJson(evaluated, attrPath, opts);
    const prepared = hostsFromAnswer(stack, answer, cfg.hosts as HostEntry[], evaluated);
    if (key !== undefined && nixEvalCacheKey(stack, [{ flake: evaluated, attrPath }], { ...opts, cwd }) === key) {
        try {
            fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
            const tmp = `${file}.${process.pid}.tmp`;
            fs.writeFileSync(tmp, JSON.stringify({ key, answer }) + "\n", { mode: 0o600 });
            fs.renameSync(tmp, file);
        } catch {
            /* only a speed-up */
        }
    }
    return { ...prepared, cached: false };
}
