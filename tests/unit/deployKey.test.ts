// The stack's own deploy key: a fresh stack needs no SSH key of the user's.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { execFileSync } from "node:child_process";
import { parseConfig } from "../../cluster/config";
import { buildTopology } from "../../cluster/topology";
import { nixStackParams } from "../../cluster/nixParams";
import { resolveSsh, stackDeployKey } from "../../cluster/stackConfig";

const dirs: string[] = [];
const tmp = (p: string) => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), p));
    dirs.push(d);
    return d;
};
let savedHome: string | undefined;
beforeEach(() => {
    savedHome = process.env.HOME;
    process.env.HOME = tmp("nixspark-home-"); // a user with no ~/.ssh at all
});
afterEach(() => {
    process.env.HOME = savedHome;
});
afterAll(() => {
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

test("a fresh stack makes its own ed25519 key without passphrase, 0600 in a 0700 directory, and bakes it into the image", () => {
    const state = path.join(tmp("nixspark-proj-"), ".nixspark", "dev");
    const cfg = parseConfig({});
    const ssh = resolveSsh(cfg, state, "dev", process.env.HOME);
    expect(ssh.keySource).toBe("stack");
    expect(ssh.identityFile).toBe(stackDeployKey(state));
    expect(fs.statSync(ssh.identityFile).mode & 0o777).toBe(0o600);
    expect(fs.statSync(state).mode & 0o777).toBe(0o700);
    expect(ssh.publicKey).toMatch(/^ssh-ed25519 [A-Za-z0-9+/=]+ nixspark-dev$/);
    // No passphrase: ssh-keygen derives the public key without asking for one.
    const derived = execFileSync("ssh-keygen", ["-y", "-P", "", "-f", ssh.identityFile], { encoding: "utf8", timeout: 10_000 }).trim();
    expect(ssh.publicKey!.startsWith(derived)).toBe(true);
    // The image carries exactly this key.
    const params = nixStackParams({ ...cfg, ssh: { ...cfg.ssh, publicKey: ssh.publicKey } }, buildTopology("dev", cfg));
    expect(params.sshPublicKey).toBe(ssh.publicKey);
    expect(fs.existsSync(path.join(process.env.HOME!, ".ssh"))).toBe(false);
    // The same key on every later run.
    expect(resolveSsh(cfg, state, "dev").publicKey).toBe(ssh.publicKey);
});

test("a key the user names is used as it is, and none is made", () => {
    const state = path.join(tmp("nixspark-proj-"), ".nixspark", "dev");
    const own = path.join(tmp("nixspark-keys-"), "id_mine");
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "mine", "-f", own], { timeout: 10_000 });
    const ssh = resolveSsh(parseConfig({ ssh: { privateKeyPath: own } }), state, "dev");
    expect(ssh).toMatchObject({ identityFile: own, keySource: "configured" });
    expect(ssh.publicKey).toMatch(/ mine$/);
    expect(fs.existsSync(stackDeployKey(state))).toBe(false);
});

test("a stack deployed before per-stack keys keeps ~/.ssh/id_ed25519: its running nodes let only that key in", () => {
    const state = path.join(tmp("nixspark-proj-"), ".nixspark", "old");
    fs.mkdirSync(state, { recursive: true });
    fs.writeFileSync(path.join(state, "known_hosts"), "10.77.0.10 ssh-ed25519 AAAA\n");
    const home = process.env.HOME!;
    fs.mkdirSync(path.join(home, ".ssh"));
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "old", "-f", path.join(home, ".ssh/id_ed25519")], { timeout: 10_000 });
    const ssh = resolveSsh(parseConfig({}), state, "old", home);
    expect(ssh).toMatchObject({ identityFile: path.join(home, ".ssh/id_ed25519"), keySource: "legacy-default" });
    expect(fs.existsSync(stackDeployKey(state))).toBe(false);
});
