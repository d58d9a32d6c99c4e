// Target "hosts" below the engine (the engine story is tests/e2e/hosts.test.ts):
// the stack settings the flake gets about the machines, the loud first-use
// line, and a hosts stack's outputs as status and the nixspark verbs read them.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseConfig } from "../../cluster/config";
import { nixStackParams } from "../../cluster/nixParams";
import { parseStackOutputs } from "../../cluster/sparkStatus";
import { checkHostModules, coveringSubnet, hostsStackParams, prepareHostsNix } from "../../cluster/targets/hostsNix";
import { FIXTURES, NIX_DIR, tempDir } from "../fixtures/nix-env";
import { firstUseWarnings } from "../../cluster/targets/hosts";
import { targetOf } from "../../cli/remote";

const FP = "SHA256:" + "A".repeat(43);
const KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEx6eUq1 test";
const cfg = parseConfig({
    target: "hosts",
    ssh: { publicKey: KEY },
    hosts: [
        { name: "lab1", address: "192.168.7.20", role: "master", module: "machines/lab1.nix", hostKey: FP },
        { name: "lab2", address: "192.168.7.3", role: "worker", sshUser: "ops", sshPort: 2222, module: "./machines/lab2.nix", hostKey: "first-use" },
        { name: "lab3", address: "192.168.7.45", role: "worker", cores: 4, memoryMiB: 8192, module: "machines/lab3.nix", hostKey: FP },
    ],
});

test("the smallest subnet that holds every machine; machines more than a /8 apart are refused", () => {
    expect(coveringSubnet(["192.168.7.20", "192.168.7.3", "192.168.7.45"])).toEqual({ cidr: "192.168.7.0/26", prefix: 26 });
    expect(coveringSubnet(["10.0.0.1", "10.0.0.2"])).toEqual({ cidr: "10.0.0.0/30", prefix: 30 });
    expect(() => coveringSubnet(["10.0.0.1", "192.168.0.1"])).toThrow(/span more than a \/8/);
});

test("the settings file names the master and every machine with its user, module and offer (null for auto)", () => {
    const p = hostsStackParams(cfg, nixStackParams(cfg, { stack: "lab", cidr: "0.0.0.0/32", prefix: 32, master: { ip: "0.0.0.0", hostname: "x" } }));
    expect(p).toMatchObject({ stack: "lab", masterIp: "192.168.7.20", masterHostname: "lab1", cidr: "192.168.7.0/26", prefix: 26, sshUser: "deploy" });
    expect(p.hosts).toEqual([
        { name: "lab1", address: "192.168.7.20", role: "master", sshUser: "deploy", module: "machines/lab1.nix", cores: null, memoryMiB: null },
        { name: "lab2", address: "192.168.7.3", role: "worker", sshUser: "ops", module: "machines/lab2.nix", cores: null, memoryMiB: null },
        { name: "lab3", address: "192.168.7.45", role: "worker", sshUser: "deploy", module: "machines/lab3.nix", cores: 4, memoryMiB: 8192 },
    ]);
});

test("a machine's module must exist inside the flake directory; the error names the key and the fix", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "nxs-hosts-"));
    try {
        fs.mkdirSync(path.join(dir, "machines"));
        fs.writeFileSync(path.join(dir, "machines", "lab1.nix"), "{ ... }: { }\n");
        fs.writeFileSync(path.join(dir, "machines", "lab3.nix"), "{ ... }: { }\n");
        expect(checkHostModules(cfg, dir)).toEqual([`nixspark:hosts.1.module: ${path.join(dir, "machines", "lab2.nix")} does not exist; copy lab2's configuration there (with its hardware-configuration.nix beside it), e.g. scp lab2:/etc/nixos/*.nix ${path.join(dir, "machines")}/`]);
    } finally {
        fs.rmSync(dir, { recursive: true, force: true });
    }
});

test("first-use is said for exactly the machines that use it, with the fix", () => {
    const w = firstUseWarnings(cfg.hosts, cfg.ssh.port);
    expect(w).toHaveLength(1);
    expect(w[0]).toMatch(/^machine lab2: its SSH host key is TRUSTED ON FIRST USE \(nixspark:hosts\[1\]\.hostKey "first-use"\): whatever answers at 192\.168\.7\.3 port 2222 .*pulumi config set --path 'hosts\[1\]\.hostKey' SHA256:\.\.\.$/);
});

test("a hosts stack's outputs: no libvirtUri, nodes without libvirtName, and the CLI reaches each machine with its own user and port", () => {
    const ssh = { user: "deploy", port: 22, identityFile: ".nixspark/lab/deploy_ed25519", knownHostsFile: ".nixspark/lab/known_hosts" };
    const out = parseStackOutputs(
        {
            target: "hosts",
            masterUrl: "spark://192.168.7.20:7077",
            webUiUrl: "http://192.168.7.20:8080",
            nodes: [
                { name: "lab1", role: "master", ip: "192.168.7.20", hostname: "lab1", system: "/nix/store/a" },
                { name: "lab2", role: "worker", ip: "192.168.7.3", hostname: "lab2", sshUser: "ops", sshPort: 2222 },
            ],
            ssh,
        },
        "stack lab",
    );
    expect(out.libvirtUri).toBeUndefined();
    expect(out.nodes.map((n) => n.libvirtName)).toEqual([undefined, undefined]);
    expect(targetOf(out.ssh!, out.nodes[0])).toMatchObject({ host: "192.168.7.20", user: "deploy", port: 22 });
    expect(targetOf(out.ssh!, out.nodes[1])).toMatchObject({ host: "192.168.7.3", user: "ops", port: 2222 });
});

test("docs/targets.md's example stack file is a valid hosts stack", () => {
    const yaml = require("js-yaml");
    const md = fs.readFileSync(path.join(__dirname, "../../docs/targets.md"), "utf8");
    const doc = yaml.load(/```yaml\n([\s\S]*?)```/.exec(md)![1]).config as Record<string, unknown>;
    const raw = Object.fromEntries(Object.entries(doc).map(([k, v]) => [k.replace(/^nixspark:/, ""), v]));
    const c = parseConfig(raw);
    expect(c.target).toBe("hosts");
    expect(c.hosts.map((h) => [h.name, h.role, h.hostKey === "first-use"])).toEqual([["lab1", "master", false], ["lab2", "worker", false], ["lab3", "worker", true]]);
});

describe("the machines' systems from nix/flake.nix (stub nixpkgs), and the evaluation cache", () => {
    const STUB = ["--no-write-lock-file", "--override-input", "nixpkgs", `path:${path.join(FIXTURES, "nix-stub-nixpkgs")}`];
    jest.setTimeout(120_000);

    test("each machine: its role system and its system without the role; an unchanged second run starts no nix, an edited module evaluates again", async () => {
        const proj = tempDir("nixspark-hosts-");
        const dir = path.join(proj, "nix");
        fs.cpSync(NIX_DIR, dir, { recursive: true });
        fs.mkdirSync(path.join(dir, "machines"));
        for (const n of ["lab1", "lab2", "lab3"]) fs.writeFileSync(path.join(dir, "machines", `${n}.nix`), `{ ... }: { networking.hostName = "${n}"; }\n`);
        const base = nixStackParams(cfg, { stack: "lab", cidr: "0.0.0.0/32", prefix: 32, master: { ip: "0.0.0.0", hostname: "x" } });
        const first = await prepareHostsNix("lab", cfg, base, { cwd: proj, extraArgs: STUB, cache: true });
        expect(first.cached).toBe(false);
        expect(first.flake).toMatch(/^path:\/nix\/store\/[0-9a-z]{32}-source$/);
        expect(Object.keys(first.machines)).toEqual(["lab1", "lab2", "lab3"]);
        expect(first.machines.lab2).toMatchObject({ configuration: "lab-host-lab2", released: { configuration: "lab-host-lab2-released" } });
        for (const m of Object.values(first.machines)) expect(m.expectedSystem).not.toBe(m.released.expectedSystem);
        expect(new Set(Object.values(first.machines).map((m) => m.expectedSystem)).size).toBe(3);
        const again = await prepareHostsNix("lab", cfg, base, { cwd: proj, extraArgs: STUB, cache: true });
        expect(again).toEqual({ ...first, cached: true });
        fs.writeFileSync(path.join(dir, "machines", "lab3.nix"), `{ ... }: { networking.hostName = "lab3"; boot.loader.grub.device = "/dev/sdb"; }\n`);
        const edited = await prepareHostsNix("lab", cfg, base, { cwd: proj, extraArgs: STUB, cache: true });
        expect(edited.cached).toBe(false);
        expect(edited.machines.lab3.expectedSystem).not.toBe(first.machines.lab3.expectedSystem);
        expect(edited.machines.lab1.expectedSystem).toBe(first.machines.lab1.expectedSystem);
    });
});
