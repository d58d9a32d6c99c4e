// A VM's console log read on the libvirt host that runs it: over ssh for a
// qemu+libssh2 URI (which, unlike qemu+ssh, carries its known_hosts), against a real sshd on a loopback address
// (tests/helpers/loopbackNodes.ts) standing in for a remote libvirt host.
import * as fs from "node:fs";
import * as path from "node:path";
import { readConsoleLog } from "../../providers/consoleLog";
import { LoopbackNodes } from "../helpers/loopbackNodes";

jest.setTimeout(120_000);

let host: LoopbackNodes | undefined;
beforeAll(async () => {
    host = await LoopbackNodes.create([{ name: "hv-b", ip: "127.0.0.29" }]);
}, 120_000);
afterAll(async () => {
    await host?.cleanup();
});

test("over ssh the log is read on that host with the URI's login (user, port, keyfile; known_hosts, which libvirt reads for qemu+libssh2); a log not written yet reads empty", async () => {
    const h = host!;
    const log = path.join(h.dir, "lab-worker-33-console.log");
    fs.writeFileSync(log, "booting\nnixspark-host-keys: SHA256:abc\n");
    const uri = `qemu+libssh2://root@127.0.0.29:${h.port}/system?keyfile=${h.identityFile}&known_hosts=${h.knownHostsFile}`;
    expect(await readConsoleLog(log, uri)).toBe("booting\nnixspark-host-keys: SHA256:abc\n");
    expect(await readConsoleLog(path.join(h.dir, "not-yet-console.log"), uri)).toBe("");
    // A local URI reads this machine's file.
    expect(await readConsoleLog(log, "qemu+unix:///system?socket=/nonexistent")).toContain("nixspark-host-keys");
});

test("a host whose key is not in known_hosts is refused, saying how to fix it (fingerprints are never read from an unverified host)", async () => {
    const h = host!;
    const log = path.join(h.dir, "lab-worker-34-console.log");
    fs.writeFileSync(log, "nixspark-host-keys: SHA256:abc\n");
    const empty = path.join(h.dir, "empty_known_hosts");
    fs.writeFileSync(empty, "");
    await expect(readConsoleLog(log, `qemu+libssh2://root@127.0.0.29:${h.port}/system?keyfile=${h.identityFile}&known_hosts=${empty}`)).rejects.toThrow(
        /cannot read the console log \S+lab-worker-34-console\.log on 127\.0\.0\.29 over ssh .*Host key verification failed.*its host key in known_hosts.*"first-use"/,
    );
});
