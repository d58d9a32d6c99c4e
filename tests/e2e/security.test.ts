// Security and the package preview through the real engine on the libvirt
// bench (a master and one worker, tiny guests under TCG):
//   1. `pulumi up` with host keys checked against the serial console (the
//      test guest prints its fingerprint at boot, as a NixOS node does): each
//      node's key is pinned because its console shows it;
//   2. the cluster secret reached every node (root-only file outside the
//      store) and appears nowhere else in plain text: not in `pulumi stack
//      export`, the outputs, the preview/up output, the stack file or the
//      flake directory; a secret Spark setting set with `--secret` neither;
//   3. a job Python package added to the stack: `pulumi preview` says, per
//      node, what the switch will move (+ scipy 1.14.1), before anything is
//      built; `up` applies it;
//   3b. a nixpkgs bump (a copy of the stand-in nixpkgs with Spark 3.5.3 and
//      scipy 1.15.0, locked as the flake's input): preview names each
//      version change on each node (spark 3.5.1 → 3.5.3); then undone;
//   4. another machine (a second guest with a host key of its own) claims the
//      address of a new worker, whose own network is cut once it printed its
//      key: the deployment refuses, naming both fingerprints, pins nothing.
// The Pulumi CLI runs inside the bench's network namespace.
import * as fs from "node:fs";
import * as path from "node:path";
import { run } from "../../providers/run";
import { Bench, startBench, waitFor } from "../helpers/libvirtBench";
import { installPulumi, OperationResult, PulumiCli } from "../helpers/pulumiCli";
import { storyLog, tearDownStory } from "../helpers/e2eStory";
import { createE2eProject, E2eProject, randomCidr, randomStackName, STUB_NIXPKGS, tinyStackConfig } from "../fixtures/e2e-project";

jest.setTimeout(10 * 60_000);

const stack = randomStackName("sec");
const cidr = randomCidr();
const net = cidr.replace(/\.0\/24$/, "");
const SETTING_SECRET = "spark-ssl-password-e2e-7f3a9c";

let bench: Bench;
let project: E2eProject;
let cli: PulumiCli;
let mayHaveResources = false;
/** Everything the CLI printed in this story. */
const printed: string[] = [];

const storyLogged = storyLog(stack);
const { say } = storyLogged;

/**
 * What a user reads of a --json operation: the diagnostics (the providers'
 * lines) except debug ones. Debug diagnostics exist only when asked for
 * (--debug, -v); the Node SDK prints every resource's outputs there, secret
 * ones included (docs/security.md says so).
 */
const textOf = (r: OperationResult): string => `${r.stderr}\n${r.diagnostics.filter((d) => d.severity !== "debug").map((d) => d.message).join("\n")}`;
/** A plain (human) pulumi command: everything it printed is what a user reads. */
async function plain(args: string[]): Promise<string> {
    const r = await cli.run(args, { timeoutMs: 8 * 60_000, allowFailure: true });
    const text = `${r.stdout}\n${r.stderr}`;
    printed.push(text);
    if (r.code !== 0) throw new Error(`pulumi ${args.join(" ")} exited ${r.code}:\n${text.slice(-4000)}`);
    return text;
}

function config(pythonPackages: string[]): Record<string, unknown> {
    const base = tinyStackConfig(bench, project, { workers: 1, cidr });
    return {
        ...base,
        consoleLogDir: path.join(bench.dir, "log", "qemu"),
        ssh: { ...(base.ssh as Record<string, unknown>), hostKeys: "console" },
        spark: { ...(base.spark as Record<string, unknown>), pythonPackages },
    };
}

beforeAll(async () => {
    await installPulumi();
    bench = await startBench({ log: say });
    project = createE2eProject("nxs-sec-");
    cli = new PulumiCli({ cwd: project.dir, stack, backendDir: project.backendDir, netns: bench.netns, env: { NIX_CONFIG: project.nixConfig } });
    await cli.stackInit();
    cli.writeStackConfig(config([]));
    await cli.run(["config", "set", "--secret", "--path", `nixspark:sparkSecrets["spark.ssl.keyPassword"]`, SETTING_SECRET], { timeoutMs: 60_000 });
}, 30 * 60_000);

afterAll(() => tearDownStory({ clis: cli && mayHaveResources ? [cli] : [], bench, project, log: storyLogged }), 10 * 60_000);

const ipOf = (node: "master" | "worker-1") => `${net}.${node === "master" ? 10 : 11}`;

/** Every file under dir, as text (binary files skipped), for grepping. */
function textsUnder(dir: string): { file: string; text: string }[] {
    const out: { file: string; text: string }[] = [];
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isSymbolicLink()) continue;
        if (e.isDirectory()) out.push(...textsUnder(p));
        else if (e.isFile() && fs.statSync(p).size < 5_000_000) out.push({ file: p, text: fs.readFileSync(p, "latin1") });
    }
    return out;
}

describe(`security on the libvirt bench (stack ${stack})`, () => {
    let secret = "";

    test("1. up: each new VM's host key is pinned because its serial console shows it", async () => {
        mayHaveResources = true;
        const all = await plain(["up", "--yes", "--skip-preview"]);
        for (const node of ["master", "worker-1"]) {
            expect(all).toMatch(new RegExp(`\\[${node}\\] host key of root@${ipOf(node as "master").replace(/\./g, "\\.")} port 22 matches the VM's console \\(SHA256:[A-Za-z0-9+/]+\\); pinned`));
        }
        const consoleLog = fs.readFileSync(path.join(bench.dir, "log", "qemu", `${stack}-master-console.log`), "utf8");
        expect(consoleLog).toMatch(/nixspark-host-keys: SHA256:/);
    });

    test("2. the secret is on every node, root-only and outside the store, and nowhere else in plain text", async () => {
        for (const node of ["master", "worker-1"] as const) {
            const r = await bench.ssh(ipOf(node), ["cat", "/var/lib/nixspark/spark-secret"], { timeoutMs: 30_000 });
            const lines = r.stdout.split("\n").filter(Boolean);
            const value = /^spark\.authenticate\.secret ([A-Za-z0-9_-]{43})$/.exec(lines[0] ?? "")?.[1];
            expect(value).toBeDefined();
            if (secret) expect(value).toBe(secret);
            secret = value!;
            expect(lines).toContain(`spark.ssl.keyPassword ${SETTING_SECRET}`);
            const mode = await bench.ssh(ipOf(node), ["stat", "-c", "%a:%u:%g", "/var/lib/nixspark/spark-secret"], { timeoutMs: 30_000 });
            expect(mode.stdout.trim()).toBe("400:0:0");
        }
        await plain(["preview"]);
        const exported = (await cli.run(["stack", "export"], { timeoutMs: 60_000 })).stdout;
        const outputs = JSON.stringify(await cli.outputs());
        expect(exported).toContain("ClusterSecret");
        for (const needle of [secret, SETTING_SECRET]) {
            expect(exported).not.toContain(needle);
            expect(outputs).not.toContain(needle);
            expect(printed.join("\n")).not.toContain(needle);
            for (const f of [...textsUnder(project.flakeDir), ...textsUnder(path.join(project.dir, ".nixspark"))]) {
                if (f.text.includes(needle)) throw new Error(`${f.file} holds a secret in plain text`);
            }
        }
        // The stack file holds the setting encrypted, the flake's stack file not at all.
        expect(fs.readFileSync(path.join(project.dir, `Pulumi.${stack}.yaml`), "utf8")).toMatch(/secure:/);
        expect(fs.statSync(path.join(project.flakeDir, "stacks", `${stack}.json`)).mode & 0o777).toBe(0o600);
    });

    test("3. a new job package: preview names what each node's switch moves, before anything is built; up applies it", async () => {
        cli.writeStackConfig({ ...config(["scipy"]), sparkSecrets: undefined });
        await cli.run(["config", "set", "--secret", "--path", `nixspark:sparkSecrets["spark.ssl.keyPassword"]`, SETTING_SECRET], { timeoutMs: 60_000 });
        const preview = await cli.preview({ timeoutMs: 5 * 60_000 });
        expect(preview.code).toBe(0);
        const text = textOf(preview);
        printed.push(text);
        expect(await plain(["preview"])).toContain("[worker-1] will switch: + scipy 1.14.1");
        expect(text).toContain("[master] will switch: + scipy 1.14.1");
        expect(text).toContain("[worker-1] will switch: + scipy 1.14.1");
        const updates = preview.steps.filter((s) => s.op !== "same").map((s) => `${s.op} ${s.kind}`).sort();
        expect(updates).toEqual(["update NixosDeployment", "update NixosDeployment"]);
        await plain(["up", "--yes", "--skip-preview"]);
        expect(printed.join("\n")).not.toContain(secret);
        expect(printed.join("\n")).not.toContain(SETTING_SECRET);
    });

    test("3b. a nixpkgs bump that moves Spark and scipy: preview names each version change on each node, before anything is built", async () => {
        // The bump: a copy of the stand-in nixpkgs with new versions, locked as the flake's nixpkgs.
        const bumped = path.join(project.root, "nixpkgs-bumped");
        fs.cpSync(STUB_NIXPKGS, bumped, { recursive: true });
        const pkgsFile = path.join(bumped, "pkgs", "default.nix");
        const before = fs.readFileSync(pkgsFile, "utf8");
        const after = before.replace('scipy = pythonPackage "scipy" "1.14.1";', 'scipy = pythonPackage "scipy" "1.15.0";').replace(/(pname = "spark";\s*version = )"3\.5\.1";/, '$1"3.5.3";');
        expect(after.match(/1\.15\.0|3\.5\.3/g)?.length).toBeGreaterThanOrEqual(2);
        fs.writeFileSync(pkgsFile, after);
        const flakeNix = path.join(project.flakeDir, "flake.nix");
        const lockFile = path.join(project.flakeDir, "flake.lock");
        const saved = { flake: fs.readFileSync(flakeNix, "utf8"), lock: fs.readFileSync(lockFile, "utf8") };
        try {
            fs.writeFileSync(flakeNix, saved.flake.replace(`path:${STUB_NIXPKGS}`, `path:${bumped}`));
            await run(["nix", "flake", "lock", `path:${project.flakeDir}`], { env: { ...process.env, NIX_CONFIG: project.nixConfig }, timeoutMs: 120_000 });
            const preview = await cli.preview({ timeoutMs: 5 * 60_000 });
            expect(preview.code).toBe(0);
            const text = textOf(preview);
            printed.push(text);
            for (const node of ["master", "worker-1"]) {
                expect(text).toContain(`[${node}] will switch: spark 3.5.1 → 3.5.3`);
                expect(text).toContain(`[${node}] will switch: scipy 1.14.1 → 1.15.0`);
            }
            expect(preview.steps.filter((s) => s.op !== "same").map((s) => `${s.op} ${s.kind}`).sort()).toEqual(["update NixosDeployment", "update NixosDeployment"]);
        } finally {
            // Back to the nixpkgs the stack runs: the next step must not apply the bump.
            fs.writeFileSync(flakeNix, saved.flake);
            fs.writeFileSync(lockFile, saved.lock);
        }
    });

    test("4. a second guest answering at a new worker's address with another key is refused with both fingerprints", async () => {
        const logDir = path.join(bench.dir, "log", "qemu");
        const marker = (file: string) => {
            const m = fs.existsSync(file) ? /nixspark-host-keys: (SHA256:[A-Za-z0-9+/]+)/.exec(fs.readFileSync(file, "utf8")) : null;
            return m ? m[1] : undefined;
        };
        // The impostor: the test guest built again, so with a host key of its own,
        // claiming worker-2's address statically on the stack's network.
        const other = path.join(bench.dir, "impostor-guest");
        await run(["bash", path.join(__dirname, "../../scripts/build-test-guest")], { env: { ...process.env, TEST_GUEST_DIR: other }, timeoutMs: 600_000 });
        const workerIp = `${net}.12`;
        const impostorLog = path.join(logDir, `${stack}-impostor-console.log`);
        const xml = path.join(bench.dir, "impostor.xml");
        fs.writeFileSync(
            xml,
            `<domain type='qemu'><name>${stack}-impostor</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><kernel>${path.join(other, "vmlinuz")}</kernel><initrd>${path.join(other, "initrd.img")}</initrd>
    <cmdline>console=ttyS0 nixspark_test.ip=${workerIp}</cmdline></os>
  <devices><interface type='network'><source network='${stack}-net'/><model type='virtio'/></interface>
    <serial type='pty'><log file='${impostorLog}' append='off'/><target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console></devices>
</domain>`,
        );
        await bench.virsh(["create", xml]);
        try {
            const impostorFp = await waitFor("the impostor's host key on its console", async () => marker(impostorLog), { timeoutMs: 120_000 });
            await waitFor(`the impostor answering at ${workerIp}`, async () => ((await bench.exec(["wget", "-qO-", "-T", "3", `http://${workerIp}/`], { allowFailure: true, timeoutMs: 10_000 })).code === 0 ? true : undefined), { timeoutMs: 120_000 });

            // Scale to two workers; cut worker-2's link as soon as its console shows its key
            // (before its DHCP lease), so only the impostor ever answers at its address.
            const cfg = config(["scipy"]);
            cli.writeStackConfig({ ...cfg, workers: { ...(cfg.workers as Record<string, unknown>), count: 2 }, deploy: { ...(cfg.deploy as Record<string, unknown>), sshWaitSeconds: 40 } });
            await cli.run(["config", "set", "--secret", "--path", `nixspark:sparkSecrets["spark.ssl.keyPassword"]`, SETTING_SECRET], { timeoutMs: 60_000 });
            const workerLog = path.join(logDir, `${stack}-worker-2-console.log`);
            const upDone = cli.run(["up", "--yes", "--skip-preview"], { timeoutMs: 8 * 60_000, allowFailure: true });
            const realFp = await waitFor("worker-2 printing its host key", async () => marker(workerLog), { timeoutMs: 240_000, intervalMs: 100 });
            const mac = (await bench.virsh(["domiflist", `${stack}-worker-2`])).stdout.match(/([0-9a-f]{2}:){5}[0-9a-f]{2}/)![0];
            await bench.virsh(["domif-setlink", `${stack}-worker-2`, mac, "down"]);
            const up = await upDone;
            const text = `${up.stdout}\n${up.stderr}`;
            printed.push(text);
            expect(up.code).not.toBe(0);
            expect(realFp).not.toBe(impostorFp);
            expect(text).toContain(`host key mismatch at root@${workerIp} port 22: the VM printed ${realFp} on its serial console`);
            expect(text).toContain(`presents ${impostorFp}`);
            expect(text).toContain("nothing was pinned or deployed");
            const known = fs.readFileSync(path.join(project.dir, ".nixspark", stack, "known_hosts"), "utf8");
            expect(known).not.toContain(`${workerIp} `);
        } finally {
            await bench.virsh(["destroy", `${stack}-impostor`], { allowFailure: true });
        }
    });
});
