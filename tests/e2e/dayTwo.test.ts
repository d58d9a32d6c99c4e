// Day 2 through the real engine on the libvirt bench: routine changes never
// replace a running node. Each step's preview is asserted exactly before its up.
//
//   a 1+1 stack on image A (default network settings) -> turned into the
//   state of the release before base volumes (overlays on a store image):
//   up moves every overlay onto the pool's base volume, restarting each VM,
//   and they boot again once the old image is gone -> image B: preview
//   shows the base volume's replacement only; up keeps every VM; the old base
//   stays while overlays use it; a new worker boots with B under its disk ->
//   workers' disks 1 -> 2 GiB: Volume updates only, same VMs, the guests see
//   the bigger disk at once; 2 -> 1 is refused in preview, nothing changes ->
//   workers' memory: Domain updates that say "restart" in preview; up
//   restarts the workers one at a time with the new memory, the master never
//   stops -> a new console log directory and kernel command line: preview
//   shows updates only (no replace, no warning); up restarts master, canary
//   and the last worker one at a time, each switched before the next, same
//   UUIDs, each new log holds one boot with the new command line, nothing
//   is left pending -> a second stack with default network settings beside it, both up;
//   destroying it leaves the first running -> a simulated host reboot:
//   refresh keeps everything and says what is stopped, up brings it back at
//   the same addresses -> destroy leaves nothing in libvirt, the pool
//   directory or the stack's state directory.
//
// Where things run: see stack.test.ts (the CLI in the bench's namespace).
import * as fs from "node:fs";
import * as path from "node:path";
import { run } from "../../providers/run";
import { defaultCidr } from "../../cluster/subnet";
import { Bench, startBench, waitFor } from "../helpers/libvirtBench";
import { installPulumi, OperationResult, PulumiCli, Step, stepList } from "../helpers/pulumiCli";
import { storyLog, tearDownStory } from "../helpers/e2eStory";
import { createE2eProject, E2eProject, randomStackName, tinyStackConfig } from "../fixtures/e2e-project";

jest.setTimeout(10 * 60_000);

const stack = randomStackName("day");
const other = `${stack}b`;
const GiB = 1024 ** 3;

let bench: Bench;
let project: E2eProject;
let cli: PulumiCli;
let otherCli: PulumiCli | undefined;
let imageA: string;
let imageB: string;
const live = new Set<PulumiCli>();

const storyLogged = storyLog(stack);
const { say, timed } = storyLogged;

/** A qcow2 image whose first bytes are `marker` (what a guest reads from the start of its disk). */
async function markedImage(file: string, marker: string): Promise<void> {
    const raw = `${file}.raw`;
    const buf = Buffer.alloc(1024 * 1024);
    buf.write(marker);
    fs.writeFileSync(raw, buf);
    await run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, file], { timeoutMs: 60_000 });
    fs.rmSync(raw);
}

/** The stack config: 1 master + `workers`, default network settings (no cidr), the given image. */
function config(s: string, workers: number, image: string, extra: { workers?: object; rollout?: object; consoleLogDir?: string; cmdline?: string } = {}): Record<string, unknown> {
    const cfg = tinyStackConfig(bench, project, { workers, cidr: "unused", cmdline: extra.cmdline }) as any;
    delete cfg.network;
    if (extra.consoleLogDir) cfg.consoleLogDir = extra.consoleLogDir;
    cfg.image = { ...cfg.image, path: image };
    cfg.workers = { ...cfg.workers, ...(extra.workers ?? {}) };
    cfg.deploy = { ...cfg.deploy, rollout: { maxParallel: 2, canary: false, verifyTimeoutSeconds: 60, ...(extra.rollout ?? {}) } };
    return cfg;
}

beforeAll(async () => {
    await timed("install-pulumi", () => installPulumi());
    bench = await timed("startBench", () => startBench({ log: say }));
    project = createE2eProject("nxs-day2-");
    imageA = path.join(project.root, "image-a.qcow2");
    imageB = path.join(project.root, "image-b.qcow2");
    await markedImage(imageA, "nixspark-image-A");
    await markedImage(imageB, "nixspark-image-B");
    cli = new PulumiCli({ cwd: project.dir, stack, backendDir: project.backendDir, netns: bench.netns, env: { NIX_CONFIG: project.nixConfig } });
    await cli.stackInit();
    cli.writeStackConfig(config(stack, 1, imageA));
    say(`project ${project.dir}, netns ${bench.netns}, subnet ${defaultCidr(stack)}`);
}, 30 * 60_000);

afterAll(() => tearDownStory({ clis: live, bench, project, log: storyLogged }), 10 * 60_000);

// ------------------------------------------------------------------ helpers

const net = (s: string) => defaultCidr(s).replace(/\.0\/24$/, "");
const ipOf = (node: string, s = stack) => `${net(s)}.${node === "master" ? 10 : 10 + Number(node.replace("worker-", ""))}`;
const dom = (node: string, s = stack) => `${s}-${node}`;
const changed = (r: OperationResult): Step[] => r.steps.filter((st) => st.op !== "same");
const poolDir = (s = stack) => path.join(bench.dir, "images", s);
const stateDir = (s = stack) => path.join(project.dir, ".nixspark", s);

async function virshOut(args: string[]): Promise<string> {
    return (await bench.virsh(args)).stdout.trim();
}

async function uuids(nodes: string[]): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const n of nodes) out[n] = await virshOut(["domuuid", dom(n)]);
    return out;
}

/** Volume name -> the base it backs onto ("" for none), from libvirt. */
async function poolVolumes(s = stack): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    const names = (await virshOut(["vol-list", "--pool", `${s}-pool`])).split("\n").slice(2).map((l) => l.trim().split(/\s+/)[0]).filter(Boolean);
    for (const n of names) {
        const xml = await virshOut(["vol-dumpxml", "--pool", `${s}-pool`, n]);
        const m = /<backingStore>\s*<path>([^<]+)<\/path>/.exec(xml);
        out[n] = m ? path.basename(m[1]) : "";
    }
    return out;
}

/** Runs a shell command line on a guest (as root, over ssh inside the namespace), once it answers. */
async function onGuest(node: string, command: string, s = stack): Promise<string> {
    return waitFor(
        `${dom(node, s)} answering over ssh`,
        async () => {
            const r = await bench.ssh(ipOf(node, s), ["sh", "-c", `'${command}'`], { allowFailure: true, timeoutMs: 30_000 });
            return r.code === 0 ? r.stdout.trim() : undefined;
        },
        { timeoutMs: 180_000, intervalMs: 2000 },
    );
}

const diskBytes = async (node: string) => Number(await onGuest(node, "cat /sys/block/vda/size")) * 512;
const memTotalKiB = async (node: string) => Number((await onGuest(node, "grep MemTotal /proc/meminfo")).replace(/\D+/g, ""));
const diskMarker = (node: string) => onGuest(node, "head -c 16 /dev/vda | tr -d \"\\000\"; echo");

// -------------------------------------------------------------------- story

/** A step of the story: it runs only when every step before it passed (each builds on the last). */
let broken = "";
function step(name: string, fn: () => Promise<void>): void {
    test(name, async () => {
        if (broken) throw new Error(`not run: step "${broken}" failed`);
        try {
            await fn();
        } catch (e) {
            broken = name.split(".")[0];
            throw e;
        }
    });
}

describe(`day 2 on the libvirt bench (stack ${stack})`, () => {
    let before: Record<string, string>;
    let baseA = "";
    let baseB = "";

    step("0. up: a 1+1 stack on image A with default network settings", async () => {
        live.add(cli);
        const u = await timed("up (1+1)", () => cli.up());
        expect(u.summary.create).toBeGreaterThan(0);
        before = await uuids(["master", "worker-1"]);
        const vols = await poolVolumes();
        baseA = vols[`${stack}-master.qcow2`];
        expect(baseA).toMatch(new RegExp(`^${stack}-base-[0-9a-f]{12}\\.qcow2$`));
        expect(vols).toEqual({ [baseA]: "", [`${stack}-master.qcow2`]: baseA, [`${stack}-worker-1.qcow2`]: baseA });
        expect(await diskMarker("worker-1")).toBe("nixspark-image-A");
        // The base is read-only, in the pool; no GC root of the checkout is involved.
        expect(fs.statSync(path.join(poolDir(), baseA)).mode & 0o777).toBe(0o444);
    });

    // Issue 16: the state the release before base volumes (96af5f3^) wrote.
    // Its Volume had the image file as an input (backingPath, for a Nix image
    // NixImage's imagePath in /nix/store) and outputs {...inputs, path}; no
    // BaseVolume existed, and each overlay backed onto that file itself. Made
    // from this stack: the overlays rebased (qemu-img rebase -u, VMs off) onto
    // a copy of image A at a stand-in store path, the base volume deleted,
    // the Volumes and the BaseVolume put into that shape by stack export/import.
    step("0b. a stack from before base volumes: up moves every overlay onto the pool's base volume (a Volume update, each VM restarted); the VMs restart cleanly once the old image is gone", async () => {
        const store = path.join(project.root, "nix-store", "0123456789abcdfghijklmnpqrsvwxyz-nixspark-image", "nixos.qcow2");
        fs.mkdirSync(path.dirname(store), { recursive: true });
        fs.copyFileSync(imageA, store);
        const nodes = ["master", "worker-1"];
        const disk = (n: string) => path.join(poolDir(), `${stack}-${n}.qcow2`);
        for (const n of nodes) await bench.virsh(["destroy", dom(n)]);
        for (const n of nodes) await run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", store, "-F", "qcow2", disk(n)], { timeoutMs: 60_000 });
        await bench.virsh(["vol-delete", "--pool", `${stack}-pool`, baseA]);
        await bench.virsh(["pool-refresh", `${stack}-pool`]);
        for (const n of nodes) await bench.virsh(["start", dom(n)]);
        expect(await poolVolumes()).toEqual({ [`${stack}-master.qcow2`]: path.basename(store), [`${stack}-worker-1.qcow2`]: path.basename(store) });

        const deployment = await cli.exportState();
        const baseUrn = deployment.resources!.find((r: any) => String(r.urn).endsWith(`::${stack}-base-volume`))?.urn;
        expect(baseUrn).toBeDefined();
        deployment.resources = deployment.resources!.filter((r: any) => r.urn !== baseUrn);
        for (const r of deployment.resources) {
            if (r.dependencies) r.dependencies = r.dependencies.filter((u: string) => u !== baseUrn);
            for (const k of Object.keys(r.propertyDependencies ?? {})) r.propertyDependencies[k] = r.propertyDependencies[k].filter((u: string) => u !== baseUrn);
            if (!nodes.some((n) => String(r.urn).endsWith(`::${dom(n)}-disk`))) continue;
            const { __provider, uri, pool, name, capacityBytes } = r.inputs;
            r.inputs = { __provider, uri, pool, name, backingPath: store, capacityBytes };
            r.outputs = { ...r.inputs, path: r.outputs.path };
            delete r.propertyDependencies?.basePath;
        }
        const file = path.join(project.root, "legacy-state.json");
        fs.writeFileSync(file, JSON.stringify({ version: 3, deployment }));
        await cli.run(["stack", "import", "--file", file], { timeoutMs: 60_000 });

        // Preview: the base volume is made, each disk is an update that says it moves and restarts its VM; nothing else.
        const p = await timed("preview (legacy state)", () => cli.preview());
        expect(stepList(changed(p))).toEqual([`create ${stack}-base-volume`, `update ${dom("master")}-disk`, `update ${dom("worker-1")}-disk`].sort());
        for (const n of nodes) {
            const raw = (p.json.steps ?? []).find((x: any) => String(x.urn).endsWith(`::${dom(n)}-disk`) && x.op === "update");
            expect(raw?.newState?.inputs?.moveRequired).toBe(
                `backs onto ${store}, outside the pool (a disk from before base volumes): moved onto the pool's base volume after checking both have the same content; ` +
                    `its VM ${dom(n)} restarts for it (shutdown, then start; one VM of the stack at a time)`,
            );
        }
        const ids = await Promise.all(nodes.map(async (n) => virshOut(["domid", dom(n)])));
        const u = await timed("up (legacy state)", () => cli.up());
        expect(stepList(changed(u))).toEqual([`create ${stack}-base-volume`, `update ${dom("master")}-disk`, `update ${dom("worker-1")}-disk`].sort());
        // Every overlay backs onto the pool's base volume (the same image: the same name as before); same VMs, each restarted once.
        expect(await poolVolumes()).toEqual({ [baseA]: "", [`${stack}-master.qcow2`]: baseA, [`${stack}-worker-1.qcow2`]: baseA });
        expect(await uuids(nodes)).toEqual(before);
        for (const [i, n] of nodes.entries()) expect(await virshOut(["domid", dom(n)])).not.toBe(ids[i]);
        const said = u.diagnostics.map((d) => d.message).join("\n");
        for (const n of nodes) expect(said).toContain(`volume "${stack}-pool/${stack}-${n}.qcow2": moved from ${store} onto the pool's base volume ${path.join(poolDir(), baseA)} (same content)`);
        for (const n of nodes) {
            const info = JSON.parse((await run(["qemu-img", "info", "-U", "--output=json", "--backing-chain", disk(n)], { timeoutMs: 60_000 })).stdout);
            expect(info.map((x: any) => x.filename)).toEqual([disk(n), path.join(poolDir(), baseA)]);
        }
        expect(stepList(changed(await timed("preview (after the move)", () => cli.preview())))).toEqual([]);

        // The old image goes (a garbage collection): the VMs start again and read image A's bytes through the base volume.
        fs.rmSync(path.dirname(path.dirname(store)), { recursive: true, force: true });
        for (const n of nodes) await bench.virsh(["destroy", dom(n)]);
        for (const n of nodes) await bench.virsh(["start", dom(n)]);
        for (const n of nodes) expect(await diskMarker(n)).toBe("nixspark-image-A");
        expect(await uuids(nodes)).toEqual(before);
    });

    step("a. a new base image: preview shows only the base volume's replacement; up keeps every VM; a new worker boots on the new image; the old base stays while overlays use it", async () => {
        cli.writeStackConfig(config(stack, 1, imageB));
        const p = await timed("preview (image B)", () => cli.preview());
        const base = `${stack}-base-volume`;
        expect(stepList(changed(p))).toEqual([`replace ${base}`]);
        const u = await timed("up (image B)", () => cli.up());
        expect(stepList(changed(u))).toEqual([`create-replacement ${base}`, `delete-replaced ${base}`, `replace ${base}`]);
        expect(await uuids(["master", "worker-1"])).toEqual(before);

        let vols = await poolVolumes();
        baseB = Object.keys(vols).find((n) => n.startsWith(`${stack}-base-`) && n !== baseA) ?? "";
        expect(baseB).toMatch(/-base-[0-9a-f]{12}\.qcow2$/);
        // The old base was deleted by Pulumi but kept: two overlays still back onto it.
        expect(vols).toEqual({ [baseA]: "", [baseB]: "", [`${stack}-master.qcow2`]: baseA, [`${stack}-worker-1.qcow2`]: baseA });

        cli.writeStackConfig(config(stack, 2, imageB));
        const p2 = await timed("preview (+1 worker on B)", () => cli.preview());
        expect(stepList(changed(p2), (st) => st.kind !== "Network")).toEqual([`create ${stack}-worker-2-disk`, `create ${dom("worker-2")}`, `create ${stack}-worker-2-nixos`].sort());
        await timed("up (+1 worker on B)", () => cli.up());
        vols = await poolVolumes();
        expect(vols[`${stack}-worker-2.qcow2`]).toBe(baseB);
        expect(await diskMarker("worker-2")).toBe("nixspark-image-B");
        expect(await diskMarker("worker-1")).toBe("nixspark-image-A");
        before = await uuids(["master", "worker-1", "worker-2"]);
    });

    step("b. workers' disks 1 -> 2 GiB grow in place (same VMs, the guests see it); 2 -> 1 is refused in preview and nothing changes", async () => {
        expect(await diskBytes("worker-1")).toBe(1 * GiB);
        cli.writeStackConfig(config(stack, 2, imageB, { workers: { diskGiB: 2 } }));
        const p = await timed("preview (disk 2 GiB)", () => cli.preview());
        expect(stepList(changed(p))).toEqual([`update ${stack}-worker-1-disk`, `update ${stack}-worker-2-disk`]);
        const u = await timed("up (disk 2 GiB)", () => cli.up());
        expect(stepList(changed(u))).toEqual([`update ${stack}-worker-1-disk`, `update ${stack}-worker-2-disk`]);
        expect(await uuids(["master", "worker-1", "worker-2"])).toEqual(before);
        expect(await diskBytes("worker-1")).toBe(2 * GiB);
        expect(await diskBytes("worker-2")).toBe(2 * GiB);
        expect(await diskBytes("master")).toBe(1 * GiB);

        const stateBefore = JSON.stringify((await cli.exportState()).resources);
        cli.writeStackConfig(config(stack, 2, imageB, { workers: { diskGiB: 1 } }));
        const bad = await timed("preview (disk 1 GiB)", () => cli.preview({ allowFailure: true }));
        expect(bad.code).not.toBe(0);
        const text = bad.diagnostics.map((d) => d.message).join("\n");
        // (The engine stops at the first refused resource: either worker's disk.)
        expect(text).toMatch(new RegExp(`the disk of ${stack}-worker-[12]\\.qcow2 cannot shrink from 2 GiB to 1 GiB: disks only grow in place`));
        expect(text).toContain("set diskGiB back to 2 or more");
        expect(JSON.stringify((await cli.exportState()).resources)).toBe(stateBefore);
        expect(await diskBytes("worker-1")).toBe(2 * GiB);
        cli.writeStackConfig(config(stack, 2, imageB, { workers: { diskGiB: 2 } }));
    });

    step("c. workers' memory 256 -> 384 MiB: preview says the workers restart in rollout order; up restarts each in its turn (canary first, its switch done before the next restart) with the new memory, the master never stops", async () => {
        const memBefore = await memTotalKiB("worker-1");
        const masterId = await virshOut(["domid", dom("master")]);
        const workerIds = [await virshOut(["domid", dom("worker-1")]), await virshOut(["domid", dom("worker-2")])];
        // A canary, then batches of one: the restarts must follow that order.
        cli.writeStackConfig(config(stack, 2, imageB, { workers: { diskGiB: 2, memoryMiB: 384 }, rollout: { maxParallel: 1, canary: true } }));
        const p = await timed("preview (memory)", () => cli.preview());
        const domainSteps = changed(p).filter((st) => st.kind === "Domain");
        expect(stepList(domainSteps)).toEqual([`update ${dom("worker-1")}`, `update ${dom("worker-2")}`]);
        // What preview says about each: the restart, in the Domain's restartRequired.
        for (const n of ["worker-1", "worker-2"]) {
            const raw = (p.json.steps ?? []).find((x: any) => String(x.urn).endsWith(`::${dom(n)}`) && x.op === "update");
            expect(raw?.newState?.inputs?.restartRequired).toBe("memory 256 -> 384 MiB: the VM restarts (shutdown, then start), in rollout order, by its NixOS deployment before it switches (deploy.rollout)");
        }
        // Only workers change: their domains and (the worker system follows the VM size) deployments.
        expect(stepList(changed(p), (st) => st.kind !== "Domain" && st.kind !== "NixosDeployment")).toEqual([]);
        // Updates, not replacements: the VMs stay (their UUIDs are unknown in preview, like any updated dynamic resource's output).
        expect(stepList(changed(p), (st) => st.kind === "NixosDeployment")).toEqual([`update ${dom("worker-1")}-nixos`, `update ${dom("worker-2")}-nixos`]);

        const u = await timed("up (memory, restarts)", () => cli.up());
        // The deployments' own account, in order: the canary's VM restarts and
        // its node switches (verified) before the next batch's VM restarts.
        const lines = u.diagnostics
            .map((d) => d.message)
            .filter((m) => /: restarting for|: running again with|^\[worker-\d\] now running /.test(m))
            .map((m) => m.replace(/^.*libvirt domain "([^"]+)": (restarting|running again).*$/s, "$1 $2").replace(/^\[(worker-\d)\] now running .*$/s, "$1 switched"));
        expect(lines).toEqual([
            `${dom("worker-1")} restarting`,
            `${dom("worker-1")} running again`,
            "worker-1 switched",
            `${dom("worker-2")} restarting`,
            `${dom("worker-2")} running again`,
            "worker-2 switched",
        ]);

        expect(await virshOut(["domid", dom("master")])).toBe(masterId);
        expect([await virshOut(["domid", dom("worker-1")]), await virshOut(["domid", dom("worker-2")])]).not.toEqual(workerIds);
        expect(await uuids(["master", "worker-1", "worker-2"])).toEqual(before);
        const memAfter = await memTotalKiB("worker-1");
        expect(memAfter - memBefore).toBeGreaterThan(100 * 1024);
        expect((await memTotalKiB("worker-2")) - memBefore).toBeGreaterThan(100 * 1024);
        const again = await cli.preview();
        expect(changed(again)).toEqual([]);
    });

    step("c2. a new console log directory and kernel command line: preview shows updates only; up restarts master, canary, then the last worker, one at a time in rollout order (each switched before the next restarts), same UUIDs, each new log gets its boot; nothing left pending", async () => {
        const nodes = ["master", "worker-1", "worker-2"];
        const logDir = path.join(bench.dir, "console-b");
        fs.mkdirSync(logDir, { recursive: true }); // (libvirt writes the file, not the directory)
        const cmdline = "console=ttyS0 nixspark_e2e=2";
        const ids = Object.fromEntries(await Promise.all(nodes.map(async (n) => [n, await virshOut(["domid", dom(n)])])));
        const oldLog = (n: string) => path.join("/var/log/libvirt/qemu", `${dom(n)}-console.log`);
        const newLog = (n: string) => path.join(logDir, `${dom(n)}-console.log`);
        cli.writeStackConfig(config(stack, 2, imageB, { workers: { diskGiB: 2, memoryMiB: 384 }, rollout: { maxParallel: 1, canary: true }, consoleLogDir: logDir, cmdline }));

        const p = await timed("preview (console log, cmdline)", () => cli.preview());
        // Updates only: every Domain (the definition is saved) and every deployment (its VM restarts, then it switches).
        expect(stepList(changed(p))).toEqual([...nodes.map((n) => `update ${dom(n)}`), ...nodes.map((n) => `update ${dom(n)}-nixos`)].sort());
        for (const n of nodes) {
            const raw = (p.json.steps ?? []).find((x: any) => String(x.urn).endsWith(`::${dom(n)}`) && x.op === "update");
            expect(raw?.newState?.inputs?.restartRequired).toBe(
                `kernel command line "console=ttyS0" -> "${cmdline}", console log ${oldLog(n)} -> ${newLog(n)}: the VM restarts (shutdown, then start), in rollout order, by its NixOS deployment before it switches (deploy.rollout)`,
            );
        }
        const previewed = p.diagnostics.map((d) => d.message).join("\n");
        expect(previewed).not.toMatch(/warning: \[|VM (is|will be) replaced|decommission/);

        const u = await timed("up (console log, cmdline: restarts)", () => cli.up());
        expect(stepList(changed(u))).toEqual([...nodes.map((n) => `update ${dom(n)}`), ...nodes.map((n) => `update ${dom(n)}-nixos`)].sort());
        // The deployments' own account, in order: each VM restarts (once) and
        // its node switches before the next node's VM restarts.
        const lines = u.diagnostics
            .map((d) => d.message)
            .filter((m) => /: restarting for|: running again with|^\[(master|worker-\d)\] now running /.test(m))
            .map((m) => m.replace(/^.*libvirt domain "([^"]+)": (restarting|running again).*$/s, "$1 $2").replace(/^\[(master|worker-\d)\] now running .*$/s, "$1 switched"));
        expect(lines).toEqual(nodes.flatMap((n) => [`${dom(n)} restarting`, `${dom(n)} running again`, `${n} switched`]));
        const said = u.diagnostics.map((d) => d.message).join("\n");
        for (const n of nodes) expect(said).toContain(`libvirt domain "${dom(n)}": restarting for kernel command line "console=ttyS0" -> "${cmdline}", console log ${oldLog(n)} -> ${newLog(n)} (shutdown, up to`);

        expect(await uuids(nodes)).toEqual(before);
        for (const n of nodes) {
            expect(await virshOut(["domid", dom(n)])).not.toBe(ids[n]);
            expect(await onGuest(n, "cat /proc/cmdline")).toContain("nixspark_e2e=2");
            // The new log holds this one boot, with the new command line and the guest's own lines.
            const text = fs.readFileSync(newLog(n), "utf8");
            expect(text).toContain(`Kernel command line: ${cmdline}`);
            expect(text).toContain("test-guest: ");
            expect(text.match(/Linux version /g)).toHaveLength(1);
        }
        // Nothing left pending: not on the Domains (no "restart by hand"), not on the deployments.
        const state = (await cli.exportState()).resources as { type: string; urn: string; outputs?: Record<string, unknown> }[];
        const outs = (suffix: string) => nodes.map((n) => state.find((r) => r.urn.endsWith(`::${dom(n)}${suffix}`))?.outputs ?? {});
        expect(outs("").map((o) => [o.consoleLog, o.cmdline, o.pendingRestart])).toEqual(nodes.map((n) => [newLog(n), cmdline, false]));
        expect(outs("-nixos").map((o) => o.vmPending ?? [])).toEqual([[], [], []]);
        expect(changed(await timed("preview (after restarts)", () => cli.preview()))).toEqual([]);
    });

    // Issue 17: the shared data directory added to the running stack (preview
    // only; the bench test boots a guest that mounts it).
    step("c3. adding the shared data directory (nixspark:data) to the running stack: preview shows updates only, every VM restarting in rollout order, no replace", async () => {
        const nodes = ["master", "worker-1", "worker-2"];
        const dataDir = path.join(bench.dir, "spark-data");
        fs.mkdirSync(dataDir, { recursive: true });
        const current = config(stack, 2, imageB, { workers: { diskGiB: 2, memoryMiB: 384 }, rollout: { maxParallel: 1, canary: true }, consoleLogDir: path.join(bench.dir, "console-b"), cmdline: "console=ttyS0 nixspark_e2e=2" });
        cli.writeStackConfig({ ...current, data: { path: dataDir } });
        try {
            const p = await timed("preview (data)", () => cli.preview());
            expect(stepList(changed(p))).toEqual([...nodes.map((n) => `update ${dom(n)}`), ...nodes.map((n) => `update ${dom(n)}-nixos`)].sort());
            for (const n of nodes) {
                const raw = (p.json.steps ?? []).find((x: any) => String(x.urn).endsWith(`::${dom(n)}`) && x.op === "update");
                expect(raw?.newState?.inputs?.restartRequired).toBe(
                    `shared directory (none) -> ${dataDir}, shared directory tag (none) -> nixspark-data: the VM restarts (shutdown, then start), in rollout order, by its NixOS deployment before it switches (deploy.rollout)`,
                );
            }
            expect(p.diagnostics.map((d) => d.message).join("\n")).not.toMatch(/warning: \[|VM (is|will be) replaced|decommission/);
        } finally {
            cli.writeStackConfig(current);
        }
    });

    step("e. a second stack with default network settings on the same host: both up; destroying it leaves the first running", async () => {
        expect(defaultCidr(other)).not.toBe(defaultCidr(stack));
        otherCli = new PulumiCli({ ...cli.opts, stack: other });
        await otherCli.stackInit();
        otherCli.writeStackConfig(config(other, 0, imageA));
        live.add(otherCli);
        await timed("up (second stack)", () => otherCli!.up());
        expect(await onGuest("master", "hostname", other)).toBe(dom("master", other));
        const running = (await virshOut(["list", "--state-running", "--name"])).split("\n").map((l) => l.trim()).filter(Boolean).sort();
        expect(running).toEqual([dom("master"), dom("worker-1"), dom("worker-2"), dom("master", other)].sort());

        await timed("destroy (second stack)", () => otherCli!.destroy());
        live.delete(otherCli);
        await otherCli.stackRm();
        const after = (await virshOut(["list", "--all", "--name"])).split("\n").map((l) => l.trim()).filter(Boolean).sort();
        expect(after).toEqual([dom("master"), dom("worker-1"), dom("worker-2")].sort());
        expect((await virshOut(["net-list", "--all", "--name"])).split("\n").map((l) => l.trim()).filter(Boolean)).toEqual([`${stack}-net`]);
        expect(fs.existsSync(poolDir(other)) ? fs.readdirSync(poolDir(other)) : []).toEqual([]);
        expect(await onGuest("worker-1", "hostname")).toBe(dom("worker-1"));
    });

    step("d. a simulated host reboot: refresh keeps everything and says what is stopped; up brings it back at the same addresses; destroy leaves nothing", async () => {
        for (const n of ["master", "worker-1", "worker-2"]) await bench.virsh(["destroy", dom(n)]);
        await bench.virsh(["net-destroy", `${stack}-net`]);
        await bench.virsh(["pool-destroy", `${stack}-pool`]);
        const urns = (await cli.exportState()).resources!.map((r: { urn: string }) => r.urn).sort();

        const r = await timed("refresh (after reboot)", () => cli.refresh());
        expect(r.summary.delete ?? 0).toBe(0);
        expect((await cli.exportState()).resources!.map((x: { urn: string }) => x.urn).sort()).toEqual(urns);
        const said = r.diagnostics.map((d) => d.message).join("\n");
        for (const n of ["master", "worker-1", "worker-2"]) expect(said).toContain(`libvirt domain "${dom(n)}" is "shut off"`);
        expect(said).toContain(`libvirt network "${stack}-net" is not running`);
        expect(said).toMatch(new RegExp(`libvirt storage pool "${stack}-pool" is (inactive|not running)`));

        await timed("up (after reboot)", () => cli.up());
        for (const n of ["master", "worker-1", "worker-2"]) expect(await onGuest(n, "ip -4 -o addr show dev eth0 | grep -o \"inet [0-9.]*\"")).toBe(`inet ${ipOf(n)}`);
        expect(await uuids(["master", "worker-1", "worker-2"])).toEqual(before);

        await timed("destroy", () => cli.destroy());
        live.delete(cli);
        const list = async (args: string[]) => (await virshOut(args)).split("\n").map((l) => l.trim()).filter(Boolean);
        expect({
            domains: await list(["list", "--all", "--name"]),
            networks: await list(["net-list", "--all", "--name"]),
            pools: await list(["pool-list", "--all", "--name"]),
            poolDir: fs.existsSync(poolDir()) ? fs.readdirSync(poolDir()) : [],
            retired: fs.existsSync(path.join(stateDir(), "retired-base-volumes")) ? fs.readdirSync(path.join(stateDir(), "retired-base-volumes")) : [],
            lock: fs.existsSync(path.join(stateDir(), "vm-restart.lock")),
        }).toEqual({ domains: [], networks: [], pools: [], poolDir: [], retired: [], lock: false });
    });
});
