// The default cluster subnet is the stack's own, and a subnet the host
// already routes is refused before anything is registered.
import fc from "fast-check";
import { parseConfig } from "../../cluster/config";
import { buildTopology } from "../../cluster/topology";
import { checkSubnetFree, loadStackConfig } from "../../cluster/stackConfig";
import { conflictingRoutes, defaultCidr, hostRoutes, overlaps } from "../../cluster/subnet";

// /proc/net/route as the kernel prints it: little-endian hex.
const PROC = [
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT",
    "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0",
    "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0",
    "nxs-other\t00004D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0",
    "wg0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0",
].join("\n");

describe("the default subnet", () => {
    test("is a /24 in 10.64.0.0/10, the same for a stack every time", () => {
        fc.assert(
            fc.property(fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,20}$/), (stack) => {
                const cidr = defaultCidr(stack);
                expect(cidr).toBe(defaultCidr(stack));
                expect(overlaps(cidr, "10.64.0.0/10")).toBe(true);
                expect(cidr).toMatch(/^10\.\d+\.\d+\.0\/24$/);
            }),
        );
    });

    test("two stacks with default settings get different subnets (here: dev and prod, and most pairs)", () => {
        expect(defaultCidr("dev")).not.toBe(defaultCidr("prod"));
        const names = Array.from({ length: 50 }, (_, i) => `stack${i}`);
        expect(new Set(names.map(defaultCidr)).size).toBe(50);
    });

    test("the topology uses it when network.cidr is not set; an explicit one wins", () => {
        const t = buildTopology("dev", parseConfig({}));
        expect(t.cidr).toBe(defaultCidr("dev"));
        expect(t.master.ip).toBe(defaultCidr("dev").replace(/0\/24$/, "10"));
        expect(buildTopology("dev", parseConfig({ network: { cidr: "10.77.0.0/24" } })).cidr).toBe("10.77.0.0/24");
    });
});

describe("a subnet the host already routes", () => {
    test("host routes are read from the kernel's table (default routes left out)", () => {
        expect(hostRoutes(PROC)).toEqual([
            { iface: "eth0", cidr: "192.0.2.0/24" },
            { iface: "nxs-other", cidr: "10.77.0.0/24" },
            { iface: "wg0", cidr: "10.0.0.0/8" },
        ]);
        // This machine's own table parses too.
        expect(Array.isArray(hostRoutes())).toBe(true);
    });

    test("overlap is any shared address, either way round", () => {
        expect(overlaps("10.77.0.0/24", "10.0.0.0/8")).toBe(true);
        expect(overlaps("10.0.0.0/8", "10.77.0.0/24")).toBe(true);
        expect(overlaps("10.77.0.0/24", "10.77.1.0/24")).toBe(false);
        expect(overlaps("10.77.0.0/23", "10.77.1.0/24")).toBe(true);
    });

    test("is refused naming both subnets and the interface; the stack's own bridge is not a conflict", () => {
        const routes = hostRoutes(PROC).filter((r) => r.iface !== "wg0");
        const cfg = parseConfig({ network: { cidr: "10.77.0.0/24" } });
        const topo = buildTopology("dev", cfg);
        expect(() => checkSubnetFree(cfg, topo, routes)).toThrow(
            /nixspark:network.cidr is 10\.77\.0\.0\/24, which this host already routes \(10\.77\.0\.0\/24 on nxs-other\).*pulumi config set --path network.cidr/,
        );
        const own = buildTopology("dev", parseConfig({ network: { cidr: "10.77.0.0/24", bridge: "nxs-other" } }));
        expect(conflictingRoutes(own.cidr, own.bridge, routes)).toEqual([]);
        expect(() => checkSubnetFree(cfg, buildTopology("dev", parseConfig({ network: { cidr: "10.78.0.0/24" } })), routes)).not.toThrow();
    });

    test("the program stops before registering anything, saying it is the default when it is", () => {
        const all = { "nixspark:workers": JSON.stringify({ count: 1 }) };
        const mine = defaultCidr("dev");
        const routes = [{ iface: "virbr9", cidr: mine }];
        expect(() => loadStackConfig("dev", all, routes)).toThrow(new RegExp(`not set: the default for stack "dev"\\) is ${mine.replace(/[./]/g, "\\$&")}.*on virbr9`));
        expect(loadStackConfig("dev", all, []).topology.cidr).toBe(mine);
    });
});
