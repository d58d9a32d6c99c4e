import fc from "fast-check";
import { Address4 } from "ip-address";
import { parseConfig } from "../../cluster/config";
import { buildTopology, capacity, defaultBridge, macFor, nodeNames, TopologyError } from "../../cluster/topology";

const cfg = (workers: number, cidr = "10.77.0.0/24") => parseConfig({ workers: { count: workers }, network: { cidr } });
const ipNum = (ip: string) => new Address4(ip).bigInt();

describe("topology", () => {
    test("dev topology: names, addresses, prefixes", () => {
        const t = buildTopology("dev", cfg(2));
        expect(t.nodes.map((n) => n.name)).toEqual(["master", "worker-1", "worker-2"]);
        expect(t.nodes.map((n) => n.domainName)).toEqual(["dev-master", "dev-worker-1", "dev-worker-2"]);
        expect(t.nodes.map((n) => n.ip)).toEqual(["10.77.0.10", "10.77.0.11", "10.77.0.12"]);
        expect(t.gateway).toBe("10.77.0.1");
        expect(t.netmask).toBe("255.255.255.0");
        expect(t.dhcpRange).toEqual({ start: "10.77.0.192", end: "10.77.0.254" });
        expect(t.networkName).toBe("dev-net");
        expect(t.bridge).toBe("nxs-dev");
        expect(t.poolName).toBe("dev-pool");
        expect(t.master.volumeName).toBe("dev-master.qcow2");
    });

    test("MACs are stable, locally administered, unicast and per stack", () => {
        const a = macFor("dev", "worker-1");
        expect(a).toBe(macFor("dev", "worker-1"));
        expect(a).not.toBe(macFor("prod", "worker-1"));
        expect(a).toMatch(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
        const first = parseInt(a.slice(0, 2), 16);
        expect(first & 0b10).toBe(0b10);
        expect(first & 0b01).toBe(0);
    });

    test("a long stack name gets a hashed bridge within 15 characters", () => {
        expect(defaultBridge("a-very-long-stack-name").length).toBeLessThanOrEqual(15);
        expect(defaultBridge("a-very-long-stack-name")).toBe(defaultBridge("a-very-long-stack-name"));
    });

    test("a subnet too small for the count says how big it must be", () => {
        expect(() => buildTopology("dev", cfg(3, "10.1.0.0/28"))).toThrow(TopologyError);
        expect(() => buildTopology("dev", cfg(3, "10.1.0.0/28"))).toThrow(
            /nixspark:network.cidr: 10.1.0.0\/28 has room for 2 node\(s\).*workers.count = 3 needs 4; use a larger subnet such as \/24/,
        );
        expect(() => buildTopology("dev", cfg(200))).toThrow(/such as \/23/);
    });

    test("a malformed or unaligned subnet is rejected with the fix", () => {
        expect(() => buildTopology("dev", cfg(1, "10.1.0.0"))).toThrow(/not an IPv4 subnet in CIDR form/);
        expect(() => buildTopology("dev", cfg(1, "300.1.0.0/24"))).toThrow(/not an IPv4 subnet/);
        expect(() => buildTopology("dev", cfg(1, "10.1.0.5/24"))).toThrow(/host bits set; the subnet is 10.1.0.0\/24/);
    });

    test("names that would exceed a hostname label are rejected", () => {
        const stack = "s".repeat(60);
        expect(() => buildTopology(stack, cfg(2))).toThrow(/too long.*at most 54 characters/);
    });

    test("property: every address is unique, inside the subnet, and outside the DHCP range", () => {
        fc.assert(
            fc.property(fc.integer({ min: 22, max: 27 }), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 250 }), (prefix, octet, count) => {
                const cidr = new Address4(`10.${octet}.0.0/${prefix}`).startAddress().address + `/${prefix}`;
                if (1 + count > capacity(cidr)) {
                    expect(() => buildTopology("p", cfg(count, cidr))).toThrow(/has room for/);
                    return;
                }
                const t = buildTopology("p", cfg(count, cidr));
                const net = new Address4(cidr);
                const lo = net.startAddress().bigInt();
                const hi = net.endAddress().bigInt();
                const ips = t.nodes.map((n) => ipNum(n.ip));
                expect(new Set(ips).size).toBe(ips.length);
                expect(new Set(t.nodes.map((n) => n.mac)).size).toBe(ips.length);
                const ds = ipNum(t.dhcpRange.start);
                const de = ipNum(t.dhcpRange.end);
                expect(ds <= de).toBe(true);
                for (const ip of [...ips, ds, de, ipNum(t.gateway)]) {
                    expect(ip > lo && ip < hi).toBe(true);
                }
                for (const ip of [...ips, ipNum(t.gateway)]) expect(ip < ds || ip > de).toBe(true);
                expect(ips).not.toContain(ipNum(t.gateway));
            }),
            { numRuns: 300 },
        );
    });

    test("property: scaling keeps every existing node's address and MAC", () => {
        fc.assert(
            fc.property(fc.integer({ min: 0, max: 50 }), fc.integer({ min: 0, max: 50 }), (a, b) => {
                const small = buildTopology("s", cfg(Math.min(a, b)));
                const big = buildTopology("s", cfg(Math.max(a, b)));
                for (const n of small.nodes) {
                    const m = big.nodes.find((x) => x.name === n.name)!;
                    expect([m.ip, m.mac, m.domainName]).toEqual([n.ip, n.mac, n.domainName]);
                }
            }),
        );
    });

    test("nodeNames", () => {
        expect(nodeNames(0)).toEqual(["master"]);
        expect(nodeNames(2)).toEqual(["master", "worker-1", "worker-2"]);
    });
});
