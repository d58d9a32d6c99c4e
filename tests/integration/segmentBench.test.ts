// Two libvirt hosts on one L2 segment (issue 19, must-show 2's bench): two
// benches whose bridges are joined through a shared namespace
// (tests/helpers/segmentBench.ts), one tiny guest on each, defined from the
// program's own domainXml with `bridge` and `address`: the static address
// reaches the guest as the credential nixspark.network in SMBIOS (with its
// MAC), and the guest (scripts/build-test-guest) puts it on the interface
// with that MAC, with no DHCP anywhere. Each guest answers at its static
// address from the other host's namespace and from the segment's; the
// segment's stop() leaves no namespace behind.
import { spawn } from "node:child_process";
import { randomInt } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { macFor } from "../../cluster/topology";
import { domainXml } from "../../providers/libvirtXml";
import { poolProvider } from "../../providers/pool";
import { volumeProvider } from "../../providers/volume";
import { run } from "../../providers/run";
import { Bench, tailFile, waitFor } from "../helpers/libvirtBench";
import { Segment, segmentSubnet, startSegment } from "../helpers/segmentBench";

jest.setTimeout(10 * 60_000);

const stack = `seg${randomInt(1000, 9999)}`;
const cidr = `10.216.${randomInt(0, 256)}.0/24`;
let seg: Segment | undefined;

interface Guest {
    bench: Bench;
    name: string;
    hostname: string;
    mac: string;
    ip: string;
    address: string;
    gateway: string;
    consoleLog: string;
    /** The interface the guest puts the address on. */
    iface: string;
}
const DECOY_MAC = "02:00:5e:00:00:01";
const guests: Guest[] = [];

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

/** What the guest at `ip` serves as info.txt, fetched from inside a namespace. */
async function info(exec: Segment["exec"], ip: string): Promise<Map<string, string> | undefined> {
    const r = await exec(["wget", "-qO-", "-T", "3", `http://${ip}/info.txt`], { allowFailure: true, timeoutMs: 10_000 });
    if (r.code !== 0) return undefined;
    return new Map(r.stdout.split("\n").filter((l) => l.includes("=")).map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
}

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

    test("a guest per host, defined from domainXml with a bridge and a static address, answers at that address from the other host's namespace and from the segment's; no DHCP anywhere", async () => {
        const s = seg!;
        const t0 = Date.now();
        // One guest per bench, each on its own pool and overlay (the program's providers), booted in parallel.
        await Promise.all(
            s.benches.map(async (bench, i) => {
                const node = i === 0 ? "master" : "worker-1";
                const g: Guest = {
                    bench,
                    name: `${stack}-${node}`,
                    hostname: `${stack}-${node}`,
                    mac: macFor(stack, node),
                    ip: s.host(11 + i),
                    address: "",
                    // The first guest gets a default route via the segment (.1), the second none.
                    gateway: i === 0 ? s.address : "",
                    consoleLog: path.join(bench.dir, `${stack}-${node}-console.log`),
                    iface: i === 0 ? "eth0" : "eth1",
                };
                g.address = `${g.ip}/${s.prefix}${g.gateway ? ` ${g.gateway}` : ""}`;
                guests[i] = g;
                const pool = `${stack}-pool`;
                await poolProvider.create!({ uri: bench.uri, name: pool, path: path.join(bench.dir, "images") });
                const vol = await volumeProvider.create!({ uri: bench.uri, pool, name: `${g.name}.qcow2`, basePath: bench.guest.baseImage, capacityBytes: 1024 ** 3, domain: g.name });
                const xml = domainXml({
                    name: g.name, domainType: "qemu", vcpus: 1, memoryMiB: 256, diskPath: vol.outs.path, mac: g.mac,
                    bridge: s.bridge, address: g.address, hostname: g.hostname, consoleLog: g.consoleLog,
                    kernel: bench.guest.kernel, initrd: bench.guest.initrd, cmdline: "console=ttyS0",
                });
                // The second guest gets another NIC first (eth0, on no address): the credential's MAC, not the name eth0, picks the interface.
                const decoy = `    <interface type='bridge'>\n      <mac address='${DECOY_MAC}'/>\n      <source bridge='${s.bridge}'/>\n      <model type='virtio'/>\n    </interface>\n`;
                const file = path.join(bench.dir, `${g.name}.xml`);
                fs.writeFileSync(file, g.iface === "eth0" ? xml : xml.replace("    <interface type='bridge'>\n", `${decoy}$&`));
                await bench.virsh(["define", file]);
                await bench.virsh(["start", g.name]);
            }),
        );

        // From the other host's namespace: all the pages say what the credentials said.
        const answers = await Promise.all(
            guests.map((g, i) => {
                const other = s.benches[1 - i];
                let last: Map<string, string> | undefined;
                return waitFor(
                    `${g.name} (bench ${i + 1}) answering at ${g.ip} from bench ${2 - i}'s namespace as ${g.hostname}`,
                    async () => {
                        last = await info(other.exec, g.ip);
                        return last?.get("hostname") === g.hostname && last.get("default_route") === g.gateway ? last : undefined;
                    },
                    { timeoutMs: 180_000, intervalMs: 1000, diagnose: () => `last info.txt: ${JSON.stringify([...(last ?? [])])}\n${tailFile(g.consoleLog)}` },
                );
            }),
        );
        const bootMs = Date.now() - t0;
        for (const [i, g] of guests.entries()) {
            expect(Object.fromEntries(answers[i])).toMatchObject({
                hostname: g.hostname,
                credential_hostname: g.hostname,
                address_source: "credential",
                ip: g.ip,
                mac: g.mac,
                default_route: g.gateway,
            });
        }
        // The second guest's bridge is not the first's: the traffic crossed the segment (the MACs were learned on the veths).
        const learned = (await s.exec(["bridge", "fdb", "show", "br", s.segmentBridge])).stdout;
        for (const g of guests) expect(learned).toContain(g.mac);

        // From the segment's namespace (the machine that runs pulumi): both, by ssh too.
        for (const g of guests) {
            expect((await info(s.exec, g.ip))?.get("hostname")).toBe(g.hostname);
            const r = await s.ssh(g.ip, ["hostname; ip -4 -o addr show; cat /run/address-source; pidof udhcpc || echo no-udhcpc"], { timeoutMs: 60_000 });
            expect(r.stdout).toContain(`${g.hostname}\n`);
            expect(r.stdout).toMatch(new RegExp(`^\\d+: ${g.iface}\\s+inet ${g.ip.replace(/\./g, "\\.")}/${s.prefix} `, "m"));
            expect(r.stdout.match(/inet (?!127\.)/g)).toHaveLength(1); // and on no other interface
            expect(r.stdout).toContain("credential\nno-udhcpc\n");
        }

        // No DHCP server anywhere: no libvirt network on either host, no dnsmasq in any namespace; the guests never asked.
        for (const b of s.benches) expect((await b.virsh(["net-list", "--all", "--name"])).stdout.trim()).toBe("");
        for (const netns of [s.netns, ...s.benches.map((b) => b.netns)]) {
            const pids = (await run(["ip", "netns", "pids", netns], { timeoutMs: 10_000 })).stdout.split(/\s+/).filter(Boolean);
            const comms = pids.map((p) => {
                try {
                    return fs.readFileSync(`/proc/${p}/comm`, "utf8").trim();
                } catch {
                    return "";
                }
            });
            expect(comms).not.toContain("dnsmasq");
        }
        for (const g of guests) {
            const text = fs.readFileSync(g.consoleLog, "utf8");
            expect(text).toContain(`test-guest: static address ${g.ip}/${s.prefix} on ${g.iface} hostname=${g.hostname} router=${g.gateway} (credential nixspark.network)`);
            expect(text).not.toMatch(/udhcpc|test-guest: bound/);
        }
        console.log(`segment: two guests booted and answering across the segment in ${bootMs} ms`);
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
