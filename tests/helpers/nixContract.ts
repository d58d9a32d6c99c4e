// Contracts between the program and the NixOS roles, executed: "evaluate,
// extract, run". Nothing here can boot NixOS, so a script that a role's
// evaluation generates (a unit's ExecStart, what it reads and writes) is
// taken from the real evaluation of nix/ against the stand-in nixpkgs and
// run on this machine, in a scratch root, with the program's real output as
// its input (the file ClusterSecret writes, a console log the guest's own
// unit wrote).
//
//   const flake = stackFlake(nixStackParams(cfg, topo));      // nix/ + stacks/<stack>.json
//   const unit = evalUnit(flake, "<stack>-master", "nixspark-spark-conf");
//   const root = new ScratchRoot();                          // tmp dir, removed by root.remove()
//   root.realise(unit.drvs);                                 // the derivations its ExecStart needs
//   await root.runUnit(unit);                                // ExecStart, with the unit's environment
//
// Realising a stand-in derivation in the scratch root: a text file
// (writeTextFile: the `text` attribute) is written as Nix would; a runCommand
// with a build command of ours is run by sh with $out set, inside the scratch
// root so that its /nix/store references resolve; a package (the stand-in's
// packages are never built) becomes a directory whose bin/ and sbin/ are
// this machine's /usr/bin and /usr/sbin, or a directory the test names.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { run, RunResult } from "../../providers/run";
import { FIXTURES, nix, NIX_DIR, nixEnv } from "../fixtures/nix-env";

export const STUB_DIR = path.join(FIXTURES, "nix-stub-nixpkgs");
const NIX = ["nix", "--extra-experimental-features", "nix-command flakes"];
const STUB = ["--no-write-lock-file", "--override-input", "nixpkgs", `path:${STUB_DIR}`];
const SCRATCH_ROOT = path.join(__dirname, "scratch-root");

const made: string[] = [];
/** Removes every flake copy and scratch root this module made (call from afterAll). */
export function removeContractDirs(): void {
    for (const d of made.splice(0)) fs.rmSync(d, { recursive: true, force: true });
}

function tmpDir(prefix: string): string {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    made.push(d);
    return d;
}

/** A copy of nix/ whose stacks/<stack>.json is the settings file the program writes for these parameters. */
export function stackFlake(params: { stack: string }): string {
    const dir = tmpDir("nixspark-contract-flake-");
    fs.cpSync(NIX_DIR, dir, { recursive: true });
    fs.writeFileSync(path.join(dir, "stacks", `${params.stack}.json`), JSON.stringify(params, null, 2));
    return dir;
}

/**
 * `nix eval --json` of <flake>#<attr> against the stand-in, with `apply`
 * (a Nix function) applied. Strings that name unbuilt derivations must have
 * their context discarded in `apply` (Nix 2.8 cannot print them otherwise).
 */
export function evalAttr<T = unknown>(flakeDir: string, attr: string, apply?: string): T {
    nixEnv();
    return JSON.parse(nix([...NIX, "eval", "--no-eval-cache", "--json", ...STUB, `path:${flakeDir}#${attr}`, ...(apply ? ["--apply", apply] : [])])) as T;
}

export interface EvaluatedUnit {
    name: string;
    /** ExecStart as systemd gets it (the job script's store path, then its arguments). */
    execStart: string;
    /** The unit's Environment= (PATH from `path`, as nixpkgs makes it). */
    environment: Record<string, string>;
    serviceConfig: Record<string, unknown>;
    /** The derivations ExecStart and the environment refer to. */
    drvs: string[];
}

/** A systemd service of nixosConfigurations.<configuration>, as the evaluation made it. */
export function evalUnit(flakeDir: string, configuration: string, unit: string): EvaluatedUnit {
    return evalUnitAt(flakeDir, `nixosConfigurations.${configuration}.config.systemd.services.${unit}`, unit);
}

/**
 * A systemd service of a system built by the stand-in's lib.nixosSystem from
 * the given modules (Nix expressions; `flake` is bound to the flake copy's
 * path), e.g. a host that imports nixosModules.host.
 */
export function evalModuleUnit(flakeDir: string, modules: string[], unit: string): EvaluatedUnit {
    const expr = `let stub = builtins.getFlake "path:${STUB_DIR}"; flake = ${flakeDir}; in (stub.lib.nixosSystem { modules = [ ${modules.map((m) => `(${m})`).join(" ")} ]; }).config.systemd.services.${unit}`;
    return evalUnitAt(flakeDir, expr, unit, true);
}

/** The same for a unit at any attribute path of the flake (or, with isExpr, any expression). */
export function evalUnitAt(flakeDir: string, attr: string, name: string, isExpr = false): EvaluatedUnit {
    const apply = `u: let
        plain = s: builtins.unsafeDiscardStringContext s;
        ctx = s: builtins.attrNames (builtins.getContext s);
        env = builtins.mapAttrs (_: v: toString v) u.environment;
        exec = toString u.serviceConfig.ExecStart;
      in {
        execStart = plain exec;
        environment = builtins.mapAttrs (_: plain) env;
        serviceConfig = builtins.mapAttrs (_: v: if builtins.isString v then plain v else if builtins.isList v then map (x: if builtins.isString x then plain x else x) v else v) u.serviceConfig;
        drvs = ctx exec ++ builtins.concatLists (map ctx (builtins.attrValues env));
      }`;
    const u = isExpr
        ? (JSON.parse(nix([...NIX, "eval", "--impure", "--json", "--expr", attr, "--apply", apply])) as Omit<EvaluatedUnit, "name">)
        : evalAttr<Omit<EvaluatedUnit, "name">>(flakeDir, attr, apply);
    return { name, ...u, drvs: [...new Set(u.drvs)] };
}

/** $CREDENTIALS_DIRECTORY of a system service (systemd.exec(5), "Credentials"). */
function credentialsDirectory(unit: string): string {
    return `/run/credentials/${unit}.service`;
}

interface Derivation {
    outputs: { out: { path: string } };
    inputDrvs: Record<string, string[]>;
    env: Record<string, string>;
}

/** A directory standing in for a node's /nix/store, /run, /var/lib, /var/log and /etc/{passwd,group}. */
export class ScratchRoot {
    readonly dir = tmpDir("nixspark-scratch-root-");
    private realised = new Set<string>();

    /** Packages (by derivation name prefix, e.g. "spark-") realised as a given directory instead of the host's bin/. */
    constructor(private packages: Record<string, string> = {}) {
        for (const d of ["nix/store", "run", "var/lib", "var/log", "etc"]) fs.mkdirSync(path.join(this.dir, d), { recursive: true });
    }

    /** ROOT + an absolute path on the node. */
    at(p: string): string {
        return path.join(this.dir, p);
    }

    /** /etc/passwd and /etc/group of this machine plus the node's users and groups (name → members). */
    withAccounts(users: string[], groups: Record<string, string[]>): void {
        let passwd = fs.readFileSync("/etc/passwd", "utf8");
        let group = fs.readFileSync("/etc/group", "utf8");
        let id = 64000;
        for (const u of users) {
            if (new RegExp(`^${u}:`, "m").test(passwd)) continue;
            passwd += `${u}:x:${id++}:65534::/var/empty:/bin/false\n`;
            // A JVM run as this account (which exists only in the scratch root) makes
            // /tmp/hsperfdata_<user> on the real /tmp: it goes with the other contract dirs.
            const perfData = path.join("/tmp", `hsperfdata_${u}`);
            if (!fs.existsSync(perfData)) made.push(perfData);
        }
        for (const [g, members] of Object.entries(groups)) if (!new RegExp(`^${g}:`, "m").test(group)) group += `${g}:x:${id++}:${members.join(",")}\n`;
        fs.writeFileSync(this.at("/etc/passwd"), passwd);
        fs.writeFileSync(this.at("/etc/group"), group);
    }

    /** The numeric id the scratch root's /etc/group gives a group. */
    gid(name: string): number {
        const line = fs.readFileSync(this.at("/etc/group"), "utf8").split("\n").find((l) => l.startsWith(`${name}:`));
        if (!line) throw new Error(`no group ${name} in the scratch root`);
        return Number(line.split(":")[2]);
    }

    /** Realises the derivations (and everything they need) in the scratch root. */
    async realise(drvPaths: string[]): Promise<void> {
        nixEnv();
        const pending = drvPaths.filter((d) => !this.realised.has(d));
        if (pending.length === 0) return;
        const all = JSON.parse(nix([...NIX, "show-derivation", "-r", ...pending])) as Record<string, Derivation>;
        // Dependencies first.
        const order: string[] = [];
        const visit = (d: string, seen: Set<string>) => {
            if (seen.has(d) || this.realised.has(d)) return;
            seen.add(d);
            for (const input of Object.keys(all[d]?.inputDrvs ?? {})) visit(input, seen);
            order.push(d);
        };
        const seen = new Set<string>();
        for (const d of pending) visit(d, seen);
        for (const d of order) {
            await this.realiseOne(all[d]);
            this.realised.add(d);
        }
    }

    private async realiseOne(drv: Derivation): Promise<void> {
        const out = drv.outputs.out.path;
        const target = this.at(out);
        const env = drv.env;
        if (fs.existsSync(target)) return;
        if (env.text !== undefined && env.buildCommand?.includes('printf %s "$text"')) {
            // writeTextFile
            const file = target + (env.destination ?? "");
            fs.mkdirSync(path.dirname(file), { recursive: true });
            fs.writeFileSync(file, env.text, { mode: env.executable === "1" ? 0o755 : 0o644 });
            return;
        }
        if (env.buildCommand && env.buildCommand.trim() !== "exit 1") {
            // runCommand: our own build command, run as Nix runs it (sh, $out, the attributes as variables).
            const vars = Object.entries({ ...env, out, PATH: "/usr/bin:/bin" }).map(([k, v]) => `${k}=${v}`);
            await this.run(["env", "-i", ...vars, "sh", "-c", env.buildCommand], { timeoutMs: 60_000 });
            return;
        }
        // A package: never built by the stand-in. This machine's programs stand in for it.
        const name = path.basename(out).slice(33);
        const own = Object.keys(this.packages).find((p) => name.startsWith(p));
        if (own) {
            fs.mkdirSync(path.dirname(target), { recursive: true });
            fs.symlinkSync(this.packages[own], target);
            return;
        }
        fs.mkdirSync(target, { recursive: true });
        fs.symlinkSync("/usr/bin", path.join(target, "bin"));
        fs.symlinkSync("/usr/sbin", path.join(target, "sbin"));
    }

    /**
     * Runs a command inside the scratch root (tests/helpers/scratch-root in a
     * private mount namespace); with `netns`, inside that network namespace
     * too (`ip netns exec`, whose /sys shows the namespace's interfaces only).
     */
    run(argv: string[], opts: { env?: Record<string, string>; timeoutMs?: number; allowFailure?: boolean; input?: string; netns?: string } = {}): Promise<RunResult> {
        const inNetns = opts.netns ? ["ip", "netns", "exec", opts.netns] : [];
        return run([...inNetns, "unshare", "--mount", "--propagation", "private", "bash", SCRATCH_ROOT, this.dir, ...argv], {
            timeoutMs: opts.timeoutMs ?? 60_000,
            allowFailure: opts.allowFailure,
            input: opts.input,
            env: opts.env,
        });
    }

    /**
     * Realises a unit's derivations and runs its ExecStart with its
     * environment, as systemd would (as root); `netns`: in that network
     * namespace. A unit with credentials (ImportCredential=, LoadCredential=)
     * gets $CREDENTIALS_DIRECTORY as systemd sets it for a system service,
     * /run/credentials/<unit>.service: put them there with putCredential.
     */
    async runUnit(
        unit: EvaluatedUnit,
        opts: { extraEnv?: Record<string, string>; timeoutMs?: number; allowFailure?: boolean; stopAfterSeconds?: number; netns?: string } = {},
    ): Promise<RunResult> {
        await this.realise(unit.drvs);
        const argv = unit.execStart.trim().split(/\s+/);
        const sc = unit.serviceConfig;
        const credentials = sc.ImportCredential !== undefined || sc.LoadCredential !== undefined ? { CREDENTIALS_DIRECTORY: credentialsDirectory(unit.name) } : {};
        const env = { ...unit.environment, ...credentials, ...(opts.extraEnv ?? {}) };
        // A unit that keeps running (a loop) is stopped with SIGTERM after stopAfterSeconds, as `systemctl stop` would.
        const stop = opts.stopAfterSeconds ? ["timeout", String(opts.stopAfterSeconds)] : [];
        return this.run([...stop, "env", "-i", ...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...argv], {
            timeoutMs: opts.timeoutMs,
            allowFailure: opts.allowFailure || Boolean(opts.stopAfterSeconds),
            netns: opts.netns,
        });
    }

    /**
     * A credential as systemd hands it to a system service: the file
     * /run/credentials/<unit>.service/<name> holding exactly `text` (for a
     * system credential from an SMBIOS OEM string, the string after
     * `io.systemd.credential:<name>=`), root-only. Undefined removes it.
     */
    putCredential(unit: string, name: string, text: string | undefined): void {
        const dir = this.at(credentialsDirectory(unit));
        fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
        const file = path.join(dir, name);
        if (text === undefined) fs.rmSync(file, { force: true });
        else fs.writeFileSync(file, text, { mode: 0o400 });
    }

    remove(): void {
        fs.rmSync(this.dir, { recursive: true, force: true });
    }
}

// --- Additions for daemons a role runs (the history server) and the
// directories its tmpfiles rules make. ---

/**
 * An attribute of `config` of a system built by the stand-in's
 * lib.nixosSystem from the given modules (as evalModuleUnit), as JSON.
 * Strings that name derivations lose their context (only their paths matter).
 */
export function evalModuleConfig<T = unknown>(flakeDir: string, modules: string[], attr: string): T {
    nixEnv();
    const expr = `let stub = builtins.getFlake "path:${STUB_DIR}"; flake = ${flakeDir}; in (stub.lib.nixosSystem { modules = [ ${modules.map((m) => `(${m})`).join(" ")} ]; }).config.${attr}`;
    return JSON.parse(nix([...NIX, "eval", "--impure", "--json", "--expr", `builtins.fromJSON (builtins.unsafeDiscardStringContext (builtins.toJSON (${expr})))`])) as T;
}

/**
 * The modules flake.nix's nodeSystem gives a stack's role (common.nix, the
 * role, the stack's parameters from stacks/<stack>.json; not guest.nix, the
 * VM's hardware), plus `extra` (Nix module expressions), for evalModuleUnit
 * and evalModuleConfig.
 */
export function roleModules(stack: string, role: "master" | "worker", extra: string[] = []): string[] {
    return [
        `flake + "/modules/common.nix"`,
        `flake + "/modules/${role}.nix"`,
        `import (flake + "/lib/params-module.nix") (import (flake + "/lib/params.nix") (builtins.fromJSON (builtins.readFile (flake + "/stacks/${stack}.json"))))`,
        ...extra,
    ];
}

/** A daemon started from a unit's ExecStart (ScratchRoot.startUnit). */
export interface RunningUnit {
    /** PID of the first process; every process of the unit is in its process group. */
    pid: number;
    /** What the unit printed (stdout and stderr: systemd's journal). */
    log(): string;
    /** SIGTERM to the process group (as `systemctl stop`), SIGKILL after 10 s; resolves when no process of it is left. */
    stop(): Promise<void>;
}

const startedGroups = new Set<number>();
process.once("exit", () => {
    for (const pgid of startedGroups) {
        try {
            process.kill(-pgid, "SIGKILL");
        } catch {
            /* gone */
        }
    }
});

function groupAlive(pgid: number): boolean {
    for (const entry of fs.readdirSync("/proc")) {
        if (!/^\d+$/.test(entry)) continue;
        try {
            const stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8");
            const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
            if (Number(rest[2]) === pgid && rest[0] !== "Z" && rest[0] !== "X") return true;
        } catch {
            /* exited meanwhile */
        }
    }
    return false;
}

export interface ScratchRoot {
    /** The numeric id the scratch root's /etc/passwd gives a user. */
    uid(name: string): number;
    /**
     * Applies systemd-tmpfiles `d` rules (path, mode, user, group) in the
     * scratch root as systemd-tmpfiles --create does: creates the directory
     * (and missing parents, 0755 root) and sets its mode and owner; `-` is
     * 0755 and root. Other rule types are refused.
     */
    applyTmpfiles(rules: string[]): void;
    /**
     * Starts a long-running unit's ExecStart in the scratch root as systemd
     * would: as serviceConfig.User and Group, with Group and the user's
     * groups from the scratch root's /etc/group as supplementary groups
     * (initgroups(User, Group)), in
     * WorkingDirectory, with the unit's environment only (plus extraEnv).
     * The process runs in a process group of its own; stop() ends it.
     */
    startUnit(unit: EvaluatedUnit, opts?: { extraEnv?: Record<string, string>; logFile?: string }): Promise<RunningUnit>;
    /** Makes a group the user's primary group in the scratch root's /etc/passwd (withAccounts gives nogroup). */
    setPrimaryGroup(user: string, group: string): void;
    /** Runs argv in the scratch root as a user logs in (setpriv: the primary group and the user's groups), with exactly this environment. */
    runAs(user: string, argv: string[], env: Record<string, string>, opts?: { timeoutMs?: number; allowFailure?: boolean }): Promise<RunResult>;
}

ScratchRoot.prototype.uid = function (this: ScratchRoot, name: string): number {
    const line = fs.readFileSync(this.at("/etc/passwd"), "utf8").split("\n").find((l) => l.startsWith(`${name}:`));
    if (!line) throw new Error(`no user ${name} in the scratch root`);
    return Number(line.split(":")[2]);
};

ScratchRoot.prototype.applyTmpfiles = function (this: ScratchRoot, rules: string[]): void {
    for (const rule of rules) {
        const fields = rule.trim().match(/'[^']*'|"[^"]*"|\S+/g) ?? [];
        const [type, rawPath, mode, user, group] = fields.map((f) => f.replace(/^['"]|['"]$/g, ""));
        if (type !== "d") throw new Error(`applyTmpfiles: only 'd' rules are modelled, not ${JSON.stringify(rule)}`);
        const dir = this.at(rawPath);
        fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
        fs.chownSync(dir, !user || user === "-" ? 0 : this.uid(user), !group || group === "-" ? 0 : this.gid(group));
        // After chown, which clears setgid/setuid bits.
        fs.chmodSync(dir, !mode || mode === "-" ? 0o755 : parseInt(mode, 8));
    }
};

ScratchRoot.prototype.setPrimaryGroup = function (this: ScratchRoot, user: string, group: string): void {
    const gid = this.gid(group);
    const file = this.at("/etc/passwd");
    const lines = fs.readFileSync(file, "utf8").split("\n");
    const i = lines.findIndex((l) => l.startsWith(`${user}:`));
    if (i < 0) throw new Error(`no user ${user} in the scratch root`);
    const f = lines[i].split(":");
    f[3] = String(gid);
    lines[i] = f.join(":");
    fs.writeFileSync(file, lines.join("\n"));
};

/**
 * setpriv arguments that give a process what initgroups(user, group) gives
 * it (what systemd does for User= and Group=, and `su`/login for the user's
 * primary group): that uid and gid, and as supplementary groups the group
 * plus every group of the scratch root's /etc/group that lists the user.
 */
function setprivAs(root: ScratchRoot, user: string, group: string): string[] {
    const gids = new Set<number>([root.gid(group)]);
    for (const line of fs.readFileSync(root.at("/etc/group"), "utf8").split("\n")) {
        const f = line.split(":");
        if (f.length >= 4 && f[3].split(",").includes(user)) gids.add(Number(f[2]));
    }
    return ["setpriv", "--reuid", String(root.uid(user)), "--regid", String(root.gid(group)), "--groups", [...gids].join(",")];
}

ScratchRoot.prototype.runAs = function (this: ScratchRoot, user: string, argv: string[], env: Record<string, string>, opts: { timeoutMs?: number; allowFailure?: boolean } = {}) {
    const line = fs.readFileSync(this.at("/etc/passwd"), "utf8").split("\n").find((l) => l.startsWith(`${user}:`));
    const primary = fs.readFileSync(this.at("/etc/group"), "utf8").split("\n").find((l) => l.split(":")[2] === line?.split(":")[3])?.split(":")[0];
    if (!primary) throw new Error(`${user} has no primary group in the scratch root`);
    return this.run([...setprivAs(this, user, primary), "env", "-i", ...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...argv], opts);
};

ScratchRoot.prototype.startUnit = async function (this: ScratchRoot, unit: EvaluatedUnit, opts: { extraEnv?: Record<string, string>; logFile?: string } = {}): Promise<RunningUnit> {
    const { spawn } = require("node:child_process") as typeof import("node:child_process");
    await this.realise(unit.drvs);
    const sc = unit.serviceConfig as Record<string, unknown>;
    const user = String(sc.User ?? "root");
    const group = String(sc.Group ?? (user === "root" ? "root" : "nogroup"));
    const env = { ...unit.environment, ...(opts.extraEnv ?? {}) };
    const chdir = sc.WorkingDirectory ? ["-C", String(sc.WorkingDirectory)] : [];
    const argv = [
        "unshare", "--mount", "--propagation", "private", "bash", SCRATCH_ROOT, this.dir,
        ...setprivAs(this, user, group),
        "env", "-i", ...chdir, ...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...unit.execStart.trim().split(/\s+/),
    ];
    const logFile = opts.logFile ?? path.join(this.dir, `${unit.name}.journal`);
    const fd = fs.openSync(logFile, "a");
    const child = spawn(argv[0], argv.slice(1), { detached: true, stdio: ["ignore", fd, fd] });
    fs.closeSync(fd);
    if (!child.pid) throw new Error(`could not start ${unit.name}`);
    const pid = child.pid;
    startedGroups.add(pid);
    return {
        pid,
        log: () => (fs.existsSync(logFile) ? fs.readFileSync(logFile, "utf8") : ""),
        async stop() {
            for (const [signal, waitMs] of [["SIGTERM", 10_000], ["SIGKILL", 10_000]] as const) {
                if (!groupAlive(pid)) break;
                try {
                    process.kill(-pid, signal);
                } catch {
                    break; // the group is gone
                }
                const deadline = Date.now() + waitMs;
                while (groupAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
            }
            if (groupAlive(pid)) throw new Error(`${unit.name} (process group ${pid}) survived SIGKILL`);
            startedGroups.delete(pid);
        },
    };
};
