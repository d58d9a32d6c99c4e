// The XML we hand to libvirt passes libvirt's own schema validator, and the
// readers pick the same facts back out.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseConfig } from "../../cluster/config";
import { buildTopology } from "../../cluster/topology";
import { domainXml, guestResilience, networkXml, poolXml, readDomain, readNetwork, readPool, readVolume, volumeXml } from "../../providers/libvirtXml";
import { ensureHostTools } from "../helpers/hostTools";

const t = buildTopology("dev", parseConfig({ workers: { count: 3 } }));
const hosts = t.nodes.map((n) => ({ mac: n.mac, ip: n.ip, name: n.hostname }));
const net = { name: t.networkName, bridge: t.bridge, gateway: t.gateway, netmask: t.netmask, dhcpStart: t.dhcpRange.start, dhcpEnd: t.dhcpRange.end, hosts };
const dom = {
    name: "dev-master",
    domainType: "qemu" as const,
    vcpus: 2,
    memoryMiB: 1024,
    diskPath: "/var/lib/libvirt/images/nixspark/dev/dev-master.qcow2",
    mac: t.master.mac,
    network: t.networkName,
    consoleLog: "/var/log/libvirt/qemu/dev-master-console.log",
};

let dir: string;
beforeAll(() => {
    ensureHostTools(["virt-xml-validate", "xmllint"]);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-xml-"));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function validate(xml: string, kind: string): { ok: boolean; out: string } {
    const file = path.join(dir, `${kind}-${Math.random().toString(36).slice(2)}.xml`);
    fs.writeFileSync(file, xml);
    const r = spawnSync("virt-xml-validate", [file, kind], { encoding: "utf8", timeout: 30_000 });
    return { ok: r.status === 0, out: `${r.stdout}${r.stderr}` };
}

describe("libvirt XML", () => {
    test.each([
        ["network", networkXml(net)],
        ["storagevol", volumeXml({ name: "dev-master.qcow2", capacityBytes: 10 * 1024 ** 3, backingPath: "/nix/store/x-image/nixos.qcow2" })],
        ["storagepool", poolXml("dev-pool", "/var/lib/libvirt/images/nixspark/dev")],
        ["domain", domainXml(dom)],
        ["domain", domainXml({ ...dom, domainType: "kvm" })],
        ["domain", domainXml({ ...dom, kernel: "/boot/vmlinuz", initrd: "/boot/initrd.img", cmdline: "console=ttyS0 quiet" })],
        ["domain", domainXml({ ...dom, hostname: "dev-master" })],
        // The shared data directory (nixspark:data): shared memory and a virtiofs filesystem, with and without virtiofsd's path.
        ["domain", domainXml({ ...dom, dataDir: "/srv/spark data", dataTag: "nixspark-data" })],
        ["domain", domainXml({ ...dom, kernel: "/boot/vmlinuz", dataDir: "/srv/d", dataTag: "t".repeat(36), virtiofsd: "/usr/lib/qemu/virtiofsd" })],
        ["domain", domainXml({ ...dom, hostname: "dev-worker-1", uuid: "0f6d3c1e-5a4b-4c2d-9e8f-7a6b5c4d3e2f", kernel: "/boot/vmlinuz", initrd: "/boot/initrd.img" })],
        // What a redefinition writes for each change a restart applies (same UUID, the new value).
        ...(
            [
                ["consoleLog", "/var/log/nixspark/dev-master-console.log"],
                ["cmdline", "console=ttyS0 quiet nixspark.generation=2"],
                ["kernel", "/boot/vmlinuz-6.1"],
                ["initrd", "/boot/initrd-6.1.img"],
                ["network", "dev-net-2"],
                ["domainType", "kvm"],
                ["hostname", "dev-master-2"],
                ["dataDir", "/srv/spark-data"],
                ["resilience", guestResilience()],
            ] as const
        ).map(([k, v]) => ["domain", domainXml({ ...dom, kernel: "/boot/vmlinuz", initrd: "/boot/initrd.img", cmdline: "console=ttyS0", hostname: "dev-master", uuid: "0f6d3c1e-5a4b-4c2d-9e8f-7a6b5c4d3e2f", dataTag: "nixspark-data", [k]: v })]),
    ])("%s XML passes virt-xml-validate", (kind, xml) => {
        const r = validate(xml, kind);
        expect(r.out).toMatch(/validates/);
        expect(r.ok).toBe(true);
    });

    test("the validator does catch a broken document (so the checks above mean something)", () => {
        const r = validate(networkXml({ ...net, gateway: "300.1.1.1" }), "network");
        expect(r.ok).toBe(false);
    });

    test("the host name reaches the guest as the systemd credential system.hostname in an SMBIOS OEM string", () => {
        const xml = domainXml({ ...dom, hostname: "dev-worker-1" });
        expect(xml).toMatch(/<os>[\s\S]*<smbios mode='sysinfo'\/>[\s\S]*<\/os>/);
        expect(xml).toMatch(/<sysinfo type='smbios'>\s*<oemStrings>\s*<entry>io\.systemd\.credential:system\.hostname=dev-worker-1<\/entry>\s*<\/oemStrings>\s*<\/sysinfo>/);
        expect(readDomain(xml).hostname).toBe("dev-worker-1");
        // Without a host name: no SMBIOS strings at all.
        expect(domainXml(dom)).not.toMatch(/sysinfo|smbios/);
        expect(readDomain(domainXml(dom)).hostname).toBeUndefined();
        // libvirt's own dumpxml style (double quotes, other OEM strings first).
        const dumped = `<domain type="qemu"><name>x</name><sysinfo type="smbios"><oemStrings><entry>other</entry><entry>io.systemd.credential:system.hostname=x-1</entry></oemStrings></sysinfo></domain>`;
        expect(readDomain(dumped).hostname).toBe("x-1");
    });

    test("the shared data directory: shared memory for virtiofsd and a virtiofs filesystem by tag, read back from the definition; none without it", () => {
        const xml = domainXml({ ...dom, dataDir: "/srv/spark-data", dataTag: "nixspark-data", virtiofsd: "/usr/lib/qemu/virtiofsd" });
        expect(xml).toMatch(/<memoryBacking>\s*<source type='memfd'\/>\s*<access mode='shared'\/>\s*<\/memoryBacking>/);
        expect(xml).toMatch(
            /<filesystem type='mount' accessmode='passthrough'>\s*<driver type='virtiofs'\/>\s*<binary path='\/usr\/lib\/qemu\/virtiofsd'\/>\s*<source dir='\/srv\/spark-data'\/>\s*<target dir='nixspark-data'\/>\s*<\/filesystem>/,
        );
        // No <readonly/>: libvirt 9.0 refuses it for virtiofs; the nodes mount it read-only.
        expect(xml).not.toContain("readonly");
        expect(readDomain(xml)).toMatchObject({ dataDir: "/srv/spark-data", dataTag: "nixspark-data", virtiofsd: "/usr/lib/qemu/virtiofsd" });
        const plain = domainXml(dom);
        expect(plain).not.toMatch(/memoryBacking|filesystem/);
        expect(readDomain(plain)).not.toHaveProperty("dataDir");
        expect(() => domainXml({ ...dom, dataDir: "/srv/d" })).toThrow(/needs a dataTag/);
        // libvirt's live XML of a running VM: an alias and a PCI address on the device, the binary's defaults.
        const live = `<domain type='qemu' id='5'><name>x</name><devices><filesystem type='mount' accessmode='passthrough'><driver type='virtiofs' queue='1024'/><binary path='/usr/lib/qemu/virtiofsd'/><source dir='/srv/d'/><target dir='tag'/><alias name='fs0'/><address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/></filesystem></devices></domain>`;
        expect(readDomain(live)).toMatchObject({ dataDir: "/srv/d", dataTag: "tag", virtiofsd: "/usr/lib/qemu/virtiofsd" });
    });

    test("resilience: a watchdog that resets a hung guest and a pvpanic (ISA) device, on_crash restart; readers get them back, also from libvirt's live XML", () => {
        const xml = domainXml({ ...dom, resilience: guestResilience() });
        expect(xml).toMatch(/<on_crash>restart<\/on_crash>/);
        expect(xml).toMatch(/<devices>[\s\S]*<watchdog model='i6300esb' action='reset'\/>\s*<panic model='isa'\/>[\s\S]*<\/devices>/);
        expect(readDomain(xml)).toMatchObject({ resilience: guestResilience(), onCrash: "restart" });
        // Without it (a domain defined before): neither device, which a diff then sees as a change.
        expect(domainXml(dom)).not.toMatch(/watchdog|panic/);
        expect(readDomain(domainXml(dom)).resilience).toBeUndefined();
        // libvirt's live XML: aliases and the addresses it assigned.
        const live = `<domain type='qemu' id='5'><name>x</name><on_crash>restart</on_crash><devices><rng model='virtio'/>
  <watchdog model='i6300esb' action='reset'><alias name='watchdog0'/><address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/></watchdog>
  <panic model='isa'><address type='isa' iobase='0x505'/></panic></devices></domain>`;
        expect(readDomain(live)).toMatchObject({ resilience: "watchdog i6300esb/reset, panic isa", onCrash: "restart" });
        expect(readDomain(`<domain type='qemu'><name>x</name><devices><watchdog model='i6300esb' action='pause'/></devices></domain>`).resilience).toBe("watchdog i6300esb/pause");
    });

    test("a host name that is not an RFC 1123 label is refused before libvirt sees it", () => {
        for (const bad of ["-x", "x-", "a_b", "a.b", "a b", "a".repeat(64), "x</entry>"]) expect(() => domainXml({ ...dom, hostname: bad })).toThrow(/RFC 1123/);
        expect(() => domainXml({ ...dom, hostname: "a".repeat(63) })).not.toThrow();
    });

    test("names with XML metacharacters are escaped", () => {
        const xml = domainXml({ ...dom, kernel: "/k", cmdline: "a<b & 'c'" });
        expect(xml).toContain("<cmdline>a&lt;b &amp; &apos;c&apos;</cmdline>");
        expect(validate(xml, "domain").ok).toBe(true);
    });

    test("readers get back what the builders wrote", () => {
        const n = readNetwork(networkXml(net));
        expect(n).toMatchObject({ name: "dev-net", bridge: "nxs-dev", gateway: t.gateway, netmask: "255.255.255.0", dhcpStart: t.dhcpRange.start });
        expect(t.gateway).toMatch(/^10\.\d+\.\d+\.1$/); // (the default subnet is derived from the stack name)
        expect(n.hosts).toEqual([...hosts].sort((a, b) => (a.mac < b.mac ? -1 : 1)));
        expect(readDomain(domainXml(dom))).toMatchObject({ name: "dev-master", domainType: "qemu", vcpus: 2, memoryMiB: 1024, diskPath: dom.diskPath, mac: dom.mac, network: "dev-net" });
        expect(readVolume(volumeXml({ name: "v", capacityBytes: 1024, backingPath: "/b.qcow2" }))).toMatchObject({ name: "v", capacityBytes: 1024, backingPath: "/b.qcow2" });
    });

    test("readers get back what a restart applies: kernel, initrd, command line, console log (also from a running domain's live XML)", () => {
        const written = domainXml({ ...dom, kernel: "/boot/vmlinuz", initrd: "/boot/initrd.img", cmdline: "console=ttyS0 a<b", hostname: "dev-master" });
        expect(readDomain(written)).toMatchObject({ kernel: "/boot/vmlinuz", initrd: "/boot/initrd.img", cmdline: "console=ttyS0 a<b", consoleLog: dom.consoleLog, hostname: "dev-master", domainType: "qemu", network: dom.network });
        // Disk boot: no kernel, initrd or command line at all.
        const diskBoot = readDomain(domainXml(dom));
        expect([diskBoot.kernel, diskBoot.initrd, diskBoot.cmdline]).toEqual([undefined, undefined, undefined]);
        // libvirt's live XML: the pty's path, aliases, and the <console> mirroring serial 0 with the same log.
        const live = `<domain type='qemu' id='4'><name>x</name><os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><kernel>/k</kernel><initrd>/i</initrd><cmdline>console=ttyS0 x=1</cmdline><boot dev='hd'/></os>
  <devices><serial type='pty'><source path='/dev/pts/3'/><log file='/var/log/x-console.log' append='on'/><target type='isa-serial' port='0'><model name='isa-serial'/></target><alias name='serial0'/></serial>
  <console type='pty' tty='/dev/pts/3'><source path='/dev/pts/3'/><log file='/var/log/x-console.log' append='on'/><target type='serial' port='0'/><alias name='serial0'/></console></devices></domain>`;
        expect(readDomain(live)).toMatchObject({ kernel: "/k", initrd: "/i", cmdline: "console=ttyS0 x=1", consoleLog: "/var/log/x-console.log" });
    });

    test("readers understand libvirt's own dumpxml style (KiB memory, prefix, double quotes)", () => {
        const dumped = `<domain type='qemu' id='3'>\n  <name>x</name>\n  <uuid>1-2</uuid>\n  <memory unit='KiB'>1048576</memory>\n  <vcpu placement='static'>3</vcpu>\n  <devices>\n    <disk type="file" device="disk">\n      <driver name='qemu' type='qcow2'/>\n      <source file='/p/x.qcow2' index='1'/>\n      <backingStore type='file' index='2'/>\n    </disk>\n    <interface type='network'>\n      <mac address='02:AA:bb:cc:dd:ee'/>\n      <source network='n' portid='z' bridge='br'/>\n    </interface>\n  </devices>\n</domain>`;
        expect(readDomain(dumped)).toEqual({ name: "x", uuid: "1-2", domainType: "qemu", vcpus: 3, memoryMiB: 1024, diskPath: "/p/x.qcow2", mac: "02:aa:bb:cc:dd:ee", network: "n" });
        expect(readNetwork(`<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.0.2' end='10.0.0.9'/></dhcp></ip></network>`).netmask).toBe("255.255.255.0");
    });

    // What regular expressions got wrong: the first <disk> may be a CD-ROM,
    // comments and entities appear, attributes come in any order and quoting,
    // a <source> of the interface is not the disk's, units vary.
    test("readers parse XML as XML: entities, comments, nested elements, device order, units", () => {
        const dumped = `<?xml version="1.0"?>
<!-- written by libvirt -->
<domain id="7" type="kvm">
  <name>a&amp;b</name>
  <uuid>u-1</uuid>
  <memory unit="GiB">2</memory>
  <vcpu placement="static" current="1">4</vcpu>
  <sysinfo type="smbios"><oemStrings><entry>x=&lt;y&gt;</entry><entry>io.systemd.credential:system.hostname=h-1</entry></oemStrings></sysinfo>
  <devices>
    <interface type="network"><source network="net-1"/><mac address="02:AB:00:00:00:01"/></interface>
    <disk device="cdrom" type="file"><source file="/iso/x.iso"/><target dev="sda"/></disk>
    <disk device="disk" type="file"><!-- the node's overlay --><source file="/p/a.qcow2"/><target dev="vda"/></disk>
  </devices>
</domain>`;
        expect(readDomain(dumped)).toEqual({ name: "a&b", uuid: "u-1", domainType: "kvm", vcpus: 4, memoryMiB: 2048, diskPath: "/p/a.qcow2", mac: "02:ab:00:00:00:01", network: "net-1", hostname: "h-1" });
        const vol = `<volume type="file"><name>n.qcow2</name><capacity unit="bytes">2147483648</capacity><allocation unit="bytes">200704</allocation>
  <target><path>/pool/n.qcow2</path><format type="qcow2"/></target>
  <backingStore><path>/pool/e2e-base-1a2b.qcow2</path><format type="qcow2"/></backingStore></volume>`;
        expect(readVolume(vol)).toEqual({ name: "n.qcow2", path: "/pool/n.qcow2", capacityBytes: 2147483648, backingPath: "/pool/e2e-base-1a2b.qcow2", format: "qcow2" });
        // No backing store (libvirt prints an empty one or none).
        expect(readVolume(`<volume><name>b</name><capacity unit="G">1</capacity><target><path>/pool/b</path></target><backingStore/></volume>`)).toMatchObject({ capacityBytes: 1024 ** 3, backingPath: undefined });
        expect(readPool(`<pool type="dir"><name>p</name><target><path>/x/p</path></target></pool>`)).toEqual({ name: "p", type: "dir", path: "/x/p" });
        expect(() => readDomain(vol)).toThrow(/expected a <domain> document/);
    });
});
