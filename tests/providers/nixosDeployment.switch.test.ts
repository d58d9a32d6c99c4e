// NixosDeployment against a real sshd in a private network namespace and the
// recording nixos-rebuild stand-in on PATH (tests/helpers/sshTarget.ts).
//
// The story: a node is created and switched (exact argv and NIX_SSHOPTS for
// both nixos-rebuild generations, with and without sudo and build host), the
// switch is verified on the node, a configuration change is an in-place
// update, failures roll the node back and say why, and a refresh notices a
// node that someone switched by hand.
import { nixSshOpts } from "../../providers/ssh";
import { NixosDeploymentInputs, NixosDeploymentOutputs, nixosDeploymentProvider } from "../../providers/nixosDeployment";
import { roundTrip } from "../helpers/serialize";
import { createDeployment, SshTargetEnv } from "../helpers/sshTarget";

jest.setTimeout(60_000);

const BASE = "/nix/store/00000000000000000000000000000000-nixos-system-base-image";
const SYS_A = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-dev-worker-24.11";
const SYS_B = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-dev-worker-24.11";
const SYS_C = "/nix/store/cccccccccccccccccccccccccccccccc-nixos-system-dev-worker-24.11";

let env: SshTargetEnv;
let restoreEnv: () => void = () => undefined;
let logged: string[] = [];

beforeAll(async () => {
    env = await SshTargetEnv.create();
});
afterAll(async () => {
    await env?.cleanup();
});

beforeEach(() => {
    env.resetNode(BASE);
    env.clearStandinLog();
    env.setSystem("dev-worker", SYS_A);
    logged = [];
    jest.spyOn(console, "error").mockImplementation((...args: unknown[]) => {
        logged.push(args.map(String).join(" "));
    });
});
afterEach(() => {
    restoreEnv();
    restoreEnv = () => undefined;
    jest.restoreAllMocks();
});

function inputs(over: Partial<NixosDeploymentInputs> = {}): NixosDeploymentInputs {
    return env.deploymentInputs({ expectedSystem: SYS_A, ...over });
}

const strictOpts = () => nixSshOpts({ host: env.host, user: env.user, port: env.port, identityFile: env.identityFile, knownHostsFile: env.knownHostsFile }, "strict");
const switches = () => env.switches();
const asRecord = (o: object) => o as unknown as Record<string, unknown>;

const create = createDeployment;

describe("create: exact nixos-rebuild invocation per generation", () => {
    test("legacy shell script (detected), sudo: --use-remote-sudo, NIX_SSHOPTS strict with the stack's known hosts", async () => {
        restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
        const outs = await create(inputs());

        const calls = env.standinCalls();
        expect(calls.map((c) => c.argv)).toEqual([
            ["--nixspark-flavour-probe"], // detection; the script answers "unknown option" and exits
            ["switch", "--flake", "path:./nix#dev-worker", "--target-host", `root@${env.host}`, "--use-remote-sudo"],
        ]);
        expect(calls[1].env.NIX_SSHOPTS).toBe(strictOpts());
        expect(calls[1].env.NIX_SSHOPTS).toContain(`UserKnownHostsFile=${env.knownHostsFile}`);
        expect(calls[1].env.NIX_SSHOPTS).toContain("StrictHostKeyChecking=yes");

        // The node switched, with sudo, through the real sshd.
        expect(env.currentSystem()).toBe(SYS_A);
        expect(env.profileLink()).toBe("system-2-link");
        const remote = env.remoteCalls();
        expect(remote).toContainEqual({ words: ["nix-env", "-p", "/nix/var/nix/profiles/system", "--set", SYS_A], sudo: true, env: {} });
        expect(remote).toContainEqual({ words: [`${SYS_A}/bin/switch-to-configuration`, "switch"], sudo: true, env: {} });
        // ... and the provider verified it afterwards.
        expect(remote[remote.length - 1]).toEqual({ words: ["readlink", "-f", "/run/current-system"], sudo: false, env: {} });

        // The host key pinned on first contact is recorded in the state (hostKeys).
        expect(outs).toEqual({ ...inputs(), currentSystem: SYS_A, flavourUsed: "legacy", hostKeys: [expect.stringMatching(/ ssh-ed25519 /)] });
        // Progress reached the user while it ran.
        expect(logged).toContain("[worker-1] building the system configuration...");
        expect(logged).toContain(`[worker-1] Done. The new configuration is ${SYS_A}`);
    });

    test("nixos-rebuild-ng (by name), sudo and build host: --sudo, --build-host", async () => {
        restoreEnv = env.useStandin();
        await create(inputs({ rebuildCommand: "nixos-rebuild-ng", buildHost: "builder@10.1.0.5" }));
        const calls = env.standinCalls();
        expect(calls.map((c) => [c.argv0, c.flavour, ...c.argv])).toEqual([
            // no probe: the name says ng
            ["nixos-rebuild-ng", "ng", "switch", "--flake", "path:./nix#dev-worker", "--target-host", `root@${env.host}`, "--build-host", "builder@10.1.0.5", "--sudo"],
        ]);
        expect(calls[0].env.NIX_SSHOPTS).toBe(strictOpts());
        expect(env.currentSystem()).toBe(SYS_A);
        // ng prefixes activation with sudo and passes NIXOS_INSTALL_BOOTLOADER through `env`.
        expect(env.remoteCalls()).toContainEqual({ words: [`${SYS_A}/bin/switch-to-configuration`, "switch"], sudo: true, env: { NIXOS_INSTALL_BOOTLOADER: "0" } });
    });

    test("nixos-rebuild-ng installed as plain nixos-rebuild is detected by its argparse answer", async () => {
        restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "ng" });
        const outs = await create(inputs());
        expect(env.standinCalls().map((c) => c.argv)).toEqual([
            ["--nixspark-flavour-probe"],
            ["switch", "--flake", "path:./nix#dev-worker", "--target-host", `root@${env.host}`, "--sudo"],
        ]);
        expect(outs.flavourUsed).toBe("ng");
    });

    test.each(["legacy", "ng"] as const)("%s without sudo: no privilege flag, nothing run with sudo", async (flavour) => {
        restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: flavour });
        await create(inputs({ useSudo: false, flavour }));
        expect(switches().map((c) => c.argv)).toEqual([["switch", "--flake", "path:./nix#dev-worker", "--target-host", `root@${env.host}`]]);
        expect(env.remoteCalls().every((c) => !c.sudo)).toBe(true);
        expect(env.currentSystem()).toBe(SYS_A);
    });

    test("the wrong generation's flag fails before touching the node, and says so", async () => {
        // flavour forced to legacy while the executable is ng: ng's argparse refuses --use-remote-sudo here.
        restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "ng" });
        const err = await create(inputs({ flavour: "legacy" })).then(() => undefined, (e: Error) => e);
        expect(err?.message).toMatch(/^NixosDeployment worker-1 \(root@[\d.]+\): nixos-rebuild switch failed with exit code 2/);
        expect(err?.message).toMatch(/Nothing was activated \(the system profile is still system-1-link\), so no rollback was needed/);
        expect(err?.message).toMatch(/unrecognized arguments: --use-remote-sudo/);
        expect(env.currentSystem()).toBe(BASE);
        expect(switches()).toHaveLength(1);
    });
});

describe("update and verification", () => {
    test("a new expected system is switched to in place", async () => {
        restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
        const first = await create(inputs());
        env.setSystem("dev-worker", SYS_B);
        const news = inputs({ expectedSystem: SYS_B });
        expect((await nixosDeploymentProvider.diff!("id", asRecord(first), asRecord(news))).changes).toBe(true);
        const r = await nixosDeploymentProvider.update!("id", asRecord(first), asRecord(news));
        expect(r.outs).toMatchObject({ expectedSystem: SYS_B, currentSystem: SYS_B });
        expect(env.currentSystem()).toBe(SYS_B);
        expect(env.profileLink()).toBe("system-3-link");
    });

    test("a switch that leaves the node on another system fails verification and is rolled back", async () => {
        restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
        const first = await create(inputs());
        env.setSystem("dev-worker", SYS_C); // the flake builds something else than the program evaluated
        const err = await nixosDeploymentProvider.update!("id", asRecord(first), asRecord(inputs({ expectedSystem: SYS_B }))).then(() => undefined, (e: Error) => e);
        expect(err?.message).toContain(`NixosDeployment worker-1 (root@${env.host}): after the switch the node runs ${SYS_C}, but the program expected ${SYS_B}`);
        expect(err?.message).toContain(`The node was rolled back to its previous generation and runs ${SYS_A}.`);
        expect(err?.message).toContain(`Last lines of nixos-rebuild's output:`);
        expect(err?.message).toContain(`Done. The new configuration is ${SYS_C}`);
        expect(env.currentSystem()).toBe(SYS_A);
        expect(env.profileLink()).toBe("system-2-link");
        expect(switches().map((c) => c.argv.slice(0, 3))).toEqual([
            ["switch", "--flake", "path:./nix#dev-worker"],
            ["switch", "--flake", "path:./nix#dev-worker"],
            ["switch", "--rollback", "--fast"],
        ]);
    });
});

describe("failing switches", () => {
    test("activation fails: the node is rolled back with the same flags, the error names it and carries the output", async () => {
        restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "ng" });
        const first = await create(inputs());
        env.setSystem("dev-worker", SYS_B);
        process.env.NIXSPARK_STANDIN_FAIL = "activate";
        const err = await nixosDeploymentProvider.update!("id", asRecord(first), asRecord(inputs({ expectedSystem: SYS_B }))).then(() => undefined, (e: Error) => e);

        expect(err?.message).toMatch(/^NixosDeployment worker-1 \(root@[\d.]+\): nixos-rebuild switch failed with exit code 4\. The node was rolled back/);
        expect(err?.message).toContain("warning: the following units failed: spark-worker.service");
        const rollback = switches().pop();
        expect(rollback?.argv).toEqual(["switch", "--rollback", "--fast", "--flake", "path:./nix#dev-worker", "--target-host", `root@${env.host}`, "--sudo"]);
        expect(rollback?.env.NIX_SSHOPTS).toBe(strictOpts());
        expect(env.remoteCalls()).toContainEqual({ words: ["nix-env", "--rollback", "-p", "/nix/var/nix/profiles/system"], sudo: true, env: {} });
        expect(env.currentSystem()).toBe(SYS_A);
        expect(env.profileLink()).toBe("system-2-link");
        expect(logged.some((l) => l.startsWith("[worker-1] rollback: "))).toBe(true);
    });

    test("the build fails: nothing changed on the node, so nothing is rolled back", async () => {
        restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
        const first = await create(inputs());
        process.env.NIXSPARK_STANDIN_FAIL = "build";
        const err = await nixosDeploymentProvider.update!("id", asRecord(first), asRecord(inputs({ expectedSystem: SYS_B }))).then(() => undefined, (e: Error) => e);
        expect(err?.message).toMatch(/worker-1 .*exit code 1\. Nothing was activated \(the system profile is still system-2-link\), so no rollback was needed\./);
        expect(err?.message).toMatch(/builder for .* failed/);
        expect(switches().filter((c) => c.argv.includes("--rollback"))).toEqual([]);
        expect(env.currentSystem()).toBe(SYS_A);
    });

    test("the build fails after a transient failure to read the profile: still nothing is rolled back", async () => {
        restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
        const first = await create(inputs());
        env.failOnce(["readlink", "/nix/var/nix/profiles/system"]);
        process.env.NIXSPARK_STANDIN_FAIL = "build";
        const err = await nixosDeploymentProvider.update!("id", asRecord(first), asRecord(inputs({ expectedSystem: SYS_B }))).then(() => undefined, (e: Error) => e);
        expect(err?.message).toMatch(/worker-1 .*exit code 1\. Nothing was activated \(the system profile is still system-2-link\), so no rollback was needed\./);
        expect(switches().filter((c) => c.argv.includes("--rollback"))).toEqual([]);
        expect(env.remoteCalls().filter((c) => c.words.includes("--rollback"))).toEqual([]);
        expect(env.profileLink()).toBe("system-2-link");
        expect(env.currentSystem()).toBe(SYS_A);
    });

    test("the build fails and the profile could not be read at all before it: the profile does not point at the new system, so nothing is rolled back", async () => {
        restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
        const first = await create(inputs());
        env.failOnce(["readlink", "/nix/var/nix/profiles/system"], 3);
        process.env.NIXSPARK_STANDIN_FAIL = "build";
        const err = await nixosDeploymentProvider.update!("id", asRecord(first), asRecord(inputs({ expectedSystem: SYS_B }))).then(() => undefined, (e: Error) => e);
        expect(err?.message).toMatch(new RegExp(`worker-1 .*exit code 1\\. Nothing was activated \\(the system profile points at ${SYS_A}, not the new system\\), so no rollback was needed\\.`));
        expect(switches().filter((c) => c.argv.includes("--rollback"))).toEqual([]);
        expect(env.profileLink()).toBe("system-2-link");
        expect(env.currentSystem()).toBe(SYS_A);
    });

    test("activation fails and the profile could not be read before it: the profile points at the new system, so the node is rolled back", async () => {
        restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
        const first = await create(inputs());
        env.setSystem("dev-worker", SYS_B);
        env.failOnce(["readlink", "/nix/var/nix/profiles/system"], 3);
        process.env.NIXSPARK_STANDIN_FAIL = "activate";
        const err = await nixosDeploymentProvider.update!("id", asRecord(first), asRecord(inputs({ expectedSystem: SYS_B }))).then(() => undefined, (e: Error) => e);
        expect(err?.message).toMatch(/worker-1 .*The node was rolled back to its previous generation and runs /);
        expect(switches().filter((c) => c.argv.includes("--rollback"))).toHaveLength(1);
        expect(env.currentSystem()).toBe(SYS_A);
    });

    test("when the rollback fails too, the error says so and gives the command to run by hand", async () => {
        restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy", NIXSPARK_STANDIN_FAIL: "activate", NIXSPARK_STANDIN_FAIL_ROLLBACK: "1" });
        const err = await create(inputs()).then(() => undefined, (e: Error) => e);
        expect(err?.message).toMatch(/worker-1 .*The ROLLBACK FAILED as well/s);
        expect(err?.message).toContain(`NIX_SSHOPTS='${strictOpts()}' nixos-rebuild switch --rollback --fast --flake path:./nix#dev-worker --target-host root@${env.host} --use-remote-sudo`);
    });

    test("one node's failure leaves another node alone", async () => {
        const other = await SshTargetEnv.create();
        try {
            other.resetNode(BASE);
            restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
            env.setSystem("dev-master", SYS_C);
            // Both nodes deploy at once, sharing the stack's known-hosts file; worker-1 builds something unexpected.
            const [bad, good] = await Promise.allSettled([
                create(inputs({ expectedSystem: SYS_B })),
                create(inputs({ node: "master", configuration: "dev-master", expectedSystem: SYS_C, host: other.host, sshPort: other.port, identityFile: other.identityFile })),
            ]);
            expect(bad.status).toBe("rejected");
            expect((bad as PromiseRejectedResult).reason.message).toMatch(/^NixosDeployment worker-1 /);
            expect(good).toMatchObject({ status: "fulfilled", value: { node: "master", currentSystem: SYS_C } });
            expect(other.currentSystem()).toBe(SYS_C);
            expect(other.remoteCalls().some((c) => c.words.includes("--rollback"))).toBe(false);
            expect(env.currentSystem()).toBe(BASE);
        } finally {
            await other.cleanup();
        }
    });
});

describe("refresh and delete", () => {
    test("refresh reports a system switched behind the provider's back; the next diff is an update that switches it back", async () => {
        restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
        const outs = await create(inputs());
        env.switchByHand(SYS_C);

        const read = await nixosDeploymentProvider.read!("worker-1@x", asRecord(outs));
        expect(read.props).toEqual({ ...outs, currentSystem: SYS_C });
        expect(logged.some((l) => l.includes(`refresh: the node runs ${SYS_C}, not the recorded ${SYS_A}`))).toBe(true);

        const d = await nixosDeploymentProvider.diff!("worker-1@x", read.props as Record<string, unknown>, asRecord(inputs()));
        expect(d).toEqual({ changes: true, replaces: [], deleteBeforeReplace: false });
        const r = await nixosDeploymentProvider.update!("worker-1@x", read.props as Record<string, unknown>, asRecord(inputs()));
        expect(r.outs).toMatchObject({ currentSystem: SYS_A });
        expect(env.currentSystem()).toBe(SYS_A);
    });

    test("delete does nothing on the VM and says so", async () => {
        const before = env.remoteCalls().length;
        await nixosDeploymentProvider.delete!("worker-1@x", asRecord({ ...inputs(), currentSystem: SYS_A }));
        expect(env.remoteCalls()).toHaveLength(before);
        expect(logged).toEqual(["[worker-1] nothing to do on the VM for its NixOS deployment: the VM is deleted with its domain"]);
    });
});

test("the provider still deploys after serialize -> load (as Pulumi runs it)", async () => {
    restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
    // Code loaded by require-from-string runs in Node's own context, outside
    // jest's sandbox, so it sees the real process.env rather than the
    // sandbox's copy that useStandin changed: hand it the same variables.
    const real = (await roundTrip({ proc: () => process })).proc();
    const saved = { ...real.env };
    try {
        for (const k of ["PATH", "NIXSPARK_STANDIN_LOG", "NIXSPARK_STANDIN_SYSTEMS", "NIXSPARK_STANDIN_FLAVOUR"]) real.env[k] = process.env[k];
        const p = await roundTrip(nixosDeploymentProvider);
        const r = await p.create!(asRecord(inputs()));
        expect(r.id).toBe(`worker-1@${env.host}`);
        expect(r.outs.currentSystem).toBe(SYS_A);
        expect(env.currentSystem()).toBe(SYS_A);
        expect(switches()).toHaveLength(1);
    } finally {
        for (const k of Object.keys(real.env)) if (!(k in saved)) delete real.env[k];
        Object.assign(real.env, saved);
    }
});
