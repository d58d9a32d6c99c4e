// The measurements behind docs/benchmarks.md; run through scripts/bench,
// which installs what this needs. Everything runs on one libvirt bench
// (tests/helpers/libvirtBench.ts) with the tiny test guest, in one process, so
// that ratios compare runs made under the same conditions.
//
// Each measurement starts from an empty bench (the previous stack destroyed)
// so that idle guests of one measurement do not slow the next: TCG guests
// cost CPU even when idle, and this host has 2 cores.
import { execFileSync } from "node:child_process";
import { randomBytes, randomInt } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseConfig } from "../../cluster/config";
import { evalDrvPath, evalSystemPath, imageAttribute, prepareNix } from "../../cluster/nixParams";
import { buildTopology } from "../../cluster/topology";
import { run } from "../../providers/run";
import { Bench, natNetworkXml, startBench, testGuestDomainXml, waitFor } from "../../tests/helpers/libvirtBench";
import { installPulumi, PulumiCli, REPO, SDK_BIN, TOOLS_BIN } from "../../tests/helpers/pulumiCli";
import { createE2eProject, E2E_REBUILD, E2eProject, randomCidr, tinyStackConfig } from "../../tests/fixtures/e2e-project";
import { rolloutOnly } from "./rollout";
import { precompileProject, tracedPreview, TraceResult, traceReport } from "./trace";

interface Options {
    sizes: number[];
    big: number;
    repeat: number;
    updateSeconds: number;
    out?: string;
    /**
     * Run one part alone: "preview" = the program's preview cost, no libvirt
     * (previewOnly); "rollout" = a rolling update of 1+N fake nodes with
     * several maxParallel, with and without Spark's verification (rollout.ts).
     */
    only?: "preview" | "rollout";
    /** With --only rollout: the maxParallel values compared (the last is the ratios' reference) and the workers. */
    maxParallel: number[];
    rolloutWorkers: number;
    /** Workers of the preview-only stacks (1+N each; the first is the ratios' reference). */
    previewWorkers: number[];
    /** A git revision whose program (index.ts, cluster/, providers/) is measured too, as "before". */
    beforeRev?: string;
    /** With --only preview: then one traced preview of each program (trace.ts: phases and CPU profiles). */
    trace?: boolean;
    /**
     * With --only preview: also the first stack with the Nix evaluation cache
     * off in the rounds, and the program's Nix step alone (in-process).
     */
    nix?: boolean;
}

function parseArgs(argv: string[]): Options {
    const o: Options = { sizes: [1, 2, 4, 8], big: 32, repeat: 3, updateSeconds: 2, previewWorkers: [16, 64], maxParallel: [1, 4, 8], rolloutWorkers: 8 };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        const next = () => {
            const v = argv[++i];
            if (v === undefined) throw new Error(`${a} needs a value`);
            return v;
        };
        if (a === "--sizes") o.sizes = next().split(",").map(Number);
        else if (a === "--big") o.big = Number(next());
        else if (a === "--repeat") o.repeat = Number(next());
        else if (a === "--update-seconds") o.updateSeconds = Number(next());
        else if (a === "--out") o.out = next();
        else if (a === "--only") {
            const part = next();
            if (part !== "preview" && part !== "rollout") throw new Error(`--only ${part}: the parts that run alone are "preview" and "rollout"`);
            o.only = part;
        } else if (a === "--preview-workers") o.previewWorkers = next().split(",").map(Number);
        else if (a === "--max-parallel") o.maxParallel = next().split(",").map(Number);
        else if (a === "--rollout-workers") o.rolloutWorkers = Number(next());
        else if (a === "--before-rev") o.beforeRev = next();
        else if (a === "--trace") o.trace = true;
        else if (a === "--nix") o.nix = true;
        else throw new Error(`unknown option ${a} (see scripts/bench)`);
    }
    if (o.sizes.some((n) => !Number.isInteger(n) || n < 0) || !(o.repeat >= 1)) throw new Error("bad --sizes or --repeat");
    if (o.previewWorkers.length === 0 || o.previewWorkers.some((n) => !Number.isInteger(n) || n < 0)) throw new Error("bad --preview-workers (e.g. 16,64)");
    if (o.maxParallel.length === 0 || o.maxParallel.some((n) => !Number.isInteger(n) || n < 1)) throw new Error("bad --max-parallel (e.g. 1,4,8)");
    if (!Number.isInteger(o.rolloutWorkers) || o.rolloutWorkers < 1 || o.rolloutWorkers > 60) throw new Error("bad --rollout-workers (1 to 60: one loopback address 127.0.0.N each)");
    return o;
}

const log = (m: string) => process.stderr.write(`bench: ${m}\n`);
const sec = (ms: number) => Math.round(ms / 100) / 10;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];

/**
 * Kernel command line of every guest, both methods. no_timer_check: with many
 * TCG guests booting at once on 2 cores the kernel's IO-APIC timer check can
 * fail and panic the guest ("IO-APIC + timer doesn't work!"), seen at 1+32.
 */
const CMDLINE = "console=ttyS0 no_timer_check";

let bench: Bench;
let project: E2eProject;

function cliFor(stack: string, env: Record<string, string> = {}): PulumiCli {
    return new PulumiCli({
        cwd: project.dir,
        stack,
        backendDir: project.backendDir,
        netns: bench.netns,
        env: { NIX_CONFIG: project.nixConfig, ...env },
        timeoutMs: 30 * 60_000,
    });
}

async function waitForHttp(ip: string, hostname: string): Promise<void> {
    await waitFor(
        `${hostname} at ${ip}`,
        async () => {
            const r = await bench.exec(["wget", "-qO-", "-T", "3", `http://${ip}/`], { allowFailure: true, timeoutMs: 10_000 });
            return r.code === 0 && r.stdout.trim() === hostname ? true : undefined;
        },
        { timeoutMs: 300_000, intervalMs: 1000 },
    );
}

async function previewMedian(cli: PulumiCli, repeat: number): Promise<{ ms: number; all: number[]; same: number; changed: number }> {
    const all: number[] = [];
    let same = 0;
    let changed = 0;
    for (let i = 0; i < repeat; i++) {
        const p = await cli.preview();
        all.push(p.ms);
        same = p.summary.same ?? 0;
        changed = Object.entries(p.summary).filter(([k]) => k !== "same").reduce((a, [, v]) => a + v, 0);
    }
    return { ms: median(all), all, same, changed };
}

function removeStackParams(stack: string): void {
    fs.rmSync(path.join(project.flakeDir, "stacks", `${stack}.json`), { force: true });
}

// ------------------------------------------------------------- pulumi runs

interface PulumiRun {
    n: number;
    createMs: number;
    resourcesCreated: number;
    unchangedPreviewMs: number;
    update: { ms: number; deploymentsUpdated: number; otherChanges: number };
    scale?: { ms: number; previewMs: number; touched: string[] };
    disk: { overlayBytes: number[]; baseBytes: number };
    destroyMs: number;
}

async function pulumiRun(n: number, o: Options, scale: boolean): Promise<PulumiRun> {
    const stack = `bp${n}x${randomInt(100, 1000)}`;
    const cidr = randomCidr();
    const net = cidr.replace(/\.0\/24$/, "");
    const cli = cliFor(stack);
    await cli.stackInit();
    cli.writeStackConfig(tinyStackConfig(bench, project, { workers: n, cidr, cmdline: CMDLINE }));
    try {
        log(`pulumi up: create 1+${n} (${stack})`);
        const up = await cli.up();
        // Sanity, not timed: every node is up at its address (up already waited for SSH).
        for (let i = 0; i <= n; i++) await waitForHttp(`${net}.${10 + i}`, `${stack}-${i === 0 ? "master" : `worker-${i}`}`);
        const unchanged = await previewMedian(cli, o.repeat);
        if (unchanged.changed !== 0) throw new Error(`unchanged preview of ${stack} shows changes`);

        const poolDir = path.join(bench.dir, "images", stack);
        const overlayBytes = fs.readdirSync(poolDir).map((f) => actualSize(path.join(poolDir, f)));

        log(`Spark setting on 1+${n} live nodes, rebuild stand-in ${o.updateSeconds} s`);
        await cli.configSet('spark.settings["spark.executor.memory"]', "512m");
        const p = await cli.preview();
        const deploymentsUpdated = p.steps.filter((s) => s.op === "update" && s.kind === "NixosDeployment").length;
        const otherChanges = p.steps.filter((s) => s.op !== "same" && s.kind !== "NixosDeployment").length;
        const slow = cliFor(stack, { NIXSPARK_E2E_REBUILD_SECONDS: String(o.updateSeconds) });
        const upd = await slow.up();

        let scaleResult: PulumiRun["scale"];
        if (scale) {
            log(`scale 1+${n} -> 1+${n + 1}`);
            await cli.configSet("workers.count", String(n + 1));
            const sp = await cli.preview();
            const touched = sp.steps.filter((s) => s.op !== "same").map((s) => `${s.op} ${s.kind}`).sort();
            const su = await cli.up();
            scaleResult = { ms: su.ms, previewMs: sp.ms, touched };
        }

        log(`destroy ${stack}`);
        const d = await cli.destroy();
        return {
            n,
            createMs: up.ms,
            resourcesCreated: up.summary.create ?? 0,
            unchangedPreviewMs: unchanged.ms,
            update: { ms: upd.ms, deploymentsUpdated, otherChanges },
            scale: scaleResult,
            disk: { overlayBytes, baseBytes: actualSize(bench.guest.baseImage) },
            destroyMs: d.ms,
        };
    } catch (e) {
        await cli.destroy({ allowFailure: true }).catch(() => undefined);
        throw e;
    } finally {
        await cli.stackRm();
        removeStackParams(stack);
    }
}

/** Bytes a qcow2 file takes on disk (qemu-img's actual-size). */
function actualSize(file: string): number {
    const info = JSON.parse(execFileSync("qemu-img", ["info", "--force-share", "--output=json", file], { encoding: "utf8" }));
    return Number(info["actual-size"]);
}

// ------------------------------------------------- the proof of concept's way

/**
 * 1+N guests the proof of concept's way, made non-interactive: for each node
 * in turn, a qcow2 overlay on the same image and `virt-install --import`, then
 * wait for its DHCP lease before the next. The network (with the same kind of
 * reservations) is made beforehand and not timed: the PoC had it from its host
 * flake.
 */
async function virtInstallLoop(n: number): Promise<{ n: number; ms: number; perNodeMs: number[] }> {
    const id = randomInt(100, 1000);
    const netName = `vi${n}x${id}`;
    const octet = randomInt(0, 256);
    const gateway = `10.199.${octet}.1`;
    const nodes = Array.from({ length: n + 1 }, (_, i) => ({
        name: `vi${n}x${id}-${i === 0 ? "master" : `worker-${i}`}`,
        mac: `52:54:00:${randomBytes(3).toString("hex").match(/../g)!.join(":")}`,
        ip: `10.199.${octet}.${10 + i}`,
    }));
    const dir = path.join(bench.dir, "virt-install", netName);
    fs.mkdirSync(dir, { recursive: true });
    const xml = path.join(dir, "net.xml");
    fs.writeFileSync(xml, natNetworkXml({ name: netName, gateway, hosts: nodes }));
    await bench.virsh(["net-define", xml]);
    await bench.virsh(["net-start", netName]);
    const perNodeMs: number[] = [];
    try {
        const t0 = Date.now();
        for (const node of nodes) {
            const t = Date.now();
            const disk = path.join(dir, `${node.name}.qcow2`);
            await run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", bench.guest.baseImage, "-F", "qcow2", disk], { timeoutMs: 60_000 });
            await run(
                [
                    "virt-install", "--connect", bench.uri, "--name", node.name,
                    "--virt-type", "qemu", "--machine", "pc", "--memory", "256", "--vcpus", "1",
                    "--import", "--disk", `path=${disk},format=qcow2,bus=virtio`,
                    "--boot", `kernel=${bench.guest.kernel},initrd=${bench.guest.initrd},kernel_args="${CMDLINE}"`,
                    "--network", `network=${netName},mac=${node.mac},model=virtio`,
                    "--osinfo", "detect=on,require=off", "--graphics", "none", "--noautoconsole",
                ],
                { timeoutMs: 300_000 },
            );
            await waitFor(
                `DHCP lease of ${node.name}`,
                async () => {
                    const r = await bench.virsh(["net-dhcp-leases", netName, "--mac", node.mac], { allowFailure: true });
                    return r.stdout.includes(node.ip) ? true : undefined;
                },
                { timeoutMs: 300_000, intervalMs: 250 },
            );
            perNodeMs.push(Date.now() - t);
        }
        return { n, ms: Date.now() - t0, perNodeMs };
    } finally {
        for (const node of nodes) {
            await bench.virsh(["destroy", node.name], { allowFailure: true });
            await bench.virsh(["undefine", "--nvram", node.name], { allowFailure: true });
        }
        await bench.virsh(["net-destroy", netName], { allowFailure: true });
        await bench.virsh(["net-undefine", netName], { allowFailure: true });
        fs.rmSync(dir, { recursive: true, force: true });
    }
}

// ------------------------------------------------------ the host's own limit

/**
 * The floor under any tool on this host: 1+N tiny guests defined with plain
 * virsh (same kernel, initramfs, command line, 256 MiB, 1 vCPU), all started
 * at once; time from the first `virsh start` until every guest holds its DHCP
 * lease. Under TCG a boot is CPU work, so on 2 cores parallel boots share
 * the CPU and this grows with N whatever drives libvirt.
 */
async function parallelBootFloor(n: number): Promise<{ n: number; ms: number }> {
    const id = randomInt(100, 1000);
    const netName = `pb${n}x${id}`;
    const octet = randomInt(0, 256);
    const nodes = Array.from({ length: n + 1 }, (_, i) => ({
        name: `pb${n}x${id}-${i}`,
        mac: `52:54:00:${randomBytes(3).toString("hex").match(/../g)!.join(":")}`,
        ip: `10.198.${octet}.${10 + i}`,
    }));
    const dir = path.join(bench.dir, "boot-floor", netName);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, "net.xml"), natNetworkXml({ name: netName, gateway: `10.198.${octet}.1`, hosts: nodes }));
    await bench.virsh(["net-define", path.join(dir, "net.xml")]);
    await bench.virsh(["net-start", netName]);
    try {
        for (const node of nodes) {
            const disk = path.join(dir, `${node.name}.qcow2`);
            await run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", bench.guest.baseImage, "-F", "qcow2", disk], { timeoutMs: 60_000 });
            const xml = testGuestDomainXml({ name: node.name, guest: bench.guest, network: netName, mac: node.mac, disk, serialLog: path.join(dir, `${node.name}.log`) }).replace(
                "<cmdline>console=ttyS0</cmdline>",
                `<cmdline>${CMDLINE}</cmdline>`,
            );
            fs.writeFileSync(path.join(dir, `${node.name}.xml`), xml);
            await bench.virsh(["define", path.join(dir, `${node.name}.xml`)]);
        }
        const t0 = Date.now();
        await Promise.all(nodes.map((node) => bench.virsh(["start", node.name])));
        await waitFor(
            `DHCP leases of ${nodes.length} guests`,
            async () => {
                const r = await bench.virsh(["net-dhcp-leases", netName], { allowFailure: true });
                return nodes.every((node) => r.stdout.includes(`${node.ip}/`)) ? true : undefined;
            },
            { timeoutMs: 600_000, intervalMs: 250 },
        );
        return { n, ms: Date.now() - t0 };
    } finally {
        for (const node of nodes) {
            await bench.virsh(["destroy", node.name], { allowFailure: true });
            await bench.virsh(["undefine", "--nvram", node.name], { allowFailure: true });
        }
        await bench.virsh(["net-destroy", netName], { allowFailure: true });
        await bench.virsh(["net-undefine", netName], { allowFailure: true });
        fs.rmSync(dir, { recursive: true, force: true });
    }
}

// ------------------------------------------------------ unchanged big preview

async function bigPreview(
    big: number,
    o: Options,
): Promise<{ workers: number; resources: number; createMs: number; previewMs: number; previews: number[] }> {
    const stack = `bg${big}x${randomInt(100, 1000)}`;
    const cli = cliFor(stack);
    await cli.stackInit();
    const cfg = tinyStackConfig(bench, project, { workers: big, cidr: randomCidr(), cmdline: CMDLINE });
    cfg.deploy = { ...(cfg.deploy as object), sshWaitSeconds: 1800, switchTimeoutSeconds: 1800 };
    cli.writeStackConfig(cfg);
    try {
        log(`pulumi up: 1+${big} nodes, deployed (${stack}); slow under TCG`);
        const up = await cli.up({ timeoutMs: 60 * 60_000 });
        // The preview reads nothing from libvirt or the guests (diff is pure):
        // shut the guests off so their idle TCG load does not skew it.
        for (const d of (await bench.virsh(["list", "--name"])).stdout.split("\n").map((l) => l.trim()).filter((l) => l.startsWith(`${stack}-`))) {
            await bench.virsh(["destroy", d], { allowFailure: true });
        }
        const p = await previewMedian(cli, o.repeat);
        if (p.changed !== 0) throw new Error(`unchanged preview of ${stack} shows changes`);
        log(`destroy ${stack}`);
        await cli.destroy({ timeoutMs: 30 * 60_000 });
        return { workers: big, resources: p.same, createMs: up.ms, previewMs: p.ms, previews: p.all };
    } catch (e) {
        await cli.destroy({ allowFailure: true, timeoutMs: 30 * 60_000 }).catch(() => undefined);
        throw e;
    } finally {
        await cli.stackRm();
        removeStackParams(stack);
    }
}

/** A program that registers nothing, with the same runtime and node_modules: as TypeScript (ts-node) and compiled. */
async function emptyPreview(o: Options, netns: string | undefined): Promise<{ previewMs: number; previews: number[]; compiledMs: number }> {
    const cli = await emptyProgramCli(netns);
    const p = await previewMedian(cli, o.repeat);
    const c = await previewMedian(await emptyProgramCli(netns, {}, { name: "empty-js", precompiled: true }), o.repeat);
    return { previewMs: p.ms, previews: p.all, compiledMs: c.ms };
}

// ------------------------------------------- the program's preview, no libvirt

/**
 * A `nix` first on PATH that logs one line per process and runs the real
 * one: how many nix processes a preview starts (the program's evaluations).
 */
function nixShim(dir: string): { pathPrefix: string; count: () => number } {
    const real = execFileSync("sh", ["-c", "command -v nix"], { encoding: "utf8" }).trim();
    fs.mkdirSync(dir, { recursive: true });
    const logFile = path.join(dir, "nix-calls.log");
    fs.writeFileSync(logFile, "");
    fs.writeFileSync(path.join(dir, "nix"), `#!/bin/sh\nprintf '%s\\n' "$*" >> '${logFile}'\nexec '${real}' "$@"\n`, { mode: 0o755 });
    return { pathPrefix: dir, count: () => fs.readFileSync(logFile, "utf8").split("\n").filter((l) => l !== "").length };
}

/**
 * The stack config of the preview-only measurement: 1+N nodes whose image
 * and roles come from the project's flake (stub nixpkgs), as a user's stack
 * would. Nothing is created, so libvirt is never contacted: check and diff
 * are pure, and a preview of resources that do not exist yet calls no provider.
 */
function previewStackConfig(p: E2eProject, workers: number): Record<string, unknown> {
    const size = { vcpus: 1, memoryMiB: 256, diskGiB: 1 };
    return {
        libvirtUri: "qemu:///system",
        domainType: "qemu",
        autostart: false,
        network: { cidr: randomCidr() },
        storage: { path: path.join(p.root, "images") },
        image: { flake: "path:./nix" },
        master: size,
        workers: { count: workers, ...size },
        ssh: {
            user: "root",
            port: 22,
            privateKeyPath: path.join(p.root, "id_ed25519"),
            publicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyFakeKeyFakeKeyFakeKeyFakeKeyFakeKey bench@host",
        },
        spark: { settings: {}, pythonPackages: [] },
        deploy: { enabled: true, flake: "path:./nix", rebuildCommand: E2E_REBUILD, useSudo: false },
        health: { enabled: false },
    };
}

/**
 * Replaces a project copy's program (index.ts, cluster/, providers/) and the
 * files that say how it runs (Pulumi.yaml, package.json, tsconfig.json) with
 * the ones at a git revision, so that it runs as it ran then (ts-node before
 * the compiled program); bin/ and the build files go when the revision has none.
 */
async function checkoutProgram(dir: string, rev: string): Promise<string> {
    const commit = (await run(["git", "-C", REPO, "rev-parse", "--short", `${rev}^{commit}`], { timeoutMs: 30_000 })).stdout.trim();
    const files = ["index.ts", "cluster", "providers", "Pulumi.yaml", "package.json", "tsconfig.json"];
    for (const f of [...files, "bin", "tsconfig.build.json", "scripts"]) fs.rmSync(path.join(dir, f), { recursive: true, force: true });
    const present = (await run(["git", "-C", REPO, "ls-tree", "--name-only", commit, "--", "tsconfig.build.json", "scripts/build.js"], { timeoutMs: 30_000 })).stdout.split("\n").filter(Boolean);
    const tar = path.join(dir, "..", "program.tar");
    await run(["git", "-C", REPO, "archive", "--format=tar", "-o", tar, commit, "--", ...files, ...present], { timeoutMs: 60_000 });
    await run(["tar", "-xf", tar, "-C", dir], { timeoutMs: 60_000 });
    fs.rmSync(tar);
    return commit;
}

interface PreviewSeries {
    label: string;
    ms: number;
    all: number[];
    /** nix processes each preview started. */
    nix: number[];
    creates: number;
}

/**
 * One preview; it must plan creates (the nixspark stack, never created) or
 * nothing (the empty program's stack, up to date), never an update or delete.
 */
async function onePreview(label: string, cli: PulumiCli, shim: { count: () => number }): Promise<{ ms: number; nix: number; creates: number }> {
    const before = shim.count();
    const p = await cli.preview();
    const nix = shim.count() - before;
    const other = Object.entries(p.summary).filter(([k]) => k !== "create" && k !== "same").reduce((a, [, v]) => a + v, 0);
    if (other !== 0) throw new Error(`${label}: the preview plans more than creates: ${JSON.stringify(p.summary)}`);
    return { ms: p.ms, nix, creates: p.summary.create ?? 0 };
}

/**
 * `repeat` rounds, each one preview of every variant in turn, so that a
 * busy host (other work sharing the 2 cores) slows all variants alike
 * instead of whichever series ran during the busy minute.
 */
async function previewRounds(variants: { label: string; cli: PulumiCli }[], shim: { count: () => number }, repeat: number): Promise<PreviewSeries[]> {
    const series = variants.map((v) => ({ label: v.label, ms: 0, all: [] as number[], nix: [] as number[], creates: 0 }));
    // A warm-up round, not counted: each program's first run in its directory
    // pays for cold file caches that later runs do not see.
    for (const v of variants) await onePreview(v.label, v.cli, shim);
    for (let round = 0; round < repeat; round++) {
        for (const [i, v] of variants.entries()) {
            const r = await onePreview(v.label, v.cli, shim);
            series[i].all.push(r.ms);
            series[i].nix.push(r.nix);
            series[i].creates = r.creates;
        }
        log(`round ${round + 1}: ${series.map((x) => `${x.label} ${sec(x.all[round])} s (${x.nix[round]} nix)`).join("; ")}`);
    }
    for (const x of series) x.ms = median(x.all);
    return series;
}

/** The empty program, as a PulumiCli on an existing (up-to-date) stack: the engine's and runtime's fixed cost. */
async function emptyProgramCli(netns: string | undefined, env: Record<string, string> = {}, o: { name?: string; precompiled?: boolean } = {}): Promise<PulumiCli> {
    const dir = path.join(project.root, o.name ?? "empty");
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, "Pulumi.yaml"), "name: empty\nruntime: nodejs\nmain: index.ts\n");
    fs.writeFileSync(path.join(dir, "index.ts"), "// An empty program: the engine's and the Node.js runtime's fixed cost.\nexport {};\n");
    fs.copyFileSync(path.join(REPO, "tsconfig.json"), path.join(dir, "tsconfig.json"));
    fs.copyFileSync(path.join(REPO, "package.json"), path.join(dir, "package.json"));
    if (!fs.existsSync(path.join(dir, "node_modules"))) fs.symlinkSync(path.join(REPO, "node_modules"), path.join(dir, "node_modules"));
    if (o.precompiled) await precompileProject(dir);
    const cli = new PulumiCli({ cwd: dir, stack: "empty", backendDir: path.join(project.root, `${o.name ?? "empty"}-state`), netns, env });
    await cli.stackInit();
    await cli.up(); // so that its preview, too, is of an existing stack ("same")
    return cli;
}

/**
 * The program's Nix step alone, in this process (no engine, no ts-node, so
 * milliseconds are not lost in the preview's noise), on the project's flake
 * and cache: the way the program did it before (the image's drvPath, then
 * both role systems in parallel: three `nix eval --raw`), one `nix eval
 * --json` (cache off), and the cache hit an unchanged run gets (hashing only).
 */
async function nixStepAlone(p: E2eProject, stack: string, raw: Record<string, unknown>, rounds: number) {
    const cfg = parseConfig(raw);
    const topo = buildTopology(stack, cfg);
    const env = { ...process.env, NIX_CONFIG: p.nixConfig };
    const opts = { cwd: p.dir, env };
    const flake = p.flakeRef;
    const times = { separate: [] as number[], single: [] as number[], cached: [] as number[] };
    const timed = async <T>(xs: number[], f: () => Promise<T>): Promise<T> => {
        const t = process.hrtime.bigint();
        const r = await f();
        xs.push(Number(process.hrtime.bigint() - t) / 1e6);
        return r;
    };
    for (let i = 0; i < rounds; i++) {
        const separate = await timed(times.separate, async () => {
            const image = await evalDrvPath(flake, imageAttribute(stack), opts);
            const [master, worker] = await Promise.all([evalSystemPath(flake, `${stack}-master`, opts), evalSystemPath(flake, `${stack}-worker`, opts)]);
            return { image, master, worker };
        });
        const single = await timed(times.single, () => prepareNix(stack, cfg, topo, { ...opts, cache: false }));
        const cached = await timed(times.cached, () => prepareNix(stack, cfg, topo, opts));
        const same = (r: typeof single) => r.image?.drvPath === separate.image && r.systems?.master.expectedSystem === separate.master && r.systems?.worker.expectedSystem === separate.worker;
        if (!same(single) || !same(cached) || !cached.cached) throw new Error(`nix step: the values differ or the cache missed: ${JSON.stringify({ separate, single, cached })}`);
    }
    const ms = (xs: number[]) => Math.round(median(xs) * 10) / 10;
    log(`nix step alone: separate ${ms(times.separate)} ms, one eval ${ms(times.single)} ms, cached ${ms(times.cached)} ms`);
    return { rounds, separateMs: ms(times.separate), singleMs: ms(times.single), cachedMs: ms(times.cached), all: times };
}

/**
 * `--only preview`: what one `pulumi preview` of an unchanged 1+N stack costs,
 * for each N of --preview-workers (default 16 and 64), against an empty
 * program run as TypeScript (ts-node, what a new Pulumi TypeScript project
 * does) and the same empty program compiled, all interleaved in one run and
 * without libvirt: the stacks' resources are never created, so every preview
 * plans the same creates (check is pure; nothing reaches libvirt). The
 * nixspark stacks share one project copy, the program as it runs for a user
 * (compiled, bin/ fresh). --before-rev REV adds the first stack with the
 * program as it was at REV; --nix the first stack with the evaluation cache off
 * and the Nix step alone.
 */
async function previewOnly(o: Options): Promise<void> {
    await installPulumi();
    project = createE2eProject("nxs-benchv-");
    const before = o.beforeRev ? createE2eProject("nxs-benchb-") : undefined;
    const shim = nixShim(path.join(project.root, "nix-shim"));
    const tag = randomInt(100, 1000);
    const stackOf = (n: number) => `pv${n}x${tag}`;
    const env = (p: E2eProject, more: Record<string, string> = {}) => ({
        NIX_CONFIG: p.nixConfig,
        PATH: [shim.pathPrefix, TOOLS_BIN, SDK_BIN, process.env.PATH ?? "/usr/bin:/bin"].join(":"),
        ...more,
    });
    const cliIn = (p: E2eProject, stack: string, more: Record<string, string> = {}) =>
        new PulumiCli({ cwd: p.dir, stack, backendDir: p.backendDir, env: env(p, more), timeoutMs: 10 * 60_000 });
    const results: any = { date: new Date().toISOString(), options: o, host: hostInfo(), workers: o.previewWorkers, commit: await gitDescribe() };
    try {
        const variants: { label: string; cli: PulumiCli; workers?: number }[] = [
            { label: "empty TypeScript program", cli: await emptyProgramCli(undefined, env(project)) },
            { label: "empty compiled program", cli: await emptyProgramCli(undefined, env(project), { name: "empty-js", precompiled: true }) },
        ];
        const configs = new Map<number, Record<string, unknown>>();
        results.cold = [];
        for (const n of o.previewWorkers) {
            const cfg = previewStackConfig(project, n);
            configs.set(n, cfg);
            const cli = cliIn(project, stackOf(n));
            await cli.stackInit();
            cli.writeStackConfig(cfg);
            log(`preview of 1+${n} (${stackOf(n)}), never created; the first one fills the evaluation cache`);
            results.cold.push({ workers: n, ...(await onePreview(`1+${n} first preview`, cli, shim)) });
            variants.push({ label: `nixspark 1+${n}`, cli, workers: n });
        }
        const first = o.previewWorkers[0];
        if (o.nix) variants.push({ label: `nixspark 1+${first}, cache off`, cli: cliIn(project, stackOf(first), { NIXSPARK_NIX_EVAL_CACHE: "0" }) });
        if (before) {
            results.beforeRev = await checkoutProgram(before.dir, o.beforeRev!);
            const b = cliIn(before, stackOf(first));
            await b.stackInit();
            b.writeStackConfig(configs.get(first)!);
            await onePreview(`at ${results.beforeRev}, first`, b, shim);
            variants.push({ label: `nixspark 1+${first} at ${results.beforeRev}`, cli: b });
        }
        const series = await previewRounds(variants, shim, o.repeat);
        results.series = series.map((x, i) => ({ ...x, workers: variants[i].workers }));
        if (o.trace) {
            const traceDir = o.out ? `${o.out}.trace.d` : path.join(project.root, "trace");
            fs.mkdirSync(traceDir, { recursive: true });
            const traced: TraceResult[] = [];
            for (const v of variants.filter((x) => !x.label.includes("cache off") && !x.label.includes(" at "))) {
                log(`traced preview: ${v.label}`);
                traced.push(await tracedPreview(v.label, v.cli, traceDir, true));
            }
            results.traces = traced;
            log(`trace events and CPU profiles: ${traceDir}${o.out ? "" : " (removed at the end; use --out FILE to keep them)"}`);
        }
        if (o.nix) results.nixStep = await nixStepAlone(project, stackOf(first), configs.get(first)!, 10);
        if (o.out) fs.writeFileSync(o.out, JSON.stringify(results, null, 2) + "\n");
        process.stdout.write(previewReport(results) + "\n");
    } finally {
        project.remove();
        before?.remove();
    }
}

async function gitDescribe(): Promise<string> {
    const head = (await run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], { timeoutMs: 30_000 })).stdout.trim();
    const dirty = (await run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"], { timeoutMs: 30_000 })).stdout.trim() !== "";
    return dirty ? `${head} plus uncommitted changes` : head;
}

function hostInfo() {
    return {
        cpus: os.cpus().length,
        cpu: os.cpus()[0]?.model,
        memGiB: Math.round(os.totalmem() / 1024 ** 3),
        pulumi: execFileSync(path.join(REPO, ".tools", "bin", "pulumi"), ["version"], { encoding: "utf8", env: { ...process.env, PULUMI_SKIP_UPDATE_CHECK: "1" } }).trim(),
        parallel: 4 * os.cpus().length,
    };
}

function previewReport(r: any): string {
    const series = r.series as (PreviewSeries & { workers?: number })[];
    const by = (label: string) => series.find((x) => x.label === label)!;
    const emptyTs = by("empty TypeScript program");
    const emptyJs = by("empty compiled program");
    const nodes = series.filter((x) => x.workers !== undefined);
    const all = (s: PreviewSeries) => s.all.map(sec).join(", ");
    const lines = [
        `Measured ${r.date} (commit ${r.commit}) on ${r.host.cpus} cores (${r.host.cpu}), ${r.host.memGiB} GiB; pulumi ${r.host.pulumi}; \`pulumi preview\` of stacks that are never created (every preview plans the same creates); median of ${r.options.repeat} rounds, each round every program once, in this order.`,
        "",
        "| program | resources | preview (median; all rounds) | / empty TypeScript | / empty compiled | nix processes |",
        "| --- | --- | --- | --- | --- | --- |",
    ];
    for (const s of series)
        lines.push(`| ${s.label} | ${s.creates} | ${sec(s.ms)} s (${all(s)}) | ${ratio(s.ms, emptyTs.ms)} | ${ratio(s.ms, emptyJs.ms)} | ${[...new Set(s.nix)].join("/")} |`);
    lines.push("");
    if (nodes.length >= 1) {
        const [a, ...rest] = nodes;
        lines.push(`- 1+${a.workers} / empty TypeScript program: ${ratio(a.ms, emptyTs.ms)} (goal <= 2.0)`);
        for (const b of rest) {
            lines.push(`- 1+${b.workers} / 1+${a.workers}: ${ratio(b.ms, a.ms)} (goal <= 1.5)`);
            const perNode = (b.ms - a.ms) / (b.workers! - a.workers!);
            const perResource = (b.ms - a.ms) / (b.creates - a.creates);
            lines.push(`- cost per extra node (1+${a.workers} -> 1+${b.workers}): ${Math.round(perNode)} ms (${Math.round(perResource)} ms per resource, ${(b.creates - a.creates) / (b.workers! - a.workers!)} resources per node)`);
        }
    }
    lines.push(`- first preview of each stack (empty evaluation cache): ${r.cold.map((c: any) => `1+${c.workers} ${sec(c.ms)} s, ${c.nix} nix`).join("; ")}`);
    if (r.nixStep) {
        const n = r.nixStep;
        lines.push(`- the program's Nix step alone (in-process, median of ${n.rounds}): three \`nix eval --raw\` ${n.separateMs} ms, one \`nix eval --json\` ${n.singleMs} ms, cache hit ${n.cachedMs} ms`);
    }
    if (r.traces) {
        lines.push("");
        lines.push("One traced preview of each program after the rounds:");
        lines.push("");
        lines.push(traceReport(r.traces));
    }
    return lines.join("\n");
}

// ------------------------------------------------------------------ report

function ratio(a: number, b: number): string {
    return (a / b).toFixed(2);
}

function report(r: any, o: Options): string {
    const lines: string[] = [];
    const by = (n: number) => r.pulumi.find((x: PulumiRun) => x.n === n) as PulumiRun;
    const vi = (n: number) => r.virtInstall.find((x: { n: number }) => x.n === n) as { ms: number; perNodeMs: number[] };
    const first = o.sizes[0];
    const last = o.sizes[o.sizes.length - 1];
    lines.push(`Measured ${r.date} on ${r.host.cpus} cores (${r.host.cpu}), ${r.host.memGiB} GiB; QEMU TCG guests (domainType qemu), pulumi ${r.host.pulumi}, --parallel default ${r.host.parallel}.`);
    lines.push("");
    const fl = (n: number) => r.bootFloor.find((x: { n: number }) => x.n === n) as { ms: number } | undefined;
    lines.push("| nodes (1+N) | `pulumi up` create | virt-install loop | loop / up | parallel boot floor | unchanged preview | Spark setting update (rebuild 2 s) | destroy |");
    lines.push("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (const n of o.sizes) {
        const p = by(n);
        const v = vi(n);
        const f = fl(n);
        lines.push(
            `| 1+${n} | ${sec(p.createMs)} s (${p.resourcesCreated} resources) | ${v ? `${sec(v.ms)} s` : "-"} | ${v ? ratio(v.ms, p.createMs) : "-"} | ${f ? `${sec(f.ms)} s` : "-"} | ${sec(p.unchangedPreviewMs)} s | ${sec(p.update.ms)} s (${p.update.deploymentsUpdated} deployments, ${p.update.otherChanges} other changes) | ${sec(p.destroyMs)} s |`,
        );
    }
    lines.push("");
    lines.push("| ratio | measured | target |");
    lines.push("| --- | --- | --- |");
    lines.push(`| create T(${last})/T(${first}) | ${ratio(by(last).createMs, by(first).createMs)} | <= 1.6 |`);
    if (vi(last)) lines.push(`| virt-install loop / pulumi up at N=${last} | ${ratio(vi(last).ms, by(last).createMs)} | >= 3 |`);
    lines.push(`| update T(${last})/T(${first}) | ${ratio(by(last).update.ms, by(first).update.ms)} | <= 1.5 |`);
    if (r.big) lines.push(`| unchanged preview 1+${r.big.workers} (${r.big.resources} resources) / empty program | ${sec(r.big.previewMs)} s / ${sec(r.empty.previewMs)} s = ${ratio(r.big.previewMs, r.empty.previewMs)} | <= 2 |`);
    lines.push("");
    const scaled = by(last).scale;
    if (scaled) lines.push(`Scale 1+${last} -> 1+${last + 1}: \`pulumi up\` ${sec(scaled.ms)} s (preview ${sec(scaled.previewMs)} s); resources touched: ${scaled.touched.length} (${scaled.touched.join(", ")}).`);
    const overlays = o.sizes.flatMap((n) => by(n).disk.overlayBytes);
    lines.push(`Disk per additional node: qcow2 overlay ${Math.round(median(overlays) / 1024)} KiB on disk after boot (min ${Math.round(Math.min(...overlays) / 1024)}, max ${Math.round(Math.max(...overlays) / 1024)}, ${overlays.length} overlays); the shared base image takes ${Math.round(by(first).disk.baseBytes / 1024)} KiB.`);
    if (fl(first) && fl(last)) lines.push(`Parallel boot floor T(${last})/T(${first}): ${ratio(fl(last)!.ms, fl(first)!.ms)} (plain virsh, all guests started at once, until every DHCP lease).`);
    if (r.big) {
        lines.push(`The 1+${r.big.workers} stack itself took ${sec(r.big.createMs)} s to create (deployed) before its previews (${r.big.previews.map(sec).join(", ")} s; empty program ${r.empty.previews.map(sec).join(", ")} s).`);
        lines.push(`Against the empty program compiled (${sec(r.empty.compiledMs)} s): unchanged preview 1+${r.big.workers} / empty compiled = ${ratio(r.big.previewMs, r.empty.compiledMs)}.`);
    }
    return lines.join("\n");
}

async function main(): Promise<void> {
    const o = parseArgs(process.argv.slice(2));
    if (o.only === "preview") return previewOnly(o);
    if (o.only === "rollout") return rolloutOnly({ repeat: o.repeat, updateSeconds: o.updateSeconds, maxParallel: o.maxParallel, workers: o.rolloutWorkers, out: o.out });
    await installPulumi();
    bench = await startBench({ log });
    project = createE2eProject("nxs-benchp-");
    const started = Date.now();
    const results: any = {
        date: new Date().toISOString(),
        options: o,
        host: hostInfo(),
        pulumi: [] as PulumiRun[],
        virtInstall: [] as unknown[],
        bootFloor: [] as unknown[],
    };
    try {
        const last = o.sizes[o.sizes.length - 1];
        for (const n of o.sizes) {
            results.pulumi.push(await pulumiRun(n, o, n === last));
            log(`virt-install loop: 1+${n}`);
            results.virtInstall.push(await virtInstallLoop(n));
            log(`parallel boot floor: 1+${n}`);
            results.bootFloor.push(await parallelBootFloor(n));
            log(JSON.stringify({ pulumi: results.pulumi.at(-1), virtInstall: results.virtInstall.at(-1), bootFloor: results.bootFloor.at(-1) }));
        }
        results.empty = await emptyPreview(o, bench.netns);
        if (o.big > 0) results.big = await bigPreview(o.big, o);
        results.totalMs = Date.now() - started;
        if (o.out) fs.writeFileSync(o.out, JSON.stringify(results, null, 2) + "\n");
        process.stdout.write(report(results, o) + "\n");
    } finally {
        if (o.out && !fs.existsSync(o.out)) fs.writeFileSync(o.out, JSON.stringify(results, null, 2) + "\n");
        await bench.stop().catch((e: Error) => log(`bench stop: ${e.message}`));
        project.remove();
    }
}

main().catch((e) => {
    process.stderr.write(`bench: ${(e as Error).stack ?? e}\n`);
    process.exit(1);
});
