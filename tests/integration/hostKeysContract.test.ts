// The host-key contract, executed end to end on this machine: the guest's
// nixspark-host-keys unit (from the worker role's real evaluation) prints the
// node's fingerprints to its serial console; libvirt's console log holds
// that line among whatever else the guest prints; the host's publisher
// (nixosModules.host's nixspark-host-keys, from a real evaluation of the
// module) copies the latest line where an unprivileged deployer can read it,
// while the console is written to without pause; and the program's reader
// (providers/ssh.ts consoleHostKeys) gets exactly the node's fingerprints.
import * as fs from "node:fs";
import * as path from "node:path";
import { parseConfig } from "../../cluster/config";
import { buildTopology } from "../../cluster/topology";
import { nixStackParams } from "../../cluster/nixParams";
import { consoleHostKeys, PUBLISHED_HOST_KEYS } from "../../providers/sshContact";
import { run } from "../../providers/run";
import { evalModuleUnit, evalUnit, removeContractDirs, ScratchRoot, stackFlake } from "../helpers/nixContract";

jest.setTimeout(240_000);

const STACK = "hk";
const LOG_DIR = "/var/log/libvirt/qemu";
let flake: string;
const roots: ScratchRoot[] = [];

beforeAll(() => {
    const cfg = parseConfig({ workers: { count: 1 }, ssh: { publicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeysHostKeysHostKeysHostKeysHostKeys00 hk" } });
    flake = stackFlake(nixStackParams(cfg, buildTopology(STACK, cfg)));
});

afterAll(() => {
    for (const r of roots) r.remove();
    removeContractDirs();
});

function scratch(): ScratchRoot {
    const r = new ScratchRoot();
    roots.push(r);
    return r;
}

/** The fingerprints of this machine's host keys, which the guest's unit reads from /etc/ssh. */
async function expectedFingerprints(): Promise<string[]> {
    const files = fs.readdirSync("/etc/ssh").filter((f) => /^ssh_host_.*_key\.pub$/.test(f)).sort();
    expect(files.length).toBeGreaterThan(0);
    const fps: string[] = [];
    for (const f of files) fps.push((await run(["ssh-keygen", "-l", "-E", "sha256", "-f", path.join("/etc/ssh", f)], { timeoutMs: 10_000 })).stdout.split(/\s+/)[1]);
    return fps;
}

const hostModules = [`flake + "/modules/host.nix"`, `{ nixspark.host.users = [ "alice" ]; users.users.alice.isNormalUser = true; }`];

test("the guest's fingerprints reach the program's reader through the console log and the host's publisher, under constant console writes", async () => {
    // 1. The guest prints its host keys to its serial console.
    const guest = scratch();
    fs.mkdirSync(guest.at("/dev"), { recursive: true });
    fs.writeFileSync(guest.at("/dev/ttyS0"), "");
    const guestUnit = evalUnit(flake, `${STACK}-worker`, "nixspark-host-keys");
    const g = await guest.runUnit(guestUnit);
    expect(g.code).toBe(0);
    const printed = fs.readFileSync(guest.at("/dev/ttyS0"), "utf8");
    expect(printed).toMatch(/^nixspark-host-keys: SHA256:/);

    // 2. libvirt's console log on the host: boot noise, then that line, and a guest that never stops printing.
    const host = scratch();
    const log = host.at(`${LOG_DIR}/${STACK}-worker-1-console.log`);
    fs.mkdirSync(path.dirname(log), { recursive: true });
    fs.writeFileSync(log, "[    0.000000] Linux version 6.6.63\r\n".repeat(200), { mode: 0o600 });
    let writes = 0;
    let printedLine = false;
    const writer = setInterval(() => {
        writes++;
        fs.appendFileSync(log, `[  ${writes}.000] noise ${"x".repeat(200)}\r\n`);
        if (writes === 40) {
            fs.appendFileSync(log, printed.replace(/\n$/, "\r\n"));
            printedLine = true;
        }
    }, 10);

    // 3. The host's publisher runs meanwhile (its real ExecStart, as root), then is stopped.
    const publisher = evalModuleUnit(flake, hostModules, "nixspark-host-keys");
    expect(publisher.serviceConfig.Restart).toBe("always");
    let p;
    try {
        p = await host.runUnit(publisher, { extraEnv: { NIXSPARK_HOST_KEYS_INTERVAL: "0.2" }, stopAfterSeconds: 5 });
    } finally {
        clearInterval(writer);
    }
    expect(p.code).toBe(124); // still running when stopped: it did not give up
    expect(printedLine).toBe(true);
    expect(writes).toBeGreaterThan(100);

    // 4. What the deployer reads: the published line, readable by anyone, gives the guest's fingerprints.
    const published = host.at(`${PUBLISHED_HOST_KEYS}/${STACK}-worker-1-console.log`);
    expect(fs.statSync(published).mode & 0o777).toBe(0o644);
    expect(consoleHostKeys(fs.readFileSync(published, "utf8"))).toEqual(await expectedFingerprints());
});

test("a log with no host key line yet publishes none, and a published line survives a log whose tail no longer holds it", async () => {
    const host = scratch();
    const publisher = evalModuleUnit(flake, hostModules, "nixspark-host-keys");
    const log = host.at(`${LOG_DIR}/${STACK}-master-console.log`);
    fs.mkdirSync(path.dirname(log), { recursive: true });
    fs.writeFileSync(log, "booting\r\n");
    await host.runUnit(publisher, { extraEnv: { NIXSPARK_HOST_KEYS_INTERVAL: "0.2" }, stopAfterSeconds: 2 });
    const published = host.at(`${PUBLISHED_HOST_KEYS}/${STACK}-master-console.log`);
    expect(consoleHostKeys(fs.readFileSync(published, "utf8"))).toBeUndefined();

    fs.appendFileSync(log, "nixspark-host-keys: SHA256:AAAAbbbbCCCCddddEEEEffffGGGGhhhhIIIIjjjjKKK\r\n");
    await host.runUnit(publisher, { extraEnv: { NIXSPARK_HOST_KEYS_INTERVAL: "0.2" }, stopAfterSeconds: 2 });
    expect(consoleHostKeys(fs.readFileSync(published, "utf8"))).toEqual(["SHA256:AAAAbbbbCCCCddddEEEEffffGGGGhhhhIIIIjjjjKKK"]);

    // More than the publisher reads (8 MiB) of console output after the line: the line stays published.
    fs.appendFileSync(log, `${"y".repeat(1023)}\n`.repeat(9 * 1024));
    await host.runUnit(publisher, { extraEnv: { NIXSPARK_HOST_KEYS_INTERVAL: "0.2" }, stopAfterSeconds: 2 });
    expect(consoleHostKeys(fs.readFileSync(published, "utf8"))).toEqual(["SHA256:AAAAbbbbCCCCddddEEEEffffGGGGhhhhIIIIjjjjKKK"]);
});
