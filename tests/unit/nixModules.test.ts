// The project's real NixOS modules, evaluated by the stand-in nixpkgs
// (tests/fixtures/nix-stub-nixpkgs): a module system with nixpkgs'
// semantics, nixos-24.11's option types and defaults, and packages with only
// the attributes the 24.11 ones have. So what would stop `nix eval` on a
// real NixOS host (a removed package attribute, a misspelt option, a value
// of the wrong type) stops these tests too, with Nix's message.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { FIXTURES, nix, NIX_DIR, nixEnv, REPO } from "../fixtures/nix-env";
import { parseConfig } from "../../cluster/config";
import { buildTopology, NodeSpec, Topology } from "../../cluster/topology";
import { interfaceOf } from "../../cluster/sparkCluster";
import { nixStackParams, renderNixStackParams } from "../../cluster/nixParams";
import { domainXml, networkCredential } from "../../providers/libvirtXml";
import { run } from "../../providers/run";
import { evalUnit, EvaluatedUnit, removeContractDirs, ScratchRoot } from "../helpers/nixContract";

jest.setTimeout(180_000);

const STUB_DIR = path.join(FIXTURES, "nix-stub-nixpkgs");
const STUB = ["--no-write-lock-file", "--override-input", "nixpkgs", `path:${STUB_DIR}`];
const NIX = ["nix", "--extra-experimental-features", "nix-command flakes"];

const tmpDirs: string[] = [];
afterAll(() => {
    for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});

/** A copy of nix/ that a test may edit. */
function flakeCopy(): string {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-modules-"));
    tmpDirs.push(dir);
    fs.cpSync(NIX_DIR, dir, { recursive: true });
    return dir;
}

function edit(file: string, from: string | RegExp, to: string) {
    const text = fs.readFileSync(file, "utf8");
    const next = text.replace(from, to);
    if (next === text) throw new Error(`${file}: ${from} not found`);
    fs.writeFileSync(file, next);
}

/** `nix eval --json <flake>#<attr>` against the stand-in nixpkgs. */
function evalFlake<T = any>(flakeDir: string, attr: string): T {
    return JSON.parse(nix([...NIX, "eval", "--json", ...STUB, `path:${flakeDir}#${attr}`]));
}

/**
 * A string attribute whose context names several unbuilt derivations: without
 * the context, and past Nix 2.8's flake evaluation cache, which cannot read
 * such a context back ("path '<drv> !out!<drv>' is not in the Nix store").
 */
function evalString(flakeDir: string, attr: string): string {
    return JSON.parse(nix([...NIX, "eval", "--no-eval-cache", "--json", ...STUB, `path:${flakeDir}#${attr}`, "--apply", "builtins.unsafeDiscardStringContext"]));
}

/** The message of an evaluation that must fail. */
function evalError(flakeDir: string, attr: string): string {
    try {
        evalFlake(flakeDir, attr);
    } catch (e) {
        return (e as Error).message;
    }
    throw new Error(`expected ${attr} to fail evaluation`);
}

/** `nix eval --impure --json --expr` with `stub` bound to the stand-in flake. */
function evalExpr<T = any>(expr: string): T {
    const full = `let stub = builtins.getFlake "path:${STUB_DIR}"; in ${expr}`;
    return JSON.parse(nix([...NIX, "eval", "--impure", "--json", "--expr", full]));
}

interface StackEvaluation {
    baseImage: { drvPath: string };
    systems: { master: string; worker: string };
}

/** Writes a stack's settings file into a flake copy (the example's with changes). */
function writeStack(flakeDir: string, stack: string, changes: Record<string, unknown> = {}) {
    const example = JSON.parse(fs.readFileSync(path.join(NIX_DIR, "stacks/example.json"), "utf8"));
    fs.writeFileSync(path.join(flakeDir, "stacks", `${stack}.json`), JSON.stringify({ ...example, stack, ...changes }));
}

beforeAll(() => {
    nixEnv();
});

describe("the committed modules evaluate on the stand-in nixos-24.11", () => {
    test("image, master and worker systems of the example stack", () => {
        const e = evalFlake<StackEvaluation>(NIX_DIR, "lib.stackEvaluations.example");
        expect(e.baseImage.drvPath).toMatch(/^\/nix\/store\/[a-z0-9]{32}-nixspark-example-base-image\.drv$/);
        expect(e.systems.master).toMatch(/^\/nix\/store\/[a-z0-9]{32}-nixos-system-unnamed-24\.11$/);
        expect(e.systems.worker).toMatch(/^\/nix\/store\/[a-z0-9]{32}-nixos-system-unnamed-24\.11$/);
        expect(e.systems.master).not.toBe(e.systems.worker);
    });

    test("the daemons run from the top of the Spark package, with our configuration directory", () => {
        const units = evalFlake(NIX_DIR, "nixosConfigurations.example-master.config.systemd.services.spark-master.serviceConfig");
        const spark = evalFlake<string>(NIX_DIR, "nixosConfigurations.example-master.config.services.spark.package.outPath");
        expect(units.ExecStart).toBe(`${spark}/sbin/start-master.sh`);
        const env = evalFlake(NIX_DIR, "nixosConfigurations.example-master.config.systemd.services.spark-master.environment");
        expect(env.SPARK_CONF_DIR).toMatch(/-nixspark-spark-conf$/);
        expect(env.SPARK_MASTER_HOST).toBe("10.77.0.10");
        // No spark-env.sh of the package's is sourced: the 24.11 package ships none.
        const sparkEnv = evalString(NIX_DIR, "nixosConfigurations.example-master.config.services.spark.confDir.drvAttrs.buildCommand");
        expect(sparkEnv).not.toMatch(/\/conf\/\*/);
    });

    test("spark-submit on PATH is the Spark package's: it has priority over the job Python's programs", () => {
        const listed = nix([...NIX, "eval", "--raw", ...STUB, `path:${NIX_DIR}#nixosConfigurations.example-worker.config.environment.systemPackages`, "--apply", 'ps: builtins.toJSON (map (p: { name = p.name; prio = p.meta.priority or null; }) ps)']);
        const list = JSON.parse(listed) as { name: string; prio: number | null }[];
        expect(list).toContainEqual({ name: "spark-3.5.1", prio: -10 });
        expect(list.map((p) => p.name)).toContain("python3-3.12.7-env");
        // The job Python carries no PySpark of its own.
        const paths = JSON.parse(
            nix([...NIX, "eval", "--raw", ...STUB, `path:${NIX_DIR}#nixosConfigurations.example-worker.config.environment.variables.PYSPARK_PYTHON`, "--apply", "builtins.toJSON"]),
        );
        expect(paths).toMatch(/python3-3\.12\.7-env\/bin\/python3$/);
    });

    test("every node, the image included, prints its SSH host key fingerprints to the serial console at boot", () => {
        for (const system of ["example-base", "example-worker"]) {
            const unit = evalFlake(NIX_DIR, `nixosConfigurations.${system}.config.systemd.services.nixspark-host-keys`);
            expect(unit.wantedBy).toEqual(["multi-user.target"]);
            expect(unit.after).toContain("sshd.service");
            expect(unit.script).toContain('echo "nixspark-host-keys:$fps" > /dev/ttyS0');
            expect(unit.script).toContain("ssh-keygen -l -E sha256");
        }
    });

    test("every node has systemd pet the domain's watchdog (RuntimeWatchdogSec) with its driver loaded; the stand-in takes only 24.11's types", () => {
        for (const system of ["example-base", "example-master", "example-worker"]) {
            const c = evalFlake(NIX_DIR, `nixosConfigurations.${system}.config`, );
            expect(c.systemd.watchdog).toEqual({ device: null, runtimeTime: "60s", rebootTime: null, kexecTime: null });
            expect(c.boot.kernelModules).toContain("i6300esb");
        }
        const dir = flakeCopy();
        edit(path.join(dir, "modules/guest.nix"), 'systemd.watchdog.runtimeTime = "60s";', "systemd.watchdog.runtimeTime = 60;");
        expect(evalError(dir, "nixosConfigurations.example-worker.config.systemd.watchdog.runtimeTime")).toMatch(/is not of type `null or string'/);
    });

    test("the nodes have no host name of their own (libvirt gives each its name)", () => {
        expect(evalFlake(NIX_DIR, "nixosConfigurations.example-worker.config.networking.hostName")).toBe("");
        expect(evalFlake(NIX_DIR, "nixosConfigurations.example-base.config.networking.hostName")).toBe("");
    });
});

describe("what would fail on a real nixos-24.11 host fails here, with Nix's message", () => {
    test("a package attribute the 24.11 Spark lacks (untarDir, removed in 23.11)", () => {
        const dir = flakeCopy();
        edit(path.join(dir, "modules/spark.nix"), "  storeConfDir = pkgs.runCommand", '  sparkHome = "${spark}/lib/${spark.untarDir}";\n  storeConfDir = pkgs.runCommand');
        edit(path.join(dir, "modules/spark.nix"), "    cp ${sparkEnv} $out/spark-env.sh", "    cp ${sparkHome}/conf/log4j2.properties $out/\n    cp ${sparkEnv} $out/spark-env.sh");
        expect(evalError(dir, "lib.stackEvaluations.example.systems.master")).toMatch(/attribute 'untarDir' missing/);
        // The image has no Spark, so it still evaluates.
        expect(evalFlake<string>(dir, "lib.stackEvaluations.example.baseImage.drvPath")).toMatch(/\.drv$/);
    });

    test("a misspelt option", () => {
        const dir = flakeCopy();
        edit(path.join(dir, "modules/worker.nix"), "services.spark.worker = {", "services.spark.wroker = {");
        expect(evalError(dir, "lib.stackEvaluations.example.systems.worker")).toMatch(/The option `services\.spark\.wroker' does not exist/);
    });

    test("a value of the wrong type", () => {
        const dir = flakeCopy();
        edit(path.join(dir, "modules/master.nix"), "bind = cfg.master.address;", "bind = 10;");
        expect(evalError(dir, "lib.stackEvaluations.example.systems.master")).toMatch(
            /A definition for option `services\.spark\.master\.bind' is not of type `string'/,
        );
    });

    test("two modules that disagree, and an option only one side of the firewall has", () => {
        const dir = flakeCopy();
        edit(path.join(dir, "modules/spark.nix"), "networking.firewall.extraCommands = firewallRules;", 'networking.firewall.extraCommands = firewallRules;\n  services.spark.master.bind = "0.0.0.0";');
        expect(evalError(dir, "lib.stackEvaluations.example.systems.master")).toMatch(/The option `services\.spark\.master\.bind' has conflicting definition values/);
        const nft = flakeCopy();
        edit(path.join(nft, "modules/spark.nix"), "networking.firewall.extraCommands = firewallRules;", "networking.firewall.extraCommands = firewallRules;\n  networking.nftables.enable = true;");
        expect(evalError(nft, "lib.stackEvaluations.example.systems.master")).toMatch(/Failed assertions:[\s\S]*incompatible with the nftables based firewall/);
    });

    test("mkDefault and mkForce decide between definitions as in nixpkgs", () => {
        const dir = flakeCopy();
        // guest.nix sets documentation.enable with mkDefault: a plain definition wins.
        edit(path.join(dir, "modules/common.nix"), "networking.firewall.enable = true;", "networking.firewall.enable = true;\n  documentation.enable = true;\n  services.qemuGuest.enable = lib.mkForce false;");
        expect(evalFlake(dir, "nixosConfigurations.example-base.config.documentation.enable")).toBe(true);
        expect(evalFlake(dir, "nixosConfigurations.example-base.config.services.qemuGuest.enable")).toBe(false);
        expect(evalFlake(NIX_DIR, "nixosConfigurations.example-base.config.documentation.enable")).toBe(false);
        expect(evalFlake(NIX_DIR, "nixosConfigurations.example-base.config.services.qemuGuest.enable")).toBe(true);
    });
});

describe("a system changes exactly when what it runs changes", () => {
    let dir: string;
    let base: StackEvaluation;
    beforeAll(() => {
        dir = flakeCopy();
        writeStack(dir, "s");
        base = evalFlake<StackEvaluation>(dir, "lib.stackEvaluations.s");
    });
    const again = (changes: Record<string, unknown>) => {
        writeStack(dir, "s", changes);
        return evalFlake<StackEvaluation>(dir, "lib.stackEvaluations.s");
    };

    test("a Spark setting moves both role systems, never the base image", () => {
        const e = again({ sparkSettings: { "spark.sql.shuffle.partitions": "64" } });
        expect(e.systems.master).not.toBe(base.systems.master);
        expect(e.systems.worker).not.toBe(base.systems.worker);
        expect(e.baseImage.drvPath).toBe(base.baseImage.drvPath);
    });

    test("a Python package moves both role systems, never the base image", () => {
        const e = again({ pythonPackages: ["numpy", "pandas", "scipy"] });
        expect(e.systems.master).not.toBe(base.systems.master);
        expect(e.systems.worker).not.toBe(base.systems.worker);
        expect(e.baseImage.drvPath).toBe(base.baseImage.drvPath);
    });

    test("the worker size moves the worker system only", () => {
        const e = again({ worker: { vcpus: 4, memoryMiB: 8192 } });
        expect(e.systems.worker).not.toBe(base.systems.worker);
        expect(e.systems.master).toBe(base.systems.master);
        expect(e.baseImage.drvPath).toBe(base.baseImage.drvPath);
    });

    test("an SSH key moves the image (and the systems, which carry the same user)", () => {
        const e = again({ sshPublicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyOtherKeyOtherKeyOtherKeyOtherKeyOt other@host" });
        expect(e.baseImage.drvPath).not.toBe(base.baseImage.drvPath);
        expect(e.systems.master).not.toBe(base.systems.master);
    });

    test("the same settings give the same paths", () => {
        expect(again({})).toEqual(base);
    });

    test("the same evaluation says, by version, what each role runs (what preview shows moving)", () => {
        const e = again({ pythonPackages: ["numpy", "scipy"] }) as StackEvaluation & { packages: Record<string, any> };
        expect(e.packages.worker).toEqual({
            spark: "3.5.1",
            jdk: expect.stringMatching(/^11\./),
            python: "3.12.7",
            pythonPackages: { numpy: "1.26.4", scipy: "1.14.1" },
            kernel: expect.stringMatching(/^6\.6\./),
        });
        expect(e.packages.master.pythonPackages).toEqual(e.packages.worker.pythonPackages);
    });
});

describe("authentication, the cluster secret and the firewall", () => {
    let dir: string;
    beforeAll(() => {
        dir = flakeCopy();
        writeStack(dir, "open");
        writeStack(dir, "auth", { security: { authenticate: true, ioEncryption: true } });
    });
    const cfg = (stack: string, role: string, attr: string) => evalFlake(dir, `nixosConfigurations.${stack}-${role}.config.${attr}`);

    test("with authentication the daemons read a configuration assembled at boot under /run, not from the store", () => {
        expect(cfg("auth", "master", "services.spark.confDir")).toBe("/run/nixspark/spark-conf");
        expect(cfg("auth", "worker", "environment.variables.SPARK_CONF_DIR")).toBe("/run/nixspark/spark-conf");
        const unit = cfg("auth", "worker", "systemd.services.nixspark-spark-conf");
        expect(unit.requiredBy).toEqual(["spark-worker.service"]);
        expect(unit.before).toEqual(["spark-worker.service"]);
        expect(unit.serviceConfig).toMatchObject({ Type: "oneshot", RemainAfterExit: true, UMask: "0077" });
        expect(unit.script).toContain("install -m 0440 -o root -g spark");
        expect(unit.script).toContain("/var/lib/nixspark/spark-secret");
        expect(cfg("auth", "master", "systemd.services.nixspark-spark-conf.requiredBy")).toEqual(["spark-master.service"]);
        // A Spark setting still restarts the daemons: their units name the store files.
        expect(cfg("auth", "worker", "systemd.services.spark-worker.restartTriggers")).toEqual([expect.stringMatching(/-nixspark-spark-conf$/)]);
        expect(cfg("auth", "worker", "systemd.services")).not.toHaveProperty("spark-master");
        expect(cfg("auth", "master", "systemd.services")).not.toHaveProperty("spark-worker");
        // Without authentication there is no such unit and the store directory serves.
        expect(cfg("open", "master", "systemd.services")).not.toHaveProperty("nixspark-spark-conf");
        expect(cfg("open", "master", "services.spark.confDir")).toMatch(/^\/nix\/store\/.*-nixspark-spark-conf$/);
    });

    test("the settings in the store turn authentication and encryption on and hold no secret", () => {
        const text = evalFlake<Record<string, string>>(dir, "lib.stacks.auth.sparkSettings");
        expect(text).toMatchObject({ "spark.authenticate": "true", "spark.network.crypto.enabled": "true", "spark.io.encryption.enabled": "true" });
        expect(Object.keys(text)).not.toContain("spark.authenticate.secret");
        expect(evalFlake(dir, "lib.stacks.open.sparkSettings")).not.toHaveProperty("spark.authenticate");
    });

    test("Spark ports are open to the node block only; the gateway gets the submission port and UIs only with authentication", () => {
        const open = cfg("open", "master", "networking.firewall.extraCommands") as string;
        const auth = cfg("auth", "master", "networking.firewall.extraCommands") as string;
        expect(open).toContain("iptables -A nixos-fw -p tcp -m iprange --src-range 10.77.0.10-10.77.0.191 --dport 7077 -j nixos-fw-accept");
        expect(open).not.toMatch(/-s 10\.77\.0\.0\/24/);
        expect(open).not.toContain("-s 10.77.0.1 ");
        for (const port of [7077, 8080, 8081]) expect(auth).toContain(`iptables -A nixos-fw -p tcp -s 10.77.0.1 --dport ${port} -j nixos-fw-accept`);
        expect(auth).not.toContain("-s 10.77.0.1 --dport 7078");
    });

    test("deploying as root (nixspark:ssh.user root) lets the key in to nixpkgs' root account, which stays a system account (24.11's users assertion)", () => {
        writeStack(dir, "asroot", { sshUser: "root" });
        expect(evalFlake<string>(dir, "lib.stackEvaluations.asroot.systems.worker")).toMatch(/^\/nix\/store\//);
        const root = evalFlake<any>(dir, "nixosConfigurations.asroot-worker.config.users.users.root");
        expect(root).toMatchObject({ uid: 0, isNormalUser: false, group: "root" });
        expect(root.openssh.authorizedKeys.keys).toHaveLength(1);
        expect(evalFlake(dir, "nixosConfigurations.asroot-worker.config.services.openssh.settings.PermitRootLogin")).toBe("prohibit-password");
        expect(evalFlake(dir, "nixosConfigurations.auth-worker.config.services.openssh.settings.PermitRootLogin")).toBe("no");
    });

    test("a Spark setting may not turn authentication off behind the firewall's back", () => {
        writeStack(dir, "sneaky", { security: { authenticate: true }, sparkSettings: { "spark.authenticate": "false" } });
        expect(evalError(dir, "lib.stackEvaluations.sneaky.systems.master")).toMatch(/sparkSettings: spark.authenticate: set by nixspark:security/);
    });
});

describe("the NixOS test (checks.x86_64-linux.spark-cluster) on the stand-in test framework", () => {
    const check = "checks.x86_64-linux.spark-cluster";

    test("the driver names the machines master, worker1, worker2 and zoutsider, as the script does (system.name, not the empty host name)", () => {
        expect(evalFlake<string[]>(NIX_DIR, `${check}.machineNames`)).toEqual(["master", "worker1", "worker2", "zoutsider"]);
    });

    test("a node left with an empty host name and no system.name is 'unnamed' to the driver, and a script naming it fails", () => {
        const dir = flakeCopy();
        edit(path.join(dir, "tests/spark-cluster.nix"), /\n\s*system\.name = name;/, "");
        // The hosts-style worker2 is named by its own configuration.
        expect(evalFlake<string[]>(dir, `${check}.machineNames`)).toEqual(["unnamed", "unnamed", "worker2", "zoutsider"]);
        expect(evalError(dir, `${check}.drvPath`)).toMatch(/the test script uses 'master', 'worker1', but the driver's machines are 'unnamed', 'unnamed', 'worker2', 'zoutsider'/);
    });

    test("each VM node gets its name as libvirt gives it: no configured name, the system.hostname credential", () => {
        for (const node of ["master", "worker1"]) {
            expect(evalFlake(NIX_DIR, `${check}.nodes.${node}.networking.hostName`)).toBe("");
            const qemu = evalFlake<string[]>(NIX_DIR, `${check}.nodes.${node}.virtualisation.qemu.options`);
            expect(qemu.join(" ")).toContain(`-smbios type=11,value=io.systemd.credential:system.hostname=${node}`);
        }
    });

    test("worker2 is a machine of a hosts stack: its own configuration (with its hardware module) plus common and the role, no VM module, and the same Spark checks", () => {
        const node = `${check}.nodes.worker2`;
        // Its own module: the name it gives and the stand-in hardware module's initrd drivers.
        expect(evalFlake(NIX_DIR, `${node}.networking.hostName`)).toBe("worker2");
        expect(evalFlake<string[]>(NIX_DIR, `${node}.boot.initrd.availableKernelModules`)).toEqual(expect.arrayContaining(["ahci", "sd_mod"]));
        expect(evalFlake<string[]>(NIX_DIR, `${node}.virtualisation.qemu.options`).join(" ")).not.toContain("io.systemd.credential:system.hostname");
        // guest.nix is not in it (its unit prints a VM's host keys to the serial console); common.nix and the role are.
        expect(evalFlake(NIX_DIR, `${node}.systemd.services`)).not.toHaveProperty("nixspark-host-keys");
        expect(evalFlake(NIX_DIR, `${node}.services.spark.worker.enable`)).toBe(true);
        expect(evalFlake(NIX_DIR, `${node}.services.openssh.enable`)).toBe(true);
        expect(evalFlake(NIX_DIR, `${node}.services.spark.worker.master`)).toBe(evalFlake(NIX_DIR, `${check}.nodes.worker1.services.spark.worker.master`));
        // Both workers offer what the stack's size says (null, "auto", only comes from a hosts stack's list).
        for (const w of ["worker1", "worker2"]) {
            expect(evalFlake(NIX_DIR, `${check}.nodes.${w}.services.spark.worker.extraEnvironment`)).toMatchObject({ SPARK_WORKER_CORES: "2", SPARK_WORKER_MEMORY: "1024m" });
        }
        // The same Spark checks: registration of both workers, the job's tasks on both, the node-block firewall.
        const script = evalString(NIX_DIR, `${check}.script`);
        expect(script).toContain('assert report["hosts"] == ["worker1", "worker2"]');
        expect(script).toMatch(/-eq 2", timeout=300\)/);
        expect(script).toContain('worker2.succeed("grep -qx worker2 /etc/hostname")');
        expect(evalFlake<string>(NIX_DIR, `${check}.drvPath`)).toMatch(/vm-test-run-nixspark-spark-cluster\.drv$/);
    });

    test("the script checks host names, spark-submit, the node-block firewall against an outsider, and the secret's place", () => {
        const script = evalString(NIX_DIR, `${check}.script`);
        const spark = evalFlake<string>(NIX_DIR, `${check}.nodes.master.services.spark.package.outPath`);
        expect(script).toContain('actual = machine.succeed("hostname").strip()');
        expect(script).toContain('machine.fail("test -e /etc/hostname")');
        expect(script).toContain(`assert found == "${spark}/bin/spark-submit"`);
        expect(evalFlake<string>(NIX_DIR, `${check}.drvPath`)).toMatch(/vm-test-run-nixspark-spark-cluster\.drv$/);
        // Firewall: a machine outside the node block cannot reach the master; the secret stays out of /etc.
        expect(script).toContain('zoutsider.fail("');
        expect(script).toMatch(/zoutsider\.fail\("\S+\/bin\/nc -z -w 5 192\.168\.1\.1 7077"\)/);
        expect(script).toContain('assert "--src-range 192.168.1.1-192.168.1.3" in rules');
        expect(script).toContain("assert mode == \"440 root spark-users\"");
        expect(script).toContain("grep -qx 'spark.authenticate.secret not-a-real-secret' /run/nixspark/spark-conf/spark-defaults.conf");
        // A job as a user who is only in the Spark users' group; port 22 is open because the nodes run sshd.
        expect(script).toContain("su -l analyst -c 'spark-submit");
        expect(script).toMatch(/zoutsider\.succeed\("\S+\/bin\/nc -z -w 5 192\.168\.1\.1 22"\)/);
        expect(evalFlake(NIX_DIR, `${check}.nodes.master.services.openssh.enable`)).toBe(true);
        expect(evalFlake<string[]>(NIX_DIR, `${check}.nodes.master.users.groups.spark-users.members`)).toEqual(expect.arrayContaining(["spark", "deploy", "analyst"]));
        expect(evalFlake(NIX_DIR, `${check}.nodes.master.services.spark.confDir`)).toBe("/run/nixspark/spark-conf");
        expect(evalFlake(NIX_DIR, `${check}.nodes.zoutsider.networking.primaryIPAddress`)).toBe("192.168.1.4");
    });
});

describe("nixosModules.host: the machine that runs the VMs", () => {
    const host = (extra: string) =>
        `(stub.lib.nixosSystem { modules = [ ${path.join(NIX_DIR, "modules/host.nix")} ({ ... }: { nixspark.host.users = [ "alice" ]; users.users.alice.isNormalUser = true; ${extra} }) ]; }).config`;

    test("libvirtd with KVM, flakes and the kvm feature, the user in libvirtd; an iptables host lets the bridges reach dnsmasq", () => {
        const c = evalExpr(
            `let c = ${host("")}; in { inherit (c.virtualisation.libvirtd) enable; qemu = c.virtualisation.libvirtd.qemu.package.name; groups = c.users.users.alice.extraGroups; features = c.nix.settings.system-features; exp = c.nix.settings.experimental-features; fw = c.networking.firewall.extraCommands; nft = c.networking.firewall.extraInputRules; system = c.system.build.toplevel.drvPath; }`,
        );
        expect(c.enable).toBe(true);
        expect(c.qemu).toMatch(/^qemu-host-cpu-only-/);
        expect(c.groups).toEqual(["libvirtd"]);
        expect(c.features).toEqual(expect.arrayContaining(["kvm", "nixos-test"]));
        expect(c.exp).toEqual(["nix-command", "flakes"]);
        expect(c.fw).toContain("iptables -A nixos-fw -i nxs-+ -p udp -m multiport --dports 53,67 -j nixos-fw-accept");
        expect(c.fw).toContain("iptables -A nixos-fw -i nxs-+ -p tcp --dport 53 -j nixos-fw-accept");
        expect(c.nft).toBe("");
        expect(c.system).toMatch(/\.drv$/);
        // The VMs' host key lines, from root-only console logs to where the deployer can read them.
        // (run for real in tests/integration/hostKeysContract.test.ts): a service that keeps running, no path unit.
        const keys = evalExpr(`let c = ${host("")}; in { paths = c.systemd.paths; unit = { inherit (c.systemd.services.nixspark-host-keys) wantedBy serviceConfig; }; }`);
        expect(keys.paths).not.toHaveProperty("nixspark-host-keys");
        expect(keys.unit.wantedBy).toEqual(["multi-user.target"]);
        expect(keys.unit.serviceConfig.Restart).toBe("always");
    });

    test("an nftables host gets the same openings as nftables rules (and no iptables commands)", () => {
        const c = evalExpr(`let c = ${host("networking.nftables.enable = true;")}; in { fw = c.networking.firewall.extraCommands; nft = c.networking.firewall.extraInputRules; system = c.system.build.toplevel.drvPath; }`);
        expect(c.fw).toBe("");
        expect(c.nft).toContain('iifname "nxs-*" udp dport { 53, 67 } accept');
        expect(c.nft).toContain('iifname "nxs-*" tcp dport 53 accept');
        expect(c.system).toMatch(/\.drv$/);
    });

    test("a bridge a stack names itself (nixspark:network.bridge) gets the same openings, on either firewall", () => {
        const c = evalExpr(
            `{ ipt = ${host(`nixspark.host.bridges = [ "sparkbr0" ];`)}.networking.firewall.extraCommands; nft = ${host(`nixspark.host.bridges = [ "sparkbr0" ]; networking.nftables.enable = true;`)}.networking.firewall.extraInputRules; }`,
        );
        expect(c.ipt).toContain("iptables -A nixos-fw -i sparkbr0 -p udp -m multiport --dports 53,67 -j nixos-fw-accept");
        expect(c.ipt).toContain("iptables -A nixos-fw -i nxs-+ -p udp -m multiport --dports 53,67 -j nixos-fw-accept");
        expect(c.nft).toContain('iifname "sparkbr0" tcp dport 53 accept');
    });

    test("a user named in nixspark.host.users must be a user of the machine (24.11's users assertions)", () => {
        const err = (() => {
            try {
                evalExpr(`(stub.lib.nixosSystem { modules = [ ${path.join(NIX_DIR, "modules/host.nix")} ({ ... }: { nixspark.host.users = [ "bob" ]; }) ]; }).config.system.build.toplevel.drvPath`);
            } catch (e) {
                return (e as Error).message;
            }
            throw new Error("expected the evaluation to fail");
        })();
        expect(err).toContain("Exactly one of users.users.bob.isSystemUser and users.users.bob.isNormalUser must be set.");
        expect(err).toContain("nixspark.host.users names bob, who is not a user of this machine: define users.users.bob (isNormalUser = true)");
    });

    test("heal on a timer: off by default; on, a oneshot service running `nixspark heal` for the stack and a timer at the interval", () => {
        expect(evalExpr(`let c = ${host("")}; in { s = c.systemd.services ? nixspark-heal; t = c.systemd.timers ? nixspark-heal; }`)).toEqual({ s: false, t: false });
        const on = `nixspark.host.heal = { enable = true; projectDir = "${REPO}"; stack = "nxs-timer"; passphraseFile = "/run/keys/pp"; interval = "2min"; user = "alice"; };`;
        const c = evalExpr(`let c = ${host(on)}; in { unit = { inherit (c.systemd.services.nixspark-heal) script environment serviceConfig after; }; timer = c.systemd.timers.nixspark-heal; system = c.system.build.toplevel.drvPath; }`);
        expect(c.timer.wantedBy).toEqual(["timers.target"]);
        expect(c.timer.timerConfig).toEqual({ OnBootSec: "2min", OnUnitActiveSec: "2min", Unit: "nixspark-heal.service" });
        expect(c.unit.serviceConfig).toMatchObject({ Type: "oneshot", User: "alice", WorkingDirectory: REPO });
        // The passphrase stays in its file: only the file's name is in the unit (and the store).
        expect(c.unit.environment.PULUMI_CONFIG_PASSPHRASE_FILE).toBe("/run/keys/pp");
        expect(c.unit.after).toContain("libvirtd.service");
        expect(c.system).toMatch(/\.drv$/);
        // The script the evaluation generates, run as the unit would (bash -e), with the real CLI:
        // it reaches `heal` for the stack, which asks Pulumi (a local backend with no such stack) and exits 2 naming it.
        const backend = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-heal-unit-"));
        tmpDirs.push(backend);
        const r = spawnSync("bash", ["-e", "-c", c.unit.script], {
            cwd: REPO,
            encoding: "utf8",
            timeout: 120_000,
            env: { PATH: `${path.dirname(process.execPath)}:/usr/bin:/bin`, HOME: backend, PULUMI_BACKEND_URL: `file://${backend}`, PULUMI_CONFIG_PASSPHRASE: "" },
        });
        expect(r.stderr).toMatch(/nixspark heal: reading the outputs of stack nxs-timer failed/);
        expect(r.status).toBe(2);
        // 24.11's types: an interval is a string (a systemd time span), not a number.
        expect(() => evalExpr(`${host(`nixspark.host.heal = { enable = true; projectDir = "/p"; interval = 300; };`)}.systemd.timers.nixspark-heal.timerConfig`)).toThrow(/is not of type `string'/);
    });

    test("is a flake output", () => {
        expect(evalFlake<string[]>(NIX_DIR, "nixosModules")).toBeDefined();
        const names = JSON.parse(nix([...NIX, "eval", "--json", ...STUB, `path:${NIX_DIR}#nixosModules`, "--apply", "builtins.attrNames"]));
        expect(names).toContain("host");
    });
});

describe("the stand-in follows nixos-24.11 where the modules depend on it", () => {
    const system = (module: string) => `(stub.lib.nixosSystem { modules = [ (${module}) ]; }).config`;

    test("system.name comes from the host name, and is 'unnamed' for an empty one (system/activation/top-level.nix)", () => {
        const c = evalExpr(`{ named = ${system(`{ networking.hostName = "node7"; }`)}.system.name; empty = ${system(`{ networking.hostName = ""; }`)}.system.name; set = ${system(`{ networking.hostName = ""; system.name = "master"; }`)}.system.name; }`);
        expect(c).toEqual({ named: "node7", empty: "unnamed", set: "master" });
        // The system derivation is named after system.name, whatever the host name.
        const drv = evalExpr<string>(`${system(`{ networking.hostName = "node7"; system.name = "other"; }`)}.system.build.toplevel.name`);
        expect(drv).toBe("nixos-system-other-24.11");
    });

    test("an iptables host may set nftables rules: the iptables backend makes no assertion about them (firewall-iptables.nix)", () => {
        const drv = evalExpr<string>(`${system(`{ networking.firewall.extraInputRules = "tcp dport 1 accept"; }`)}.system.build.toplevel.drvPath`);
        expect(drv).toMatch(/\.drv$/);
        // The nftables backend's assertion about iptables commands stays.
        expect(() => evalExpr(`${system(`{ networking.nftables.enable = true; networking.firewall.extraCommands = "iptables -A x"; }`)}.system.build.toplevel.drvPath`)).toThrow(
            /incompatible with the nftables based firewall/,
        );
    });

    test("a user is exactly one of normal and system user, and has a group (config/users-groups.nix)", () => {
        expect(() => evalExpr(`${system(`{ users.users.ghost.extraGroups = [ "wheel" ]; }`)}.system.build.toplevel.drvPath`)).toThrow(/Exactly one of users\.users\.ghost\.isSystemUser and users\.users\.ghost\.isNormalUser must be set\./);
        expect(() => evalExpr(`${system(`{ users.users.svc.isSystemUser = true; }`)}.system.build.toplevel.drvPath`)).toThrow(/users\.users\.svc\.group is unset/);
        const normal = evalExpr(`${system(`{ users.users.alice.isNormalUser = true; }`)}.users.users.alice`);
        expect(normal).toMatchObject({ group: "users", home: "/home/alice" });
    });

    test("a service's script runs as ExecStart: a bash job script with set -e, and PATH from `path` plus nixpkgs' defaults (systemd-lib.nix, systemd.nix)", () => {
        const u = evalExpr(
            `let s = ${system(`{ pkgs, ... }: { systemd.services.demo = { script = "echo hi"; path = [ pkgs.iproute2 ]; }; }`)}.systemd.services.demo; in { exec = builtins.unsafeDiscardStringContext s.serviceConfig.ExecStart; path = builtins.unsafeDiscardStringContext s.environment.PATH; }`,
        );
        expect(u.exec).toMatch(/^\/nix\/store\/[a-z0-9]{32}-unit-script-demo-start\/bin\/demo-start $/);
        expect(u.path.split(":").map((p: string) => p.replace(/^\/nix\/store\/[a-z0-9]{32}-/, ""))).toEqual([
            ...["iproute2-6.11.0", "coreutils-9.5", "findutils-4.10.0", "gnugrep-3.11", "gnused-4.9", "systemd-256.10"].map((p) => `${p}/bin`),
            ...["iproute2-6.11.0", "coreutils-9.5", "findutils-4.10.0", "gnugrep-3.11", "gnused-4.9", "systemd-256.10"].map((p) => `${p}/sbin`),
        ]);
    });

    test("dhcpcd runs when networking.useDHCP (and networking.dhcpcd.enable) is set, before network-online.target (services/networking/dhcpcd.nix)", () => {
        const c = (m: string) => evalExpr(`let c = ${system(m)}; in { units = builtins.attrNames c.systemd.services; users = builtins.attrNames c.users.users; }`);
        expect(c(`{ }`).units).toContain("dhcpcd");
        expect(c(`{ }`).users).toContain("dhcpcd");
        expect(c(`{ networking.useDHCP = false; }`)).toEqual({ units: [], users: ["nobody", "root"] });
        expect(c(`{ networking.dhcpcd.enable = false; }`).units).toEqual([]);
        const unit = evalExpr(`${system(`{ }`)}.systemd.services.dhcpcd`);
        expect(unit).toMatchObject({ wantedBy: ["multi-user.target", "network-online.target"], before: ["network-online.target"], wants: ["network.target"] });
    });

    test("every assertion the stand-in makes names the nixpkgs file it comes from", () => {
        for (const file of filesUnderDir(STUB_DIR)) {
            const text = fs.readFileSync(file, "utf8");
            if (!/\bassertion\s*=/.test(text)) continue;
            expect({ file: path.relative(STUB_DIR, file), cites: /nixos\/modules\/[\w/.-]+\.nix/.test(text.split("\n{")[0]) }).toEqual({ file: path.relative(STUB_DIR, file), cites: true });
        }
    });
});

function filesUnderDir(dir: string): string[] {
    return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? filesUnderDir(path.join(dir, e.name)) : e.name.endsWith(".nix") ? [path.join(dir, e.name)] : []));
}

describe("event logs and the history server (nixspark.history)", () => {
    let dir: string;
    beforeAll(() => {
        dir = flakeCopy();
        writeStack(dir, "open");
        writeStack(dir, "auth", { security: { authenticate: true } });
    });
    const cfg = <T = any>(stack: string, role: string, attr: string): T => evalFlake<T>(dir, `nixosConfigurations.${stack}-${role}.config.${attr}`);
    /** The text of spark-defaults.conf in a role's store configuration directory (the derivation's `text`). */
    const sparkDefaults = (stack: string, role: string): string => {
        const drv = cfg<string>(stack, role, "services.spark.confDir.drvPath");
        const all = JSON.parse(nix([...NIX, "show-derivation", "-r", drv])) as Record<string, { env: Record<string, string> }>;
        const file = Object.values(all).find((d) => d.env.name === "spark-defaults.conf");
        if (!file) throw new Error(`no spark-defaults.conf among the inputs of ${drv}`);
        return file.env.text;
    };
    /** The example master from its modules, with one more module (Nix). */
    const master = (extra: string) =>
        `(stub.lib.nixosSystem { modules = [ ${NIX_DIR}/modules/common.nix ${NIX_DIR}/modules/master.nix (import ${NIX_DIR}/lib/params-module.nix (import ${NIX_DIR}/lib/params.nix (builtins.fromJSON (builtins.readFile ${NIX_DIR}/stacks/example.json)))) (${extra}) ]; }).config`;

    test("the master runs spark-history: Spark's launcher from the package in the foreground, as spark, with the daemons' configuration, on port 18080", () => {
        const spark = cfg<string>("open", "master", "services.spark.package.outPath");
        const unit = cfg("open", "master", "systemd.services.spark-history");
        expect(unit.serviceConfig).toEqual({
            Type: "simple",
            User: "spark",
            Group: "spark",
            WorkingDirectory: `${spark}/`,
            ExecStart: `${spark}/sbin/start-history-server.sh`,
            Restart: "on-failure",
            RestartSec: 5,
        });
        expect(unit.wantedBy).toEqual(["multi-user.target"]);
        // A live update adds its directory (systemd-tmpfiles-resetup) in the same start batch: after it.
        expect(unit.after).toEqual(["network-online.target", "systemd-tmpfiles-resetup.service"]);
        expect(unit.environment.SPARK_CONF_DIR).toBe(cfg("open", "master", "systemd.services.spark-master.environment.SPARK_CONF_DIR"));
        expect(unit.environment).toMatchObject({ SPARK_NO_DAEMONIZE: "1", SPARK_LOG_DIR: "/var/log/spark", SPARK_DAEMON_MEMORY: "512m" });
        expect(unit.environment.SPARK_HISTORY_OPTS.split(" ")).toEqual([
            "-Dspark.history.fs.logDirectory=file:/var/lib/spark/event-logs",
            "-Dspark.history.ui.port=18080",
            "-Dspark.history.fs.cleaner.enabled=true",
        ]);
        expect(unit.restartTriggers).toEqual([expect.stringMatching(/-nixspark-spark-conf$/)]);
        expect(cfg("open", "worker", "systemd.services")).not.toHaveProperty("spark-history");
        // With authentication it reads the configuration assembled at boot, after it is there.
        const auth = cfg("auth", "master", "systemd.services.spark-history");
        expect(auth.environment.SPARK_CONF_DIR).toBe("/run/nixspark/spark-conf");
        expect(auth.requires).toEqual(["nixspark-spark-conf.service"]);
        expect(auth.after).toEqual(expect.arrayContaining(["nixspark-spark-conf.service", "network-online.target"]));
    });

    test("its port is opened on the master like the master's UI: to the node block, and to the gateway with authentication; not on workers", () => {
        const open = cfg<string>("open", "master", "networking.firewall.extraCommands");
        const auth = cfg<string>("auth", "master", "networking.firewall.extraCommands");
        expect(open).toContain("iptables -A nixos-fw -p tcp -m iprange --src-range 10.77.0.10-10.77.0.191 --dport 18080 -j nixos-fw-accept");
        expect(open).not.toContain("-s 10.77.0.1 --dport 18080");
        expect(auth).toContain("iptables -A nixos-fw -p tcp -s 10.77.0.1 --dport 18080 -j nixos-fw-accept");
        expect(cfg<string>("auth", "worker", "networking.firewall.extraCommands")).not.toContain("18080");
    });

    test("every node writes event logs (spark-defaults.conf) into a 3770 spark:spark-users directory made by tmpfiles", () => {
        for (const role of ["master", "worker"]) {
            const text = sparkDefaults("open", role);
            expect(text).toMatch(/^spark\.eventLog\.enabled true$/m);
            expect(text).toMatch(/^spark\.eventLog\.dir file:\/var\/lib\/spark\/event-logs$/m);
            expect(cfg<string[]>("open", role, "systemd.tmpfiles.rules")).toContain("d /var/lib/spark/event-logs 3770 spark spark-users - -");
        }
    });

    test("a stack's own spark.eventLog setting wins over the role's", () => {
        writeStack(dir, "quiet", { sparkSettings: { "spark.eventLog.enabled": "false" } });
        expect(sparkDefaults("quiet", "worker")).toMatch(/^spark\.eventLog\.enabled false$/m);
        expect(sparkDefaults("quiet", "worker")).not.toMatch(/^spark\.eventLog\.enabled true$/m);
    });

    test("history.port and logDirectory move the unit, the firewall, the settings and the directory together; history.enable = false removes them all", () => {
        const moved = evalExpr(
            `let c = ${master(`{ nixspark.history = { port = 18111; logDirectory = "/srv/spark-events"; }; }`)}; in { opts = c.systemd.services.spark-history.environment.SPARK_HISTORY_OPTS; fw = c.networking.firewall.extraCommands; rules = c.systemd.tmpfiles.rules; }`,
        );
        expect(moved.opts).toContain("-Dspark.history.ui.port=18111");
        expect(moved.opts).toContain("-Dspark.history.fs.logDirectory=file:/srv/spark-events");
        expect(moved.fw).toContain("--dport 18111 -j nixos-fw-accept");
        expect(moved.fw).not.toContain("18080");
        expect(moved.rules).toContain("d /srv/spark-events 3770 spark spark-users - -");
        const off = evalExpr(
            `let c = ${master(`{ nixspark.history.enable = false; }`)}; in { units = builtins.attrNames c.systemd.services; fw = c.networking.firewall.extraCommands; rules = c.systemd.tmpfiles.rules; conf = c.services.spark.confDir.drvPath; }`,
        );
        expect(off.units).not.toContain("spark-history");
        expect(off.fw).not.toContain("18080");
        expect(off.rules.join("\n")).not.toContain("event-logs");
        const all = JSON.parse(nix([...NIX, "show-derivation", "-r", off.conf])) as Record<string, { env: Record<string, string> }>;
        expect(Object.values(all).find((d) => d.env.name === "spark-defaults.conf")!.env.text).not.toContain("spark.eventLog");
        expect(() => evalExpr(`${master(`{ nixspark.history.logDirectory = "event logs"; }`)}.systemd.tmpfiles.rules`)).toThrow(/nixspark\.history\.logDirectory' is not of type/);
    });

    test("the NixOS test waits for the history server and finds the smoke job and the analyst's job in it; the outsider cannot reach it", () => {
        const check = "checks.x86_64-linux.spark-cluster";
        const script = evalString(NIX_DIR, `${check}.script`);
        expect(script).toContain('master.wait_for_unit("spark-history.service")');
        expect(script).toMatch(/master\.wait_until_succeeds\("python3 \S+-history_apps\.py http:\/\/192\.168\.1\.1:18080 \| grep -qx 'sum-of-squares analyst'", timeout=120\)/);
        expect(script).toContain('assert "sum-of-squares root" in listed, listed');
        expect(script).toContain('assert mode == "3770 spark spark-users", mode');
        expect(script).toMatch(/zoutsider\.fail\("\S+\/bin\/nc -z -w 5 192\.168\.1\.1 18080"\)/);
        expect(script).toMatch(/worker1\.succeed\("\S+\/bin\/nc -z -w 5 192\.168\.1\.1 18080"\)/);
        expect(evalFlake(NIX_DIR, `${check}.nodes.master.systemd.services.spark-history.serviceConfig.User`)).toBe("spark");
    });
});

// Issue 17: the shared data directory. The program's own stack settings
// (nixStackParams with nixspark:data) reach the roles: every node mounts the
// VM's virtiofs device by its tag, as nixos-24.11's fileSystems takes it
// (the stand-in models tasks/filesystems.nix); read-write moves the event
// logs under it.
describe("the shared data directory (nixspark:data)", () => {
    let dir: string;
    const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test";
    /** What the program writes for a stack with this config (cluster/nixParams.ts). */
    const programWrites = (stack: string, raw: Record<string, unknown>) => {
        const cfg = parseConfig({ ssh: { publicKey: key }, ...raw });
        fs.writeFileSync(path.join(dir, "stacks", `${stack}.json`), renderNixStackParams(nixStackParams(cfg, buildTopology(stack, cfg))));
    };
    beforeAll(() => {
        dir = flakeCopy();
        programWrites("plain", {});
        programWrites("ro", { data: { path: "/srv/spark-data" } });
        programWrites("rw", { data: { path: "/srv/spark-data", mountPoint: "/srv/data", readOnly: false, tag: "shared" } });
    });
    const cfg = <T = any>(stack: string, role: string, attr: string): T => evalFlake<T>(dir, `nixosConfigurations.${stack}-${role}.config.${attr}`);

    test("every node mounts it by its tag with virtiofs, read-only by default, nofail, before tmpfiles; without data.path nothing is mounted and the host path never reaches the nodes", () => {
        for (const role of ["master", "worker"]) {
            expect(cfg("ro", role, `fileSystems."/data"`)).toMatchObject({
                device: "nixspark-data",
                fsType: "virtiofs",
                options: ["ro", "nofail", "x-systemd.before=systemd-tmpfiles-setup.service", "x-systemd.before=systemd-tmpfiles-resetup.service"],
                noCheck: true,
                mountPoint: "/data",
            });
        }
        expect(cfg("rw", "worker", `fileSystems."/srv/data"`)).toMatchObject({ device: "shared", fsType: "virtiofs", options: expect.arrayContaining(["rw", "nofail"]) });
        expect(Object.keys(cfg("plain", "worker", "fileSystems"))).toEqual(["/"]);
        expect(fs.readFileSync(path.join(dir, "stacks", "ro.json"), "utf8")).not.toContain("/srv/spark-data");
        expect(JSON.parse(fs.readFileSync(path.join(dir, "stacks", "plain.json"), "utf8"))).not.toHaveProperty("data");
    });

    test("event logs: under the share when it is read-write (every node's drivers and the history server on the master), else the master-local directory", () => {
        expect(cfg("rw", "master", "nixspark.history.logDirectory")).toBe("/srv/data/spark-events");
        expect(cfg("rw", "master", "systemd.services.spark-history.environment.SPARK_HISTORY_OPTS")).toContain("-Dspark.history.fs.logDirectory=file:/srv/data/spark-events");
        expect(cfg<string[]>("rw", "worker", "systemd.tmpfiles.rules")).toContain("d /srv/data/spark-events 3770 spark spark-users - -");
        for (const stack of ["ro", "plain"]) expect(cfg(stack, "master", "nixspark.history.logDirectory")).toBe("/var/lib/spark/event-logs");
    });

    test("stack settings the roles refuse, and what 24.11's fileSystems refuses (the stand-in models it)", () => {
        const example = JSON.parse(fs.readFileSync(path.join(NIX_DIR, "stacks/example.json"), "utf8"));
        const bad = (stack: string, data: unknown) => {
            fs.writeFileSync(path.join(dir, "stacks", `${stack}.json`), JSON.stringify({ ...example, stack, data }));
            return evalError(dir, `nixosConfigurations.${stack}-worker.config.fileSystems`);
        };
        expect(bad("longtag", { tag: "t".repeat(37), mountPoint: "/data", readOnly: true })).toMatch(/data\.tag: expected a virtiofs tag of 1 to 36/);
        expect(bad("relative", { tag: "t", mountPoint: "data", readOnly: true })).toMatch(/data\.mountPoint: expected an absolute path/);
        expect(bad("noflag", { tag: "t", mountPoint: "/data" })).toMatch(/data\.readOnly: expected true or false/);
        for (const f of ["longtag", "relative", "noflag"]) fs.rmSync(path.join(dir, "stacks", `${f}.json`));
        const fsOf = (entry: string) => `(stub.lib.nixosSystem { modules = [ { fileSystems."/" = { device = "/dev/vda"; fsType = "ext4"; }; } { fileSystems.${entry}; } ]; }).config.fileSystems`;
        expect(() => evalExpr(fsOf(`"/data/" = { device = "t"; fsType = "virtiofs"; }`))).toThrow(/not of type/);
        expect(() => evalExpr(fsOf(`"/data" = { device = "t"; fsType = "virtiofs"; options = [ ]; }`))).toThrow(/not of type/);
        expect(Object.keys(evalExpr(fsOf(`"/data" = { device = "t"; fsType = "virtiofs"; enable = false; }`)))).toEqual(["/"]);
    });
});

// Issue 19: static addresses in bridge mode (nixspark:network.mode bridge).
// A shared L2 segment across libvirt hosts has no DHCP server, so each node
// takes its address from the systemd credential nixspark.network that its
// domain's SMBIOS strings carry (providers/libvirtXml.ts networkCredential).
// The unit guest.nix generates is run here, in a network namespace this test
// makes, on an interface with the node's MAC, with exactly the credential
// the program's domain XML carries for the node (the OEM string's value, as
// systemd imports it).
describe("static addresses in bridge mode (nixspark.network.mode)", () => {
    const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test";
    const CRED_PREFIX = "io.systemd.credential:nixspark.network=";
    let dir: string;
    /** The program's config, topology and settings file for a stack. */
    const programWrites = (stack: string, raw: Record<string, unknown>) => {
        const cfg = parseConfig({ ssh: { publicKey: key }, ...raw });
        const topo = buildTopology(stack, cfg);
        fs.writeFileSync(path.join(dir, "stacks", `${stack}.json`), renderNixStackParams(nixStackParams(cfg, topo)));
        return { cfg, topo };
    };
    const bridge = { network: { mode: "bridge", bridge: "br0", cidr: "10.77.0.0/24", gateway: "10.77.0.254" } };
    let br: ReturnType<typeof programWrites>;
    beforeAll(() => {
        dir = flakeCopy();
        programWrites("nat", { network: { cidr: "10.77.0.0/24" } });
        br = programWrites("br", bridge);
        programWrites("brnogw", { network: { mode: "bridge", bridge: "br0", cidr: "10.77.0.0/24" } });
    });
    afterAll(() => removeContractDirs());
    const cfg = <T = any>(system: string, attr: string): T => evalFlake<T>(dir, `nixosConfigurations.${system}.config.${attr}`);

    test("the settings file says bridge only in bridge mode: a nat stack's file and systems are as before", () => {
        const nat = JSON.parse(fs.readFileSync(path.join(dir, "stacks", "nat.json"), "utf8"));
        expect(nat).not.toHaveProperty("networkMode");
        expect(JSON.parse(fs.readFileSync(path.join(dir, "stacks", "br.json"), "utf8")).networkMode).toBe("bridge");
        // "nat" written out is the same stack to Nix as no field at all; "bridge" moves the image
        // (its first boot has no DHCP either) and both roles.
        const as = (networkMode: string | undefined) => {
            fs.writeFileSync(path.join(dir, "stacks", "same.json"), JSON.stringify({ ...nat, stack: "same", ...(networkMode ? { networkMode } : {}) }));
            const e = evalFlake<StackEvaluation>(dir, "lib.stackEvaluations.same");
            return { baseImage: e.baseImage, systems: e.systems }; // not `source`: the flake's files differ
        };
        const implicit = as(undefined);
        expect(as("nat")).toEqual(implicit);
        const b = as("bridge");
        expect(b.baseImage.drvPath).not.toBe(implicit.baseImage.drvPath);
        expect(b.systems.master).not.toBe(implicit.systems.master);
        expect(b.systems.worker).not.toBe(implicit.systems.worker);
        fs.rmSync(path.join(dir, "stacks", "same.json"));
    });

    test("nat: DHCP as before (dhcpcd runs), no address unit; bridge: no DHCP client on any node, the image included, and the address unit before the network targets", () => {
        for (const system of ["nat-base", "nat-master", "nat-worker"]) {
            expect(cfg(system, "networking.useDHCP")).toBe(true);
            const units = cfg<Record<string, unknown>>(system, "systemd.services");
            expect(units).toHaveProperty("dhcpcd");
            expect(units).not.toHaveProperty("nixspark-address");
        }
        for (const system of ["br-base", "br-master", "br-worker"]) {
            expect(cfg(system, "nixspark.network.mode")).toBe("bridge");
            expect(cfg(system, "networking.useDHCP")).toBe(false);
            expect(cfg(system, "systemd.services")).not.toHaveProperty("dhcpcd");
            expect(cfg(system, "users.users")).not.toHaveProperty("dhcpcd");
            const unit = cfg(system, "systemd.services.nixspark-address");
            expect(unit.serviceConfig).toEqual({ Type: "oneshot", RemainAfterExit: true, ImportCredential: "nixspark.network", ExecStart: expect.stringMatching(/-unit-script-nixspark-address-start\/bin\/nixspark-address-start $/) });
            expect(unit.before).toEqual(["network.target", "network-online.target"]);
            expect(unit.wantedBy).toEqual(["multi-user.target", "network-online.target"]);
            expect(unit.wants).toEqual(["network.target"]);
        }
    });

    describe("the unit, run in a network namespace with the program's credential", () => {
        const id = randomBytes(3).toString("hex");
        const NODE_NS = `nxs-adn-${id}`;
        const SEGMENT_NS = `nxs-ads-${id}`;
        const made: string[] = [];
        let unit: EvaluatedUnit;
        let root: ScratchRoot;
        let node: NodeSpec;
        let credential: string;
        const inNs = (ns: string, argv: string[]) => run(["ip", "netns", "exec", ns, ...argv], { timeoutMs: 20_000 });
        /**
         * The credential as the node's unit receives it: the domain XML the program defines for the
         * node (bridge mode: its interface on the host bridge and its address, interfaceOf), its SMBIOS
         * OEM string `io.systemd.credential:nixspark.network=VALUE`, VALUE verbatim (what systemd imports).
         */
        const credentialOf = (topo: Topology, n: NodeSpec): string => {
            const plug = interfaceOf(topo, n);
            expect(plug.bridge).toBe("br0");
            const address = plug.address!;
            const xml = domainXml({ name: n.domainName, domainType: "qemu", vcpus: 1, memoryMiB: 256, diskPath: "/var/lib/nxs/disk.qcow2", mac: n.mac, ...plug, consoleLog: "/var/log/nxs.log", hostname: n.hostname });
            const unescape = (t: string) => t.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"').replace(/&apos;/g, "'").replace(/&amp;/g, "&");
            const entries = [...xml.matchAll(/<entry>([^<]*)<\/entry>/g)].map((m) => unescape(m[1]));
            const ours = entries.filter((e) => e.startsWith(CRED_PREFIX));
            expect(ours).toHaveLength(1);
            expect(ours[0]).toBe(networkCredential(n.mac, address));
            return ours[0].slice(CRED_PREFIX.length);
        };
        const runIt = (extraEnv: Record<string, string> = {}) => root.runUnit(unit, { netns: NODE_NS, allowFailure: true, timeoutMs: 60_000, extraEnv });

        beforeAll(async () => {
            unit = evalUnit(dir, "br-worker", "nixspark-address");
            root = new ScratchRoot();
            node = br.topo.workers[0];
            credential = credentialOf(br.topo, node);
            expect(credential).toBe(`${node.mac} ${node.ip}/24 10.77.0.254`);
            for (const ns of [NODE_NS, SEGMENT_NS]) {
                await run(["ip", "netns", "add", ns], { timeoutMs: 10_000 });
                made.push(ns);
            }
            // The node's NIC (its MAC) and, on the other end, the segment, where the gateway sits.
            await run(["ip", "link", "add", "nxsnic", "netns", NODE_NS, "address", node.mac, "type", "veth", "peer", "name", "nxsseg", "netns", SEGMENT_NS], { timeoutMs: 10_000 });
            await inNs(SEGMENT_NS, ["ip", "addr", "add", `${br.cfg.network.gateway}/24`, "dev", "nxsseg"]);
            await inNs(SEGMENT_NS, ["ip", "link", "set", "nxsseg", "up"]);
            ifindex = (await inNs(NODE_NS, ["cat", "/sys/class/net/nxsnic/ifindex"])).stdout.trim();
        });
        let ifindex: string;
        /** udev's database entry for the interface (what it writes once it processed, and named, it), or none. */
        const udevProcessed = (yes: boolean) => {
            const file = root.at(`/run/udev/data/n${ifindex}`);
            fs.mkdirSync(path.dirname(file), { recursive: true });
            if (yes) fs.writeFileSync(file, "I:1000000\nE:ID_NET_NAME=nxsnic\n");
            else fs.rmSync(file, { force: true });
        };
        afterAll(async () => {
            for (const ns of made) await run(["ip", "netns", "delete", ns], { timeoutMs: 10_000, allowFailure: true });
        });

        test("sets the address and the default route on the interface with the node's MAC; the node answers there from the segment; a second run changes nothing", async () => {
            root.putCredential("nixspark-address", "nixspark.network", credential);
            udevProcessed(true);
            const r = await runIt();
            expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: expect.stringContaining(`nixspark-address: nxsnic (${node.mac}): ${node.ip}/24, default route via 10.77.0.254`) });
            const addrs = () => inNs(NODE_NS, ["ip", "-j", "-4", "addr", "show", "dev", "nxsnic"]).then((o) => JSON.parse(o.stdout)[0]);
            const a = await addrs();
            expect(a.flags).toContain("UP");
            expect(a.addr_info.map((i: any) => `${i.local}/${i.prefixlen}`)).toEqual([`${node.ip}/24`]);
            const routes = JSON.parse((await inNs(NODE_NS, ["ip", "-j", "route", "show", "default"])).stdout);
            expect(routes).toEqual([expect.objectContaining({ dst: "default", gateway: "10.77.0.254", dev: "nxsnic" })]);
            // From the segment: a TCP connection to the node's address is refused by the node's
            // kernel (nothing listens): it answers at that address.
            const probe = `import socket\ns=socket.socket(); s.settimeout(3)\ntry:\n    s.connect(("${node.ip}", 9)); print("open")\nexcept ConnectionRefusedError:\n    print("refused")\nexcept Exception as e:\n    print("no answer", e)\n`;
            expect((await inNs(SEGMENT_NS, ["python3", "-c", probe])).stdout.trim()).toBe("refused");
            // Run again (a restart): the same single address and route.
            expect((await runIt()).code).toBe(0);
            expect((await addrs()).addr_info).toHaveLength(1);
            expect(JSON.parse((await inNs(NODE_NS, ["ip", "-j", "route", "show", "default"])).stdout)).toHaveLength(1);
        });

        test("without a gateway in the credential (nixspark:network.gateway unset) no default route is set", async () => {
            const nogw = evalUnit(dir, "brnogw-worker", "nixspark-address");
            expect(nogw.execStart).toBe(unit.execStart); // one unit whatever the address: the address is not in the system
            await inNs(NODE_NS, ["ip", "route", "flush", "default"]);
            // The same stack without nixspark:network.gateway: the same node, no router in its credential.
            const topo = buildTopology("br", parseConfig({ ssh: { publicKey: key }, network: { ...bridge.network, gateway: undefined } }));
            expect(topo.workers[0]).toMatchObject({ mac: node.mac, ip: node.ip });
            expect(topo.routerAddress).toBeUndefined();
            root.putCredential("nixspark-address", "nixspark.network", credentialOf(topo, topo.workers[0]));
            udevProcessed(true);
            const r = await runIt();
            expect(r.code).toBe(0);
            expect(JSON.parse((await inNs(NODE_NS, ["ip", "-j", "route", "show", "default"])).stdout)).toEqual([]);
        });

        test("a missing or malformed credential, no interface with its MAC, or one udev has not processed yet: the unit waits (bounded) and fails with a message that says which", async () => {
            root.putCredential("nixspark-address", "nixspark.network", undefined);
            let r = await runIt();
            expect(r.code).not.toBe(0);
            expect(r.stderr).toContain("nixspark-address: no credential nixspark.network: the domain must carry the SMBIOS OEM string io.systemd.credential:nixspark.network=MAC ADDRESS/PREFIX[ GATEWAY]");
            root.putCredential("nixspark-address", "nixspark.network", `${node.ip}/24`);
            r = await runIt();
            expect(r.code).not.toBe(0);
            expect(r.stderr).toContain(`credential nixspark.network is "${node.ip}/24", not "MAC ADDRESS/PREFIX[ GATEWAY]"`);
            root.putCredential("nixspark-address", "nixspark.network", credentialOf(br.topo, { ...node, mac: "52:54:00:00:00:01" }));
            const started = Date.now();
            r = await runIt({ NIXSPARK_INTERFACE_WAIT_SECONDS: "2" });
            expect(r.code).not.toBe(0);
            expect(r.stderr).toMatch(/no interface with MAC 52:54:00:00:00:01 after 2 s \(interfaces: lo nxsnic \)/);
            expect(Date.now() - started).toBeGreaterThanOrEqual(1500);
            // The right MAC, but udev has not processed the interface yet (it may still rename it):
            // the unit waits, and says so when it gives up.
            root.putCredential("nixspark-address", "nixspark.network", credential);
            udevProcessed(false);
            r = await runIt({ NIXSPARK_INTERFACE_WAIT_SECONDS: "2" });
            expect(r.code).not.toBe(0);
            expect(r.stderr).toContain(`nixspark-address: interface nxsnic has MAC ${node.mac} but udev has not processed it after 2 s`);
            // ... and takes it as soon as udev has.
            const late = root.runUnit(unit, { netns: NODE_NS, allowFailure: true, timeoutMs: 60_000, extraEnv: { NIXSPARK_INTERFACE_WAIT_SECONDS: "20" } });
            await new Promise((resolve) => setTimeout(resolve, 1500));
            udevProcessed(true);
            expect((await late).code).toBe(0);
        });
    });
});
