// Self-check of the libvirt test bench (tests/helpers/libvirtBench.ts): a
// real libvirtd in a private network namespace runs a NAT network with a DHCP
// reservation, a directory pool with a qcow2 overlay on the base image, and
// one tiny guest booted by direct kernel boot. The guest must take the
// reserved address and name, serve HTTP and ssh, see its disk, and power off
// on `virsh shutdown` (ACPI). Then stop() must leave nothing behind.
import * as fs from "node:fs";
import * as path from "node:path";
import { randomBytes, randomInt } from "node:crypto";
import { Bench, natNetworkXml, startBench, tailFile, testGuestDomainXml, waitFor } from "../helpers/libvirtBench";

const timings: Record<string, string> = {};
const since = (t0: number) => `${((Date.now() - t0) / 1000).toFixed(1)} s`;

let bench: Bench | undefined;

beforeAll(async () => {
    const t0 = Date.now();
    bench = await startBench();
    timings["setup-host"] = `${(bench.timings.setupHostMs / 1000).toFixed(1)} s`;
    timings["build-test-guest"] = `${(bench.timings.buildGuestMs / 1000).toFixed(1)} s`;
    timings["daemons up"] = `${(bench.timings.daemonsMs / 1000).toFixed(1)} s`;
    timings["startBench total"] = since(t0);
}, 20 * 60_000);

afterAll(async () => {
    await bench?.stop();
    console.log(`bench timings: ${JSON.stringify(timings)}`);
}, 120_000);

describe("libvirt test bench", () => {
    const x = randomInt(0, 256);
    const gateway = `10.213.${x}.1`;
    const ip = `10.213.${x}.11`;
    const mac = `52:54:00:${randomBytes(3).toString("hex").match(/../g)!.join(":")}`;
    const hostname = "bench-guest-1";
    const network = "nxs-bench-net";
    const pool = "nxs-bench-pool";
    const basePool = "nxs-bench-base";
    const domain = "nxs-bench-guest-1";

    test("a guest takes its reserved address, serves http and ssh, and powers off on ACPI", async () => {
        const b = bench!;
        const file = (name: string, text: string) => {
            const p = path.join(b.dir, name);
            fs.writeFileSync(p, text);
            return p;
        };

        // Network with a reservation (MAC -> IP -> hostname).
        await b.virsh(["net-define", file("net.xml", natNetworkXml({ name: network, gateway, hosts: [{ mac, name: hostname, ip }] }))]);
        await b.virsh(["net-start", network]);

        // Volume: a qcow2 overlay backed by the base image, in a dir pool.
        // libvirt resolves --backing-vol only to a volume of some pool, so
        // the base image's directory is a pool too (outside the bench dir:
        // stop() undefines it but leaves the directory alone).
        await b.virsh(["pool-define-as", basePool, "dir", "--target", path.dirname(b.guest.baseImage)]);
        await b.virsh(["pool-start", basePool]);
        const poolDir = path.join(b.dir, "pool");
        fs.mkdirSync(poolDir);
        await b.virsh(["pool-define-as", pool, "dir", "--target", poolDir]);
        await b.virsh(["pool-start", pool]);
        await b.virsh(["vol-create-as", pool, `${domain}.qcow2`, "64M", "--format", "qcow2",
            "--backing-vol", b.guest.baseImage, "--backing-vol-format", "qcow2"]);
        const disk = (await b.virsh(["vol-path", "--pool", pool, `${domain}.qcow2`])).stdout.trim();
        expect(disk).toBe(path.join(poolDir, `${domain}.qcow2`));

        // Domain: direct kernel boot, virtio disk, NIC with the reserved MAC.
        const serialLog = path.join(b.dir, `${domain}.serial.log`);
        const xml = file("domain.xml", testGuestDomainXml({ name: domain, guest: b.guest, network, mac, disk, serialLog }));
        await b.virsh(["define", xml]);
        const t0 = Date.now();
        await b.virsh(["start", domain]);
        const serial = () => `serial console of ${domain}:\n${tailFile(serialLog)}`;

        await waitFor(
            "DHCP lease for the reserved MAC",
            async () => {
                const leases = (await b.virsh(["net-dhcp-leases", network, "--mac", mac])).stdout;
                return leases.includes(`${ip}/24`) ? leases : undefined;
            },
            { timeoutMs: 90_000, intervalMs: 250, diagnose: serial },
        );
        timings["guest start -> DHCP lease"] = since(t0);

        const page = await waitFor(
            `http://${ip}/ from inside the namespace`,
            async () => {
                const r = await b.exec(["wget", "-qO-", "-T", "3", `http://${ip}/`], { timeoutMs: 10_000, allowFailure: true });
                return r.code === 0 ? r.stdout : undefined;
            },
            { timeoutMs: 60_000, intervalMs: 250, diagnose: serial },
        );
        timings["guest start -> http"] = since(t0);
        expect(page.trim()).toBe(hostname);

        const info = (await b.exec(["wget", "-qO-", "-T", "5", `http://${ip}/info.txt`])).stdout;
        expect(info).toContain(`ip=${ip}\n`);
        expect(info).toContain(`mac=${mac}\n`);
        expect(info).toMatch(/^disks=.*\bvda\b/m);

        const ssh = await waitFor(
            `ssh root@${ip}`,
            async () => {
                const r = await b.ssh(ip, ["hostname"], { timeoutMs: 30_000, allowFailure: true });
                return r.code === 0 ? r.stdout : undefined;
            },
            { timeoutMs: 60_000, intervalMs: 500, diagnose: serial },
        );
        timings["guest start -> ssh"] = since(t0);
        expect(ssh.trim()).toBe(hostname);

        const t1 = Date.now();
        await b.virsh(["shutdown", domain]);
        await waitFor(
            `${domain} shut off after ACPI shutdown`,
            async () => ((await b.virsh(["domstate", domain])).stdout.trim() === "shut off" ? true : undefined),
            { timeoutMs: 60_000, intervalMs: 250, diagnose: serial },
        );
        timings["ACPI shutdown -> shut off"] = since(t1);
        expect(tailFile(serialLog)).toContain("power button pressed");
    }, 10 * 60_000);

    test("stop() leaves no namespace, daemon or directory behind", async () => {
        const b = bench!;
        const pids = (await b.exec(["ip", "netns", "pids", b.netns])).stdout.split(/\s+/).filter(Boolean).map(Number);
        expect(pids.length).toBeGreaterThanOrEqual(2); // libvirtd, virtlogd (+ dnsmasq)

        const t0 = Date.now();
        await b.stop();
        timings["stop"] = since(t0);

        expect(fs.existsSync(`/run/netns/${b.netns}`)).toBe(false);
        expect(fs.existsSync(b.dir)).toBe(false);
        const running = pids.filter((p) => {
            try {
                return !/^\d+ \(.*\) Z/s.test(fs.readFileSync(`/proc/${p}/stat`, "utf8"));
            } catch {
                return false;
            }
        });
        expect(running).toEqual([]);
        await b.stop(); // idempotent
    }, 120_000);
});
