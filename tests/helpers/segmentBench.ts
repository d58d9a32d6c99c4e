// Several libvirt hosts on one L2 segment (issue 19, libvirt across hosts with
// `network.mode: bridge`): benches (tests/helpers/libvirtBench.ts), each a
// libvirtd in a network namespace of its own, plus a third namespace, the
// segment, that holds a Linux bridge. In each bench's namespace a bridge named
// `bridge` (the host's LAN bridge VMs are plugged into) is joined to the
// segment's bridge by a veth pair:
//
//     bench 1 netns                 segment netns                 bench 2 netns
//     guests -- <bridge> .2 -- veth -- nxsseg .1 -- veth -- <bridge> .3 -- guests
//
// The segment namespace plays the machine that runs pulumi (the subnet's .1);
// each bench's bridge has an address too (.2, .3, ...), so a test reaches a
// guest from the other host's namespace. There is no DHCP server and no
// libvirt network anywhere: guests take static addresses (the credential
// nixspark.network, providers/libvirtXml.ts). Nothing leaves these
// namespaces: no link of the segment is in the root namespace.
//
// Jest pattern (stop() is idempotent, also after a partial start; a
// startSegment() that fails cleans up after itself and rethrows; if the
// process dies, libvirtBench's 'exit' handler and the next start's reaping
// remove the namespaces, and with them the bridges and veth pairs):
//
//     let seg: Segment | undefined;
//     beforeAll(async () => { seg = await startSegment({ cidr: "10.216.7.0/24" }); }, 600_000);
//     afterAll(async () => { await seg?.stop(); }, 180_000);

import { run, RunOptions, RunResult } from "../../providers/run";
import { Bench, Netns, sshArgv, startBench, startNetns } from "./libvirtBench";

export interface SegmentOptions {
    /** The segment's IPv4 subnet, e.g. "10.216.7.0/24" (prefix 8..29). */
    cidr: string;
    /** How many libvirt benches (hosts) to join; default 2. */
    benches?: number;
    /** The bridge in each bench's namespace that guests are plugged into; default "nxsbr0". */
    bridge?: string;
    /** Progress lines. */
    log?: (line: string) => void;
}

export interface Segment {
    /** The segment's network namespace (`nxs-<hex>`, as a bench's). */
    netns: string;
    cidr: string;
    prefix: number;
    /** The segment namespace's own address (the subnet's .1): the machine that runs pulumi. */
    address: string;
    /** The bridge in each bench's namespace (`<interface type='bridge'><source bridge=.../>`). */
    bridge: string;
    /** The bridge inside the segment namespace. */
    segmentBridge: string;
    /** The benches, in order; benches[i]'s bridge has address benchAddresses[i]. */
    benches: Bench[];
    /** .2, .3, ...: the address of each bench's bridge. */
    benchAddresses: string[];
    /** The subnet's host number n as an address (n = 1 is `address`). */
    host(n: number): string;
    /** Runs argv inside the segment namespace. */
    exec(argv: string[], opts?: RunOptions): Promise<RunResult>;
    /** Runs a command on a test guest as root over ssh, from the segment namespace. */
    ssh(host: string, command: string[], opts?: RunOptions): Promise<RunResult>;
    /** Stops the benches, removes veths, bridges and namespaces. Idempotent. */
    stop(): Promise<void>;
}

/** The bridge in the segment namespace and the names of the veth ends (15 characters at most). */
const SEGMENT_BRIDGE = "nxsseg";
const BENCH_END = "nxsseg0";
const segmentEnd = (i: number) => `nxsport${i}`;

/** The subnet's base and prefix; host(n) its n-th address. Throws on what is not an IPv4 CIDR with room for the hosts. */
export function segmentSubnet(cidr: string, hosts: number): { prefix: number; host: (n: number) => string } {
    const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(cidr);
    const octets = m ? m.slice(1, 5).map(Number) : [];
    const prefix = m ? Number(m[5]) : NaN;
    if (!m || octets.some((o) => o > 255) || prefix < 8 || prefix > 29) throw new Error(`segment cidr ${JSON.stringify(cidr)}: want an IPv4 subnet A.B.C.D/P with P from 8 to 29`);
    const size = 2 ** (32 - prefix);
    if (hosts > size - 2) throw new Error(`segment cidr ${cidr}: ${hosts} addresses do not fit`);
    const value = octets.reduce((a, o) => a * 256 + o, 0);
    const base = value - (value % size);
    const host = (n: number) => {
        if (!Number.isInteger(n) || n < 1 || n > size - 2) throw new Error(`segment cidr ${cidr}: no host number ${n}`);
        const v = base + n;
        return [24, 16, 8, 0].map((s) => Math.floor(v / 2 ** s) % 256).join(".");
    };
    return { prefix, host };
}

export async function startSegment(options: SegmentOptions): Promise<Segment> {
    const log = options.log ?? (() => undefined);
    const count = options.benches ?? 2;
    const bridge = options.bridge ?? "nxsbr0";
    if (!Number.isInteger(count) || count < 1 || count > 9) throw new Error(`segment: benches ${count}: want 1 to 9`);
    if (!/^[A-Za-z0-9_-]{1,15}$/.test(bridge)) throw new Error(`segment: bridge ${JSON.stringify(bridge)} is not a Linux interface name`);
    const { prefix, host } = segmentSubnet(options.cidr, 1 + count);
    const t = Date.now();

    const benches: Bench[] = [];
    let ns: Netns | undefined;
    let stopped: Promise<void> | undefined;
    const ip = (args: string[], opts: RunOptions = {}) => run(["ip", ...args], { timeoutMs: 15_000, ...opts });
    const stop = async () => {
        const problems: string[] = [];
        const step = async (what: string, fn: () => Promise<unknown>) => {
            try {
                await fn();
            } catch (err) {
                problems.push(`${what}: ${(err as Error).message}`);
            }
        };
        // Each bench's teardown destroys its domains first, then deletes its
        // namespace, and with it its bridge and its veth end (the pair goes
        // with it). Should a namespace survive, its links go by hand.
        await Promise.all(benches.map((b) => step(`bench ${b.netns}`, () => b.stop())));
        for (const b of benches) {
            if (!(await namespaceExists(b.netns))) continue;
            await step(`links in ${b.netns}`, async () => {
                await ip(["-n", b.netns, "link", "del", BENCH_END], { allowFailure: true });
                await ip(["-n", b.netns, "link", "del", bridge], { allowFailure: true });
            });
        }
        if (ns) {
            const seg = ns;
            if (await namespaceExists(seg.netns)) {
                await step("segment links", async () => {
                    for (let i = 0; i < count; i++) await ip(["-n", seg.netns, "link", "del", segmentEnd(i)], { allowFailure: true });
                    await ip(["-n", seg.netns, "link", "del", SEGMENT_BRIDGE], { allowFailure: true });
                });
            }
            await step(`segment ${seg.netns}`, () => seg.stop());
        }
        if (problems.length) throw new Error(`segment teardown:\n${problems.join("\n")}`);
    };

    const segment: Segment = {
        netns: "",
        cidr: options.cidr,
        prefix,
        address: host(1),
        bridge,
        segmentBridge: SEGMENT_BRIDGE,
        benches,
        benchAddresses: Array.from({ length: count }, (_, i) => host(2 + i)),
        host,
        exec: (argv, opts = {}) => {
            if (!ns) throw new Error("segment: not started");
            return ns.exec(argv, opts);
        },
        ssh: (target, command, opts = {}) => segment.exec(sshArgv(benches[0].guest.sshKey, target, command), opts),
        stop: () => (stopped ??= stop()),
    };

    try {
        ns = await startNetns({ log });
        segment.netns = ns.netns;
        const seg = ns.netns;
        log(`segment: namespace ${seg}`);
        await ip(["-n", seg, "link", "add", SEGMENT_BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0"]);
        await ip(["-n", seg, "addr", "add", `${segment.address}/${prefix}`, "dev", SEGMENT_BRIDGE]);
        await ip(["-n", seg, "link", "set", SEGMENT_BRIDGE, "up"]);

        // The benches start together (each runs the idempotent setup-host and
        // build-test-guest, which locks); every one that started is kept for stop().
        const started = await Promise.allSettled(Array.from({ length: count }, () => startBench({ log })));
        for (const r of started) if (r.status === "fulfilled") benches.push(r.value);
        const failed = started.find((r): r is PromiseRejectedResult => r.status === "rejected");
        if (failed) throw failed.reason;

        for (const [i, b] of benches.entries()) {
            // Created inside the bench's namespace, its peer moved straight into the segment's: never in the root namespace.
            await ip(["-n", b.netns, "link", "add", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0"]);
            await ip(["-n", b.netns, "link", "add", BENCH_END, "type", "veth", "peer", "name", segmentEnd(i), "netns", seg]);
            await ip(["-n", b.netns, "link", "set", BENCH_END, "master", bridge]);
            await ip(["-n", b.netns, "addr", "add", `${segment.benchAddresses[i]}/${prefix}`, "dev", bridge]);
            await ip(["-n", b.netns, "link", "set", BENCH_END, "up"]);
            await ip(["-n", b.netns, "link", "set", bridge, "up"]);
            await ip(["-n", seg, "link", "set", segmentEnd(i), "master", SEGMENT_BRIDGE]);
            await ip(["-n", seg, "link", "set", segmentEnd(i), "up"]);
        }
        log(`segment: ${seg} (${segment.address}/${prefix}) joined to ${benches.map((b, i) => `${b.netns} (${bridge} ${segment.benchAddresses[i]})`).join(", ")} in ${Date.now() - t} ms`);
        return segment;
    } catch (err) {
        await segment.stop().catch((e: Error) => log(`segment: cleanup after failed start: ${e.message}`));
        throw err;
    }
}

async function namespaceExists(netns: string): Promise<boolean> {
    const r = await run(["ip", "netns", "list"], { timeoutMs: 10_000, allowFailure: true });
    return r.stdout.split("\n").some((l) => l.split(/\s+/)[0] === netns);
}
