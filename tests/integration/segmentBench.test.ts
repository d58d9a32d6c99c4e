// The segment bench itself (tests/helpers/segmentBench.ts): two benches whose
// bridges are joined through a shared namespace, and what it leaves behind:
// nothing after stop(), after a start that fails half-way, or (reaped by the
// next start) after its process was killed. Guests on it, defined by the
// program from its own domain XML with a bridge and a static address, are
// booted by the e2e story (tests/e2e/libvirtHosts.test.ts), which shows they
// answer across the segment with no DHCP anywhere.
import { spawn } from "node:child_process";
import { randomInt } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { run } from "../../providers/run";
import { waitFor } from "../helpers/libvirtBench";
import { Segment, segmentSubnet, startSegment } from "../helpers/segmentBench";

jest.setTimeout(10 * 60_000);

const cidr = `10.216.${randomInt(0, 256)}.0/24`;
let seg: Segment | undefined;

const NETNS = /nxs-[0-9a-f]{8}/g;
const namespaces = async () => (await run(["ip", "netns", "list"], { timeoutMs: 10_000 })).stdout.split("\n").map((l) => l.split(/\s+/)[0]).filter(Boolean);
/** The namespaces (segment and benches) of a segment whose test process was killed (SIGKILL: no exit handler ran). */
let orphans: string[] = [];
/** The namespaces right after the kill. */
let afterKill: string[] = [];

beforeAll(async () => {
    // A process that starts a segment and is killed before it can stop it.
    const child = spawn(
        process.execPath,
        ["-r", "ts-node/register/transpile-only", "-e", "require(process.argv[1]).startSegment({ cidr: '10.217.0.0/24', benches: 1 }).then((s) => { console.log('started ' + [s.netns, ...s.benches.map((b) => b.netns)].join(' ')); setInterval(() => undefined, 1000); }, (e) => { console.error(e); process.exit(1); })", path.join(__dirname, "..", "helpers", "segmentBench")],
        { cwd: path.join(__dirname, "..", ".."), stdio: ["ignore", "pipe", "pipe"] },
    );
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    try {
        orphans = await waitFor("a segment started by a child process", async () => (/^started /m.test(out) ? out.match(NETNS) ?? [] : undefined), {
            timeoutMs: 300_000,
            intervalMs: 250,
            diagnose: () => out,
        });
    } finally {
        child.kill("SIGKILL");
        await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(undefined) : child.once("exit", r)));
        afterKill = await namespaces();
        // The next start reaps what the dead process left (also when it did not get as far as saying so).
        seg = await startSegment({ cidr, benches: 2, bridge: "nxsbr0" });
    }
}, 20 * 60_000);

afterAll(async () => {
    await seg?.stop();
}, 5 * 60_000);

describe("two libvirt hosts on one L2 segment", () => {
    test("the subnet's addresses: .1 the segment, .2 and .3 the benches' bridges", () => {
        expect(segmentSubnet("10.9.8.0/24", 3).host(1)).toBe("10.9.8.1");
        expect(segmentSubnet("10.9.8.77/23", 3).host(300)).toBe("10.9.9.44");
        expect(() => segmentSubnet("10.9.8.0/30", 3)).toThrow(/P from 8 to 29/);
        expect(() => segmentSubnet("10.9.8.0/29", 7)).toThrow(/do not fit/);
        expect(seg!.address).toBe(seg!.host(1));
        expect(seg!.benchAddresses).toEqual([seg!.host(2), seg!.host(3)]);
    });

    test("a segment whose process was killed is reaped by the next start: its namespaces, and with them its bridges and veths, are gone", async () => {
        expect(orphans).toHaveLength(2);
        expect(afterKill).toEqual(expect.arrayContaining(orphans)); // the kill left them behind
        const left = await namespaces();
        for (const n of orphans) expect(left).not.toContain(n);
        expect(left).toContain(seg!.netns);
    });

    test("a start that fails half-way (the benches are up, a bridge cannot be made) removes everything it made and says why", async () => {
        const said: string[] = [];
        // "lo" exists in every namespace: `ip link add lo type bridge` fails once both benches run.
        await expect(startSegment({ cidr, benches: 2, bridge: "lo", log: (l) => said.push(l) })).rejects.toThrow(/File exists/);
        const made = [...new Set(said.join("\n").match(NETNS) ?? [])];
        expect(made).toHaveLength(3); // the segment's and both benches'
        const left = await namespaces();
        for (const n of made) expect(left).not.toContain(n);
        for (const n of made) expect(fs.existsSync(`/tmp/nxs-bench-${n.slice(4)}`)).toBe(false);
    });

    test("stop() removes both benches, the segment, their bridges and veth pairs; a second stop() is a no-op", async () => {
        const s = seg!;
        const names = [s.netns, ...s.benches.map((b) => b.netns)];
        const dirs = s.benches.map((b) => b.dir);
        await s.stop();
        await s.stop();
        const left = (await run(["ip", "netns", "list"], { timeoutMs: 10_000 })).stdout;
        for (const n of names) expect(left).not.toMatch(new RegExp(`^${n}\\b`, "m"));
        for (const d of dirs) expect(fs.existsSync(d)).toBe(false);
        // Nothing of the segment ever was in the root namespace.
        const links = (await run(["ip", "-o", "link", "show"], { timeoutMs: 10_000 })).stdout;
        expect(links).not.toMatch(/nxsseg|nxsport|nxsbr0/);
    });
});
