// Target "hosts" through the real engine (issue 19, must-shows 1 and 3):
// three stand-in NixOS machines, each a real sshd in a network namespace of
// its own (the deployment tests' fake targets, tests/helpers/sshTarget.ts),
// deployed by the real Pulumi CLI with a local backend and the program's own
// Nix evaluation of the real nix/flake.nix against the stand-in nixpkgs.
//   1. preview: exactly three deployments, the gate and the secret, nothing
//      of libvirt; the machine trusted on first use is said loudly;
//   2. up: the machines switch in rollout order (master, canary, the rest),
//      each to the system of its own module plus its role, evaluated here;
//   3. each role system imports the machine's own module (its disk, boot
//      loader, host name) and the role, never the VM modules; the system
//      without the role is the module alone;
//   4. a Spark setting updates all three;
//   5. removing a machine from the list switches it to its configuration
//      without the role (its worker is decommissioned first when the gate is
//      on; these machines run no Spark, so tests/providers/hostsMachine.test.ts
//      shows that order against a real sshd);
//   6. a machine whose host key is not the fingerprint given is refused
//      before anything is switched, naming the machine and both fingerprints.
// The machines run no Spark JVM: the gate is in the preview only, and `up`
// runs with nixspark:health.enabled false, as the libvirt stories' tiny guests do.
import * as fs from "node:fs";
import * as path from "node:path";
import { execFileSync } from "node:child_process";
import { SshTargetEnv } from "../helpers/sshTarget";
import { installPulumi, PulumiCli } from "../helpers/pulumiCli";
import { storyLog } from "../helpers/e2eStory";
import { createE2eProject, E2eProject, randomStackName } from "../fixtures/e2e-project";
import { REPO } from "../helpers/pulumiCli";

jest.setTimeout(10 * 60_000);

const stack = randomStackName("hst");
const NAMES = ["lab1", "lab2", "lab3"] as const;
const REBUILD = path.join(REPO, "tests", "fixtures", "hosts-nixos-rebuild");
const WRONG = "SHA256:" + "W".repeat(43);

let project: E2eProject;
let cli: PulumiCli | undefined;
const machines: SshTargetEnv[] = [];
const log = storyLog(stack);
const { say, timed } = log;

const fingerprint = (m: SshTargetEnv) => execFileSync("ssh-keygen", ["-l", "-E", "sha256", "-f", path.join(m.dir, "host_ed25519.pub")], { encoding: "utf8" }).split(" ")[1];
const machine = (name: string) => machines[NAMES.indexOf(name as (typeof NAMES)[number])];

/** The stand-in hardware module and configuration of one machine, in the flake copy (what a user copies from /etc/nixos). */
function writeMachineModule(name: string): void {
    const dir = path.join(project.flakeDir, "machines", name);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(
        path.join(dir, "hardware-configuration.nix"),
        `# Stand-in for nixos-generate-config's output on ${name}.\n{ ... }:\n{\n  fileSystems."/" = {\n    device = "/dev/disk/by-uuid/${name}-root";\n    fsType = "ext4";\n  };\n  boot.loader.grub.device = "/dev/disk/by-id/${name}-disk";\n}\n`,
    );
    fs.writeFileSync(path.join(dir, "configuration.nix"), `{ ... }:\n{\n  imports = [ ./hardware-configuration.nix ];\n  networking.hostName = "${name}";\n  system.stateVersion = "24.11";\n}\n`);
}

function hostsConfig(names: readonly string[], o: { health?: boolean; settings?: Record<string, string>; hostKey?: Record<string, string> } = {}): Record<string, unknown> {
    const m0 = machines[0];
    return {
        target: "hosts",
        hosts: names.map((name) => {
            const m = machine(name);
            return {
                name,
                address: m.host,
                role: name === "lab1" ? "master" : "worker",
                sshUser: "root",
                sshPort: m.port,
                ...(name === "lab3" ? { cores: 2, memoryMiB: 1024 } : {}),
                module: `machines/${name}/configuration.nix`,
                hostKey: o.hostKey?.[name] ?? (name === "lab2" ? "first-use" : fingerprint(m)),
            };
        }),
        ssh: { user: "root", privateKeyPath: m0.identityFile, publicKey: fs.readFileSync(`${m0.identityFile}.pub`, "utf8").trim() },
        spark: { settings: o.settings ?? {}, pythonPackages: [] },
        deploy: { flake: project.flakeRef, rebuildCommand: REBUILD, useSudo: false, sshWaitSeconds: 60, switchTimeoutSeconds: 300 },
        health: { enabled: o.health ?? false },
    };
}

/** `nix eval --json` of an attribute of the flake copy, as the program evaluates it. */
function evalJson(attr: string, flake = project.flakeRef): unknown {
    const out = execFileSync("nix", ["--extra-experimental-features", "nix-command flakes", "eval", "--json", `${flake}#${attr}`], {
        encoding: "utf8",
        env: { ...process.env, NIX_CONFIG: project.nixConfig },
        timeout: 300_000,
    });
    return JSON.parse(out);
}
const systemOf = (configuration: string) => evalJson(`nixosConfigurations."${configuration}".config.system.build.toplevel.outPath`) as string;

/** The stand-in's switches since `since` (seconds), as [machine, configuration], in the order they ran. */
function switchesSince(since: number): [string, string][] {
    return machines[0]
        .standinCalls()
        .filter((c) => c.argv[0] === "switch" && !c.argv.includes("--rollback") && c.time >= since)
        .sort((a, b) => a.time - b.time)
        .map((c) => {
            const target = c.argv[c.argv.indexOf("--target-host") + 1];
            const m = machines.find((x) => target.endsWith(`@${x.host}`))!;
            return [NAMES[machines.indexOf(m)], c.argv[c.argv.indexOf("--flake") + 1].split("#")[1]];
        });
}

beforeAll(async () => {
    await installPulumi();
    project = createE2eProject("nxs-hosts-");
    for (const name of NAMES) {
        machines.push(await SshTargetEnv.create());
        writeMachineModule(name);
    }
    // One deploy key for the stack: every machine lets the first machine's test key in.
    const pub0 = fs.readFileSync(`${machines[0].identityFile}.pub`, "utf8").trim();
    for (const m of machines.slice(1)) {
        const file = path.join(m.dir, "authorized_keys");
        fs.writeFileSync(file, fs.readFileSync(file, "utf8").replace(fs.readFileSync(`${m.identityFile}.pub`, "utf8").trim(), pub0), { mode: 0o600 });
    }
    cli = new PulumiCli({
        cwd: project.dir,
        stack,
        backendDir: project.backendDir,
        env: {
            NIX_CONFIG: project.nixConfig,
            NIXSPARK_STANDIN_LOG: machines[0].standinLog,
            NIXSPARK_STANDIN_SYSTEMS: machines[0].systemsDir,
            NIXSPARK_STANDIN_FLAVOUR: "legacy",
        },
    });
    await cli.stackInit();
}, 10 * 60_000);

afterAll(async () => {
    // Nothing outside this test's own directories and namespaces: the state is
    // in the project copy's file backend, and the machines go with their
    // namespaces. (A destroy would only switch lab1 and lab2 back to their
    // modules, which step 5 already shows for lab3.)
    try {
        for (const m of machines) await m.cleanup();
    } finally {
        project?.remove();
        say(`timings: ${JSON.stringify(log.timings)}`);
    }
}, 10 * 60_000);

test("1. preview: three deployments, the gate and the secret, nothing of libvirt; first-use said loudly", async () => {
    cli!.writeStackConfig(hostsConfig(NAMES, { health: true }));
    const preview = await timed("preview", () => cli!.preview({ timeoutMs: 5 * 60_000 }));
    expect(preview.steps.filter((s) => s.op === "create").map((s) => s.kind).sort()).toEqual(["ClusterSecret", "HostsCluster", "NixosDeployment", "NixosDeployment", "NixosDeployment", "SparkHealth", "Stack"]);
    expect(preview.steps.filter((s) => s.kind === "NixosDeployment").map((s) => s.name).sort()).toEqual(NAMES.map((n) => `${stack}-${n}-nixos`));
    const warnings = preview.diagnostics.filter((d) => d.severity === "warning").map((d) => d.message);
    expect(warnings.some((w) => w.includes(`machine lab2: its SSH host key is TRUSTED ON FIRST USE (nixspark:hosts[1].hostKey "first-use")`))).toBe(true);
    expect(warnings.some((w) => /machine lab[13]:/.test(w))).toBe(false);
});

test("2-3. up switches the machines in rollout order, each to its own module plus its role", async () => {
    cli!.writeStackConfig(hostsConfig(NAMES));
    const since = Date.now() / 1000;
    await timed("up", () => cli!.up({ timeoutMs: 8 * 60_000 }));
    expect(switchesSince(since)).toEqual([
        ["lab1", `${stack}-host-lab1`],
        ["lab2", `${stack}-host-lab2`],
        ["lab3", `${stack}-host-lab3`],
    ]);
    for (const name of NAMES) expect(machine(name).currentSystem()).toBe(systemOf(`${stack}-host-${name}`));
    // Every role system is the machine's own module (disk, boot loader, host name) plus its role, and no VM module.
    for (const name of NAMES) {
        const cfg = `nixosConfigurations."${stack}-host-${name}".config`;
        expect(evalJson(`${cfg}.fileSystems."/".device`)).toBe(`/dev/disk/by-uuid/${name}-root`);
        expect(evalJson(`${cfg}.boot.loader.grub.device`)).toBe(`/dev/disk/by-id/${name}-disk`);
        expect(evalJson(`${cfg}.networking.hostName`)).toBe(name);
        expect(evalJson(`${cfg}.services.spark.master.enable`)).toBe(name === "lab1");
        expect(evalJson(`${cfg}.services.spark.worker.enable`)).toBe(name !== "lab1");
        // guest.nix's unit (a VM prints its host keys to its serial console) is not there.
        expect(evalJson(`${cfg}.systemd.services`)).not.toHaveProperty("nixspark-host-keys");
    }
    // lab3 offers 2 cores and 1024 MiB; lab2 leaves both to Spark ("auto").
    expect(evalJson(`nixosConfigurations."${stack}-host-lab3".config.services.spark.worker.extraEnvironment`)).toMatchObject({ SPARK_WORKER_CORES: "2", SPARK_WORKER_MEMORY: "1024m" });
    expect(evalJson(`nixosConfigurations."${stack}-host-lab2".config.services.spark.worker.extraEnvironment`)).not.toHaveProperty("SPARK_WORKER_CORES");
    const outputs = await cli!.outputs();
    expect(outputs.libvirtUri).toBeUndefined();
    expect(outputs.nodes.map((n: Record<string, unknown>) => [n.name, n.role, n.ip, n.libvirtName])).toEqual(NAMES.map((n) => [n, n === "lab1" ? "master" : "worker", machine(n).host, undefined]));
});

test("4. a Spark setting updates all three machines", async () => {
    const before = NAMES.map((n) => machine(n).currentSystem());
    cli!.writeStackConfig(hostsConfig(NAMES, { settings: { "spark.executor.cores": "1" } }));
    const up = await timed("up setting", () => cli!.up({ timeoutMs: 8 * 60_000 }));
    expect(up.steps.filter((s) => s.op !== "same").map((s) => `${s.op} ${s.name}`).sort()).toEqual(NAMES.map((n) => `update ${stack}-${n}-nixos`));
    NAMES.forEach((n, i) => {
        expect(machine(n).currentSystem()).not.toBe(before[i]);
        expect(machine(n).currentSystem()).toBe(systemOf(`${stack}-host-${n}`));
    });
});

test("5. a machine removed from the list is switched to its configuration without the role; the others only when their firewall block shrinks", async () => {
    // What lab3's deployment recorded: the flake snapshot it was evaluated from and its system without the role.
    const state = await cli!.exportState();
    const lab3 = state.resources!.find((r) => r.type === "pulumi-nodejs:dynamic/nixspark:NixosDeployment" && r.outputs?.node === "lab3");
    const recorded = lab3.outputs as { flake: string; release: { configuration: string; expectedSystem: string } };
    expect(recorded.release.configuration).toBe(`${stack}-host-lab3-released`);
    cli!.writeStackConfig(hostsConfig(["lab1", "lab2"], { settings: { "spark.executor.cores": "1" } }));
    const since = Date.now() / 1000;
    const up = await timed("up removal", () => cli!.up({ timeoutMs: 8 * 60_000 }));
    // lab1 and lab2 switch too exactly when the block of addresses their firewall opens Spark to
    // (lowest to highest listed machine, nix/lib/params.nix) shrinks: when lab3 was at one end of it.
    const ip = (m: SshTargetEnv) => m.host.split(".").reduce((a, o) => a * 256 + Number(o), 0);
    const atEdge = machines.every((m) => ip(machine("lab3")) <= ip(m)) || machines.every((m) => ip(machine("lab3")) >= ip(m));
    expect(up.steps.filter((s) => s.op !== "same").map((s) => `${s.op} ${s.name}`).sort()).toEqual([
        `delete ${stack}-lab3-nixos`,
        ...(atEdge ? [`update ${stack}-lab1-nixos`, `update ${stack}-lab2-nixos`] : []),
    ]);
    expect(switchesSince(since).filter(([m]) => m === "lab3")).toEqual([["lab3", `${stack}-host-lab3-released`]]);
    expect(machine("lab3").currentSystem()).toBe(recorded.release.expectedSystem);
    // The module alone: the machine's disk and name stay, the role and the deploy user's rules go.
    // (Evaluated from the snapshot the deployment recorded: lab3 is no longer in the stack's settings.)
    const cfg = `nixosConfigurations."${stack}-host-lab3-released".config`;
    expect(evalJson(`${cfg}.system.build.toplevel.outPath`, recorded.flake)).toBe(recorded.release.expectedSystem);
    expect(evalJson(`${cfg}.fileSystems."/".device`, recorded.flake)).toBe("/dev/disk/by-uuid/lab3-root");
    expect(evalJson(`${cfg}.services.spark.worker.enable`, recorded.flake)).toBe(false);
});

test("6. a machine whose host key is not the fingerprint given is refused before anything is switched, naming it and both fingerprints", async () => {
    cli!.writeStackConfig(hostsConfig(NAMES, { settings: { "spark.executor.cores": "1" }, hostKey: { lab3: WRONG } }));
    const released = machine("lab3").currentSystem();
    const callsBefore = machine("lab3").remoteCalls().length;
    const since = Date.now() / 1000;
    const up = await timed("up wrong key", () => cli!.up({ timeoutMs: 8 * 60_000, allowFailure: true }));
    expect(up.code).not.toBe(0);
    const text = `${up.stderr}\n${up.diagnostics.map((d) => d.message).join("\n")}`;
    expect(text).toContain(`host key mismatch for machine lab3 at root@${machine("lab3").host} port ${machine("lab3").port}: nixspark:hosts gives ${WRONG}, but the machine answering presents ${fingerprint(machine("lab3"))}.`);
    // Nothing reached lab3 but the key check (lab1 and lab2 may switch first, when lab3 widens their firewall's block again).
    expect(switchesSince(since).filter(([m]) => m === "lab3")).toEqual([]);
    expect(machine("lab3").remoteCalls()).toHaveLength(callsBefore);
    expect(machine("lab3").currentSystem()).toBe(released);
});
