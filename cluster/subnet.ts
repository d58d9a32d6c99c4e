// The cluster subnet when the stack config names none, and the check that a
// subnet is not already in use on this host.
//
// Every stack used to default to 10.77.0.0/24, so a second stack on the same
// host failed when its network started, after its pool and volumes existed.
// The default is now a /24 derived from the stack name, and before anything is
// registered the program refuses a subnet that a host route already covers
// (another libvirt network's bridge, a VPN, the LAN), naming both.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import { Address4 } from "ip-address";

/**
 * A /24 inside 10.64.0.0/10 chosen by the stack name: stable for a stack,
 * and different stacks rarely meet (1 in 16384). Away from the 10.0.x and
 * 10.1.x ranges home and office networks tend to use.
 */
export function defaultCidr(stack: string): string {
    const h = createHash("sha256").update(`nixspark-subnet:${stack}`).digest();
    const second = 64 + (h[0] & 0x3f);
    const third = h[1];
    return `10.${second}.${third}.0/24`;
}

/** One IPv4 route of this host: destination network and the interface it leaves by. */
export interface HostRoute {
    iface: string;
    cidr: string;
}

/**
 * The host's IPv4 routes from /proc/net/route (no process to start: this runs
 * on every preview). Little-endian hex destination and mask, as the kernel
 * prints them. Default routes (mask 0) are left out: they cover everything.
 */
export function hostRoutes(text?: string): HostRoute[] {
    let src = text;
    if (src === undefined) {
        try {
            src = fs.readFileSync("/proc/net/route", "utf8");
        } catch {
            return [];
        }
    }
    const le = (hex: string) => {
        const n = parseInt(hex, 16) >>> 0;
        return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff].join(".");
    };
    const routes: HostRoute[] = [];
    for (const line of src.split("\n").slice(1)) {
        const f = line.trim().split(/\s+/);
        if (f.length < 8 || !/^[0-9A-Fa-f]{8}$/.test(f[1]) || !/^[0-9A-Fa-f]{8}$/.test(f[7])) continue;
        const mask = le(f[7]);
        const prefix = mask.split(".").reduce((bits, o) => bits + (Number(o).toString(2).match(/1/g) ?? []).length, 0);
        if (prefix === 0) continue;
        routes.push({ iface: f[0], cidr: `${le(f[1])}/${prefix}` });
    }
    return routes;
}

function range(cidr: string): [bigint, bigint] {
    const a = new Address4(cidr);
    return [a.startAddress().bigInt(), a.endAddress().bigInt()];
}

/** Whether two IPv4 subnets share any address. */
export function overlaps(a: string, b: string): boolean {
    const [a0, a1] = range(a);
    const [b0, b1] = range(b);
    return a0 <= b1 && b0 <= a1;
}

/**
 * The host routes that overlap the cluster subnet, except the stack's own
 * bridge (its network is up: that route is ours).
 */
export function conflictingRoutes(cidr: string, ownBridge: string, routes: HostRoute[] = hostRoutes()): HostRoute[] {
    return routes.filter((r) => r.iface !== ownBridge && overlaps(cidr, r.cidr));
}
