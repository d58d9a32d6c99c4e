import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { classifySshFailure, hostKeyError, knownHostNames, nixSshOpts, privileged, sshArgv, sshOptions, SshTarget } from "../../providers/ssh";
import { forgetHostKeys, hostKeyLines, replaceHostKeys, restoreHostKeys } from "../../providers/knownHosts";
import { expandHome, localPath } from "../../providers/paths";
import { waitForSsh } from "../../providers/sshContact";
import { roundTrip } from "../helpers/serialize";

const target: SshTarget = { host: "10.77.0.11", user: "deploy", port: 2222, identityFile: "/keys/id_ed25519", knownHostsFile: "/state/dev/known_hosts" };

describe("ssh options", () => {
    test("strict options name the stack's known-hosts file only and never prompt", () => {
        expect(sshOptions(target, "strict")).toEqual([
            "-p", "2222",
            "-i", "/keys/id_ed25519",
            "-o", "IdentitiesOnly=yes",
            "-o", "UserKnownHostsFile=/state/dev/known_hosts",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "HashKnownHosts=no",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4",
            "-o", "LogLevel=ERROR",
        ]);
    });

    test("first contact accepts a new key but never a changed one", () => {
        expect(sshOptions(target, "accept-new")).toContain("StrictHostKeyChecking=accept-new");
    });

    test("NIX_SSHOPTS is the same words joined by single spaces", () => {
        expect(nixSshOpts(target, "strict")).toBe(sshOptions(target, "strict").join(" "));
        expect(nixSshOpts(target, "strict").split(" ")).toEqual(sshOptions(target, "strict"));
    });

    test("paths that NIX_SSHOPTS cannot carry are rejected, naming the option", () => {
        expect(() => nixSshOpts({ ...target, identityFile: "/my keys/id" }, "strict")).toThrow(/identity file "\/my keys\/id" cannot be passed to nixos-rebuild/);
        expect(() => nixSshOpts({ ...target, knownHostsFile: "/state/'x'" }, "strict")).toThrow(/known-hosts file/);
        expect(() => nixSshOpts({ ...target, port: 0 }, "strict")).toThrow(/port/);
    });

    test("~/ is expanded", () => {
        expect(expandHome("~/.ssh/id_ed25519")).toBe(path.join(os.homedir(), ".ssh/id_ed25519"));
        expect(sshOptions({ ...target, identityFile: "~/.ssh/id" }, "strict")).toContain(path.join(os.homedir(), ".ssh/id"));
    });

    test("argv: destination, then -- and plain remote words", () => {
        const argv = sshArgv(target, "strict", ["readlink", "-f", "/run/current-system"]);
        expect(argv[0]).toBe("ssh");
        expect(argv.slice(-5)).toEqual(["deploy@10.77.0.11", "--", "readlink", "-f", "/run/current-system"]);
    });

    test("remote words that would need shell quoting are refused", () => {
        expect(() => sshArgv(target, "strict", ["echo", "a;b"])).toThrow(/needs shell quoting/);
        expect(() => sshArgv({ ...target, host: "-oProxyCommand=x" }, "strict", ["true"])).toThrow(/not a plain host/);
    });
});

describe("ssh failures", () => {
    test("OpenSSH's wording maps to what the provider does next", () => {
        expect(classifySshFailure("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.")).toBe("host-key-changed");
        expect(classifySshFailure("No ED25519 host key is known for [10.0.0.2]:22 and you have requested strict checking.\nHost key verification failed.")).toBe("host-key-unknown");
        expect(classifySshFailure("deploy@10.0.0.2: Permission denied (publickey).")).toBe("auth");
        expect(classifySshFailure("ssh: connect to host 10.0.0.2 port 22: Connection refused")).toBe("unreachable");
        expect(classifySshFailure("ssh: connect to host 10.0.0.2 port 22: Connection timed out")).toBe("unreachable");
    });

    test("known_hosts names: ssh files non-22 ports as [host]:port", () => {
        expect(knownHostNames("10.0.0.2", 22)).toEqual(["10.0.0.2"]);
        expect(knownHostNames("10.0.0.2", 2222)).toEqual(["[10.0.0.2]:2222", "10.0.0.2"]);
    });

    test("waiting is bounded: an unreachable target fails with the last error and the knob to turn", async () => {
        // 127.0.0.1 port 1: nothing listens on loopback there, so it is refused at once.
        const t0 = Date.now();
        await expect(
            waitForSsh({ ...target, host: "127.0.0.1", port: 1, identityFile: "/nonexistent", knownHostsFile: "/dev/null" }, { timeoutSeconds: 2, policy: "strict", retryDelayMs: 200 }),
        ).rejects.toThrow(/did not answer within 2 s .*Connection refused.*deploy\.sshWaitSeconds/s);
        expect(Date.now() - t0).toBeLessThan(10_000);
    });
});

describe("known-hosts file", () => {
    let dir: string;
    beforeEach(() => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "nxd-unit-"));
    });
    afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

    test("replacing a host's keys drops stale entries for it (both names) and keeps other hosts", async () => {
        const file = path.join(dir, "state", "known_hosts");
        fs.mkdirSync(path.dirname(file));
        fs.writeFileSync(
            file,
            [
                "[10.0.0.2]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLD1",
                "10.0.0.2 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLD2",
                "10.0.0.3 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOTHEROTHEROTHEROTHEROTHEROTHEROTHEROTHER3",
                "",
            ].join("\n"),
        );
        await replaceHostKeys(file, "10.0.0.2", 2222, ["[10.0.0.2]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINEWNEWNEWNEWNEWNEWNEWNEWNEWNEWNEWNEWNEWNEW4"]);
        const lines = fs.readFileSync(file, "utf8").split("\n").filter((l) => l.trim() !== "" && !l.startsWith("#"));
        expect(lines.sort()).toEqual([
            "10.0.0.3 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOTHEROTHEROTHEROTHEROTHEROTHEROTHEROTHER3",
            "[10.0.0.2]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINEWNEWNEWNEWNEWNEWNEWNEWNEWNEWNEWNEWNEWNEW4",
        ]);
        expect(fs.existsSync(`${file}.old`)).toBe(false);
        expect(fs.existsSync(`${file}.lock`)).toBe(false);
    });

    test("forgetting a host that is not there is fine", async () => {
        const file = path.join(dir, "known_hosts");
        fs.writeFileSync(file, "");
        await expect(forgetHostKeys(file, "10.9.9.9", 22)).resolves.toBeUndefined();
    });

    test("parallel replacements (one per node) lose no entry", async () => {
        const file = path.join(dir, "known_hosts");
        fs.writeFileSync(file, "");
        const hosts = Array.from({ length: 8 }, (_, i) => `10.0.1.${i + 10}`);
        await Promise.all(hosts.map((h, i) => replaceHostKeys(file, h, 22, [`${h} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKEY${String(i).padStart(40, "0")}`])));
        const lines = fs.readFileSync(file, "utf8").split("\n").filter((l) => l.trim() !== "");
        expect(lines.map((l) => l.split(" ")[0]).sort()).toEqual([...hosts].sort());
    });

    // The file is a cache of the deployments' hostKeys outputs (the state).
    const K = (host: string, n: string) => `${host} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI${n.padEnd(43, "A")}`;

    test("a host's entries are read back under either name ssh files it under", () => {
        const file = path.join(dir, "known_hosts");
        fs.writeFileSync(file, [K("[10.0.0.2]:2222", "ONE"), K("10.0.0.2", "TWO"), K("10.0.0.3", "OTHER"), "# a comment", ""].join("\n"));
        expect(hostKeyLines(file, "10.0.0.2", 2222)).toEqual([K("[10.0.0.2]:2222", "ONE"), K("10.0.0.2", "TWO")]);
        expect(hostKeyLines(file, "10.0.0.2", 22)).toEqual([K("10.0.0.2", "TWO")]);
        expect(hostKeyLines(path.join(dir, "missing"), "10.0.0.2", 22)).toEqual([]);
    });

    test("restoring from the state fills a missing file or a missing host, and never touches an entry the file has", async () => {
        const file = path.join(dir, "lost", "known_hosts");
        const pinned = [K("10.0.0.2", "PINNED")];
        expect(await restoreHostKeys(file, "10.0.0.2", 22, pinned)).toBe(true);
        expect(fs.readFileSync(file, "utf8")).toBe(`${pinned[0]}\n`);
        expect(fs.statSync(file).mode & 0o777).toBe(0o600);
        expect(fs.statSync(path.dirname(file)).mode & 0o777).toBe(0o700);
        // Again: it is there, nothing written.
        expect(await restoreHostKeys(file, "10.0.0.2", 22, pinned)).toBe(false);
        // Another host is added next to it.
        expect(await restoreHostKeys(file, "10.0.0.3", 22, [K("10.0.0.3", "THREE")])).toBe(true);
        // An entry the user changed (a re-installed machine accepted by hand) wins over the state.
        fs.writeFileSync(file, `${K("10.0.0.2", "BYHAND")}\n`);
        expect(await restoreHostKeys(file, "10.0.0.2", 22, pinned)).toBe(false);
        expect(hostKeyLines(file, "10.0.0.2", 22)).toEqual([K("10.0.0.2", "BYHAND")]);
        // Only lines that name the host, and nothing for a state without keys.
        expect(await restoreHostKeys(file, "10.0.0.9", 22, [K("10.0.0.8", "EIGHT")])).toBe(false);
        expect(await restoreHostKeys(file, "10.0.0.9", 22, undefined)).toBe(false);
        expect(fs.existsSync(`${file}.lock`)).toBe(false);
    });

    test("a changed key's error tells the user to replace the entry with the verified new key (the state would put a removed one back)", () => {
        const e = hostKeyError(target, "host-key-changed", "SSH to x", "WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!");
        expect(e.message).toContain("ssh-keygen -R '[10.77.0.11]:2222' -f /state/dev/known_hosts && ssh-keyscan -p 2222 10.77.0.11 >> /state/dev/known_hosts");
        expect(e.message).toContain("records that key in the stack's state");
    });

    test("relative paths are the project directory's (the engine's working directory for programs and providers)", () => {
        expect(localPath(".nixspark/dev/known_hosts")).toBe(path.join(process.cwd(), ".nixspark/dev/known_hosts"));
        expect(sshOptions({ ...target, identityFile: ".nixspark/dev/deploy_ed25519" }, "strict")).toContain(path.join(process.cwd(), ".nixspark/dev/deploy_ed25519"));
    });
});

test("ssh helpers survive closure serialization", async () => {
    const h = await roundTrip({ argv: () => sshArgv(target, "strict", ["true"]), opts: () => nixSshOpts(target, "accept-new") });
    expect(h.argv()).toEqual(sshArgv(target, "strict", ["true"]));
    expect(h.opts()).toContain("StrictHostKeyChecking=accept-new");
});

test("one privilege prefix: sudo -n (never a prompt) only for a deploy user that is not root, -u for another user", () => {
    expect(privileged(["systemctl", "restart", "spark-worker"], { useSudo: true })).toEqual(["sudo", "-n", "systemctl", "restart", "spark-worker"]);
    expect(privileged(["systemctl", "restart", "spark-worker"], { useSudo: false })).toEqual(["systemctl", "restart", "spark-worker"]);
    expect(privileged(["spark-submit", "job.py"], { useSudo: true, user: "spark" })).toEqual(["sudo", "-n", "-u", "spark", "spark-submit", "job.py"]);
});

test("one home-dir expansion, for the providers and the program (cluster/deployKey.ts)", () => {
    expect(expandHome("~", "/home/u")).toBe("/home/u");
    expect(expandHome("~/.ssh/id", "/home/u")).toBe("/home/u/.ssh/id");
    expect(expandHome("~other/x", "/home/u")).toBe("~other/x");
    expect(expandHome("/abs/~/x", "/home/u")).toBe("/abs/~/x");
});
