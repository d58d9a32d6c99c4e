// nixspark:target and nixspark:hosts: what is refused, naming the key and the fix.
import { ConfigError, parseConfig } from "../../cluster/config";

const FP = "SHA256:" + "A".repeat(43);
const machine = (name: string, address: string, role: "master" | "worker", extra: Record<string, unknown> = {}) => ({ name, address, role, module: `machines/${name}.nix`, hostKey: FP, ...extra });
const three = [machine("lab1", "192.168.7.10", "master"), machine("lab2", "192.168.7.11", "worker"), machine("lab3", "192.168.7.12", "worker", { cores: 4, memoryMiB: 8192 })];

function problemsOf(raw: Record<string, unknown>): string[] {
    try {
        parseConfig(raw);
    } catch (e) {
        expect(e).toBeInstanceOf(ConfigError);
        return (e as ConfigError).problems;
    }
    throw new Error("expected the config to be rejected");
}

test("the default target is libvirt with no machines; a hosts stack parses with auto offers filled in", () => {
    expect(parseConfig({})).toMatchObject({ target: "libvirt", hosts: [] });
    const c = parseConfig({ target: "hosts", hosts: three });
    expect(c.hosts.map((h) => [h.name, h.cores, h.memoryMiB])).toEqual([["lab1", "auto", "auto"], ["lab2", "auto", "auto"], ["lab3", 4, 8192]]);
    expect(parseConfig({ target: "hosts", hosts: [machine("m", "10.0.0.1", "master", { hostKey: "first-use" })] }).hosts[0].hostKey).toBe("first-use");
});

test("a machine list under target libvirt is refused, with both fixes", () => {
    expect(problemsOf({ hosts: three })).toEqual([expect.stringMatching(/^nixspark:hosts: lists 3 machine\(s\), but nixspark:target is "libvirt".*pulumi config set nixspark:target hosts.*pulumi config rm nixspark:hosts$/)]);
});

test("under hosts, libvirt-only keys set to anything but their default are refused, each by name; defaults pass", () => {
    const p = problemsOf({ target: "hosts", hosts: three, workers: { count: 5 }, libvirtUri: "qemu+ssh://x/system", ssh: { hostKeys: "console" } });
    expect(p).toEqual(
        expect.arrayContaining([
            expect.stringMatching(/^nixspark:libvirtUri: set, but nixspark:target is "hosts".*pulumi config rm nixspark:libvirtUri$/),
            expect.stringMatching(/^nixspark:workers: set, .*pulumi config rm nixspark:workers$/),
            expect.stringMatching(/^nixspark:ssh\.hostKeys: set, .*hostKey/),
        ]),
    );
    expect(p).toHaveLength(3);
    expect(() => parseConfig({ target: "hosts", hosts: three, workers: { count: 2 }, libvirtUri: "qemu:///system" })).not.toThrow();
});

test("under hosts, a shared data directory (a virtiofs share of the VMs) is refused: the machines mount their own storage", () => {
    expect(problemsOf({ target: "hosts", hosts: three, data: { path: "/srv/spark-data" } })).toEqual([
        expect.stringMatching(/^nixspark:data: set, but nixspark:target is "hosts".*pulumi config rm nixspark:data$/),
    ]);
});

test("exactly one master, unique names and addresses, a non-empty list", () => {
    expect(problemsOf({ target: "hosts" })).toEqual([expect.stringMatching(/^nixspark:hosts: empty, but nixspark:target is "hosts"/)]);
    expect(problemsOf({ target: "hosts", hosts: three.map((h) => ({ ...h, role: "worker" })) })).toEqual([expect.stringMatching(/^nixspark:hosts: no machine has role "master"/)]);
    expect(problemsOf({ target: "hosts", hosts: [three[0], { ...three[1], role: "master" }] })).toEqual([expect.stringMatching(/^nixspark:hosts: 2 machines have role "master" \(lab1, lab2\).*hosts\[1\]\.role' worker/)]);
    expect(problemsOf({ target: "hosts", hosts: [three[0], { ...three[1], name: "lab1" }, { ...three[2], address: "192.168.7.10" }] })).toEqual([
        'nixspark:hosts.1.name: "lab1" is also the name of nixspark:hosts[0] (lab1); every machine needs its own name',
        'nixspark:hosts.2.address: "192.168.7.10" is also the address of nixspark:hosts[0] (lab1); every machine needs its own address',
    ]);
});

test("each machine's fields: IPv4 address, fingerprint or first-use, a relative module path, no offer on the master", () => {
    const p = problemsOf({
        target: "hosts",
        hosts: [
            machine("lab1", "lab1.example", "master", { cores: 2 }),
            machine("lab2", "10.0.0.2", "worker", { hostKey: "yes", module: "/etc/nixos/configuration.nix" }),
            machine("lab3", "10.0.0.3", "worker", { module: "../outside.nix", cores: "many" }),
        ],
    });
    expect(p).toEqual(
        expect.arrayContaining([
            expect.stringMatching(/^nixspark:hosts\.0\.address: expected an IPv4 address/),
            expect.stringMatching(/^nixspark:hosts\.1\.hostKey: expected the machine's SSH host key fingerprint \(SHA256:\.\.\..*or "first-use"/),
            expect.stringMatching(/^nixspark:hosts\.1\.module: expected a path relative to the deploy flake directory/),
            expect.stringMatching(/^nixspark:hosts\.2\.module: expected a path relative/),
            expect.stringMatching(/^nixspark:hosts\.2\.cores: /),
        ]),
    );
    // The master's offer is checked once the fields parse.
    expect(problemsOf({ target: "hosts", hosts: [machine("lab1", "10.0.0.1", "master", { cores: 2 })] })).toEqual([expect.stringMatching(/^nixspark:hosts\.0\.cores: only a worker offers Spark cores and memory.*hosts\[0\]\.cores'$/)]);
});

test("a hosts stack is not held to VM sizes or the libvirt subnet: a big executor and a routed default subnet pass loadStackConfig", () => {
    const { loadStackConfig } = require("../../cluster/stackConfig") as typeof import("../../cluster/stackConfig");
    const { defaultCidr } = require("../../cluster/subnet") as typeof import("../../cluster/subnet");
    const flat = (raw: Record<string, unknown>) => Object.fromEntries(Object.entries(raw).map(([k, v]) => [`nixspark:${k}`, typeof v === "string" ? v : JSON.stringify(v)]));
    const routes = [{ cidr: defaultCidr("dev"), iface: "eth9" }];
    const spark = { settings: { "spark.executor.memory": "16g" } };
    expect(loadStackConfig("dev", flat({ target: "hosts", hosts: three, spark }), routes).config.target).toBe("hosts");
    // The same settings on target libvirt are refused for both reasons.
    expect(() => loadStackConfig("dev", flat({ spark }), routes)).toThrow(/spark\.executor\.memory[\s\S]*nixspark:network\.cidr/);
});
