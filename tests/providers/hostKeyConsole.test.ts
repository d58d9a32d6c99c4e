// Host keys verified, not trusted on first use: a new VM's key is pinned only
// when the VM printed its fingerprint to its serial console (the log libvirt
// writes on the host); a machine answering at the node's address with another
// key is refused naming both fingerprints. A real sshd in a private network
// namespace plays the node; the test writes the console log as libvirt would.
import * as fs from "node:fs";
import * as path from "node:path";
import { execFileSync } from "node:child_process";
import { NixosDeploymentInputs } from "../../providers/nixosDeployment";
import { CONSOLE_HOST_KEYS_MARKER, consoleHostKeys, keyFingerprint } from "../../providers/sshContact";
import { createDeployment, SshTargetEnv } from "../helpers/sshTarget";

jest.setTimeout(90_000);

const BASE = "/nix/store/00000000000000000000000000000000-nixos-system-base-image";
const SYS_A = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-dev-worker-24.11";

let env: SshTargetEnv;
let restoreEnv: () => void = () => undefined;
let logged: string[] = [];
let consoleLog: string;

beforeAll(async () => {
    env = await SshTargetEnv.create();
    consoleLog = path.join(env.dir, "dev-worker-1-console.log");
});
afterAll(async () => {
    await env?.cleanup();
});
beforeEach(() => {
    env.resetNode(BASE);
    env.clearStandinLog();
    env.setSystem("dev-worker", SYS_A);
    restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
    fs.rmSync(env.knownHostsFile, { force: true });
    fs.rmSync(consoleLog, { force: true });
    logged = [];
    jest.spyOn(console, "error").mockImplementation((...args: unknown[]) => {
        logged.push(args.map(String).join(" "));
    });
});
afterEach(() => {
    restoreEnv();
    jest.restoreAllMocks();
});

const inputs = (over: Partial<NixosDeploymentInputs> = {}): NixosDeploymentInputs =>
    env.deploymentInputs({ useSudo: false, flavour: "legacy", sshWaitSeconds: 8, expectedSystem: SYS_A, consoleLog, ...over });
const hostPubLine = () => fs.readFileSync(path.join(env.dir, "host_ed25519.pub"), "utf8").trim();
/** What `ssh-keygen -l -E sha256` says of the node's real host key, as the guest prints it at boot. */
const realFingerprint = () => execFileSync("ssh-keygen", ["-l", "-E", "sha256", "-f", path.join(env.dir, "host_ed25519.pub")], { encoding: "utf8", timeout: 10_000 }).split(" ")[1];
const boot = (fps: string[]) => fs.appendFileSync(consoleLog, `[    3.14] systemd[1]: Starting sshd\r\n${CONSOLE_HOST_KEYS_MARKER} ${fps.join(" ")}\r\n`);

test("fingerprints: ours equal ssh-keygen's; the console's latest boot counts", () => {
    expect(keyFingerprint(hostPubLine())).toEqual({ type: "ssh-ed25519", fingerprint: realFingerprint() });
    expect(consoleHostKeys("noise\nnixspark-host-keys: SHA256:old\nmore\nnixspark-host-keys: SHA256:new1 SHA256:new2\n")).toEqual(["SHA256:new1", "SHA256:new2"]);
    expect(consoleHostKeys("no marker here\n")).toBeUndefined();
});

test("the key the VM printed on its console is pinned, and the node is deployed", async () => {
    boot([realFingerprint()]);
    await createDeployment(inputs());
    expect(env.currentSystem()).toBe(SYS_A);
    const pinned = fs.readFileSync(env.knownHostsFile, "utf8");
    expect(pinned).toContain(hostPubLine().split(" ").slice(0, 2).join(" "));
    expect(logged.join("\n")).toMatch(/matches the VM's console \(SHA256:[A-Za-z0-9+/]+\); pinned/);
});

test("another machine answering at the node's address (another key) is refused with both fingerprints; nothing pinned or switched", async () => {
    const other = "SHA256:AAAAthisIsTheRealVmKeyPrintedOnItsConsole00000";
    boot([other]);
    await expect(createDeployment(inputs())).rejects.toThrow(
        new RegExp(`host key mismatch at .*: the VM printed ${other} on its serial console .*presents ${realFingerprint().replace(/[+/]/g, "\\$&")}.*nothing was pinned or deployed`),
    );
    expect(fs.existsSync(env.knownHostsFile) ? fs.readFileSync(env.knownHostsFile, "utf8").trim() : "").toBe("");
    expect(env.switches()).toEqual([]);
});

test("a VM that prints nothing is not trusted: bounded wait, then an error that says how to opt out", async () => {
    fs.writeFileSync(consoleLog, "booting...\r\n");
    await expect(createDeployment(inputs({ sshWaitSeconds: 3 }))).rejects.toThrow(/printed no host keys .* within 3 s.*nixspark:ssh.hostKeys to "first-use"/);
    expect(env.switches()).toEqual([]);
});

test("a console log on a host nixspark cannot read it on (qemu+tcp) stops the deployment at once with the fix, instead of waiting as if nothing was printed", async () => {
    await expect(createDeployment(inputs({ consoleLogHost: "qemu+tcp://hv-b/system", sshWaitSeconds: 3 }))).rejects.toThrow(/reads only over ssh .* or set nixspark:ssh\.hostKeys to "first-use"/);
    expect(env.switches()).toEqual([]);
});

test("without a console log (hostKeys: first-use) the first key is trusted, as before", async () => {
    await createDeployment(inputs({ consoleLog: undefined }));
    expect(env.currentSystem()).toBe(SYS_A);
    expect(logged.join("\n")).toMatch(/trusted on first use/);
});
