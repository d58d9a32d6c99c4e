// NixosDeployment onto an existing machine (target "hosts", docs/targets.md):
// its host key is checked against the fingerprint the user gave before
// anything is written or switched (a wrong one is refused naming the machine
// and both fingerprints), and a machine that leaves the stack is switched to
// its configuration without the role. A real sshd in a private network
// namespace plays the machine (tests/helpers/sshTarget.ts).
import * as fs from "node:fs";
import * as path from "node:path";
import { execFileSync } from "node:child_process";
import { NixosDeploymentInputs, nixosDeploymentProvider } from "../../providers/nixosDeployment";
import { createDeployment, SshTargetEnv } from "../helpers/sshTarget";

jest.setTimeout(90_000);

const BASE = "/nix/store/00000000000000000000000000000000-nixos-system-lab2-24.11";
const ROLE = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-lab2-24.11";
const RELEASED = "/nix/store/rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr-nixos-system-lab2-24.11";
const WRONG = "SHA256:" + "Q".repeat(43);

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
    fs.rmSync(env.knownHostsFile, { force: true });
    env.setSystem("h-host-lab2", ROLE);
    env.setSystem("h-host-lab2-released", RELEASED);
    restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
    logged = [];
    jest.spyOn(console, "error").mockImplementation((...args: unknown[]) => void logged.push(args.map(String).join(" ")));
});
afterEach(() => {
    restoreEnv();
    jest.restoreAllMocks();
});

/** The machine's real fingerprint, as ssh-keygen prints it. */
const realFingerprint = () => execFileSync("ssh-keygen", ["-l", "-E", "sha256", "-f", path.join(env.dir, "host_ed25519.pub")], { encoding: "utf8" }).split(" ")[1];

function inputs(over: Partial<NixosDeploymentInputs> = {}): NixosDeploymentInputs {
    return env.deploymentInputs({
        node: "lab2",
        configuration: "h-host-lab2",
        expectedSystem: ROLE,
        useSudo: false,
        flavour: "legacy",
        sshWaitSeconds: 20,
        secretProperties: "spark.authenticate.secret s3cr3t\n",
        release: { configuration: "h-host-lab2-released", expectedSystem: RELEASED },
        ...over,
    });
}

test("a wrong fingerprint is refused before anything is pinned, written or switched, naming the machine and both fingerprints", async () => {
    const real = realFingerprint();
    expect(real).toMatch(/^SHA256:/);
    const e = (await createDeployment(inputs({ hostKeyFingerprint: WRONG })).catch((x: Error) => x)) as Error;
    expect(e).toBeInstanceOf(Error);
    expect(e.message).toContain(`host key mismatch for machine lab2 at root@${env.host} port ${env.port}: nixspark:hosts gives ${WRONG}, but the machine answering presents ${real}.`);
    expect(e.message).toContain("Nothing was pinned, written or switched");
    expect(env.switches()).toEqual([]);
    // Not even a login: the secret was not written, no command reached the machine.
    expect(env.remoteCalls()).toEqual([]);
    expect(fs.existsSync(env.knownHostsFile) ? fs.readFileSync(env.knownHostsFile, "utf8").trim() : "").toBe("");
    expect(env.currentSystem()).toBe(BASE);
});

test("the right fingerprint pins that key and the machine switches to its role system", async () => {
    const outs = await createDeployment(inputs({ hostKeyFingerprint: realFingerprint() }));
    expect(outs.currentSystem).toBe(ROLE);
    expect(logged).toContain(`[lab2] host key of root@${env.host} port ${env.port} is ${realFingerprint()}, as nixspark:hosts gives; pinned`);
    const pub = fs.readFileSync(path.join(env.dir, "host_ed25519.pub"), "utf8").split(" ").slice(0, 2).join(" ");
    expect(fs.readFileSync(env.knownHostsFile, "utf8").trim()).toBe(`[${env.host}]:${env.port} ${pub}`);
    expect(env.switches().map((c) => c.argv[2])).toEqual([`path:./nix#h-host-lab2`]);
});

test("delete switches the machine to its configuration without the role, and it keeps running", async () => {
    const outs = await createDeployment(inputs({ hostKeyFingerprint: realFingerprint() }));
    env.clearStandinLog();
    await nixosDeploymentProvider.delete!(`lab2@${env.host}`, outs as unknown as Record<string, unknown>);
    expect(env.switches().map((c) => c.argv[2])).toEqual([`path:./nix#h-host-lab2-released`]);
    expect(env.currentSystem()).toBe(RELEASED);
    expect(logged.some((l) => /^\[lab2\] now runs its own configuration without the role .*; the machine stays up$/.test(l))).toBe(true);
    // No power command of any kind reached it.
    expect(env.remoteCalls().filter((c) => /poweroff|shutdown|halt|reboot/.test(c.words.join(" ")))).toEqual([]);
});

test("a failed switch on delete keeps the deployment (the error says the machine still runs the role)", async () => {
    const outs = await createDeployment(inputs({ hostKeyFingerprint: realFingerprint() }));
    const restore = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy", NIXSPARK_STANDIN_FAIL: "build" });
    try {
        await expect(nixosDeploymentProvider.delete!(`lab2@${env.host}`, outs as unknown as Record<string, unknown>)).rejects.toThrow(/machine lab2 could not be switched to its configuration without the role .*it still runs the role/);
    } finally {
        restore();
    }
    expect(env.currentSystem()).toBe(ROLE);
});

test("a worker machine's delete decommissions it through Spark first, then switches it to its configuration without the role", async () => {
    const outs = await createDeployment(inputs({ hostKeyFingerprint: realFingerprint() }));
    // The worker daemon: a process the fake machine's `systemctl kill --kill-whom=main spark-worker` signals.
    const { spawn } = require("node:child_process") as typeof import("node:child_process");
    const daemon = spawn("sleep", ["300"], { stdio: "ignore" });
    const died = new Promise<string | null>((resolve) => daemon.once("exit", (_code, signal) => resolve(signal)));
    try {
        env.setUnitPid("spark-worker", daemon.pid!);
        // No master answers here (a closed loopback port): the decommission signals the worker anyway and goes on.
        const spark = { role: "worker", webUiUrl: "http://127.0.0.1:9", address: env.host, unit: "spark-worker", timeoutSeconds: 10, decommissionTimeoutSeconds: 0 };
        await nixosDeploymentProvider.delete!(`lab2@${env.host}`, { ...(outs as unknown as Record<string, unknown>), spark });
        expect(await died).toBe("SIGPWR");
    } finally {
        if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill("SIGKILL");
    }
    const words = env.remoteCalls().map((c) => c.words.join(" "));
    const signalled = words.indexOf("systemctl kill --kill-whom=main --signal=SIGPWR spark-worker");
    const released = words.findIndex((w) => w.includes(RELEASED));
    expect(signalled).toBeGreaterThanOrEqual(0);
    expect(released).toBeGreaterThan(signalled);
    expect(env.currentSystem()).toBe(RELEASED);
});
