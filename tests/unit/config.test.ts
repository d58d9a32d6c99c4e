import { ConfigError, parseConfig, rawFromPulumiConfig } from "../../cluster/config";

function problemsOf(raw: Record<string, unknown>): string[] {
    try {
        parseConfig(raw);
    } catch (e) {
        expect(e).toBeInstanceOf(ConfigError);
        return (e as ConfigError).problems;
    }
    throw new Error("expected the config to be rejected");
}

describe("config schema", () => {
    test("an empty config gets defaults for everything", () => {
        const c = parseConfig({});
        expect(c.domainType).toBe("kvm");
        expect(c.workers.count).toBe(2);
        expect(c.network.cidr).toBeUndefined(); // derived from the stack name by the topology
        expect(c.spark.pythonPackages).toEqual(["numpy", "pandas"]);
        expect(c.ssh.user).toBe("deploy");
        expect(c.ssh.privateKeyPath).toBeUndefined(); // the stack's own deploy key
        expect(c.security).toEqual({ authenticate: true, ioEncryption: false, secretGeneration: 1 });
        expect(c.sparkSecrets).toEqual({});
    });

    test("rollouts: master, a canary, then batches of 2, each node verified within 300 s; a removed worker gets 120 s", () => {
        const d = parseConfig({}).deploy;
        expect(d.rollout).toEqual({ maxParallel: 2, canary: true, verifyTimeoutSeconds: 300 });
        expect(d.decommissionTimeoutSeconds).toBe(120);
        // A stack value for rollout keeps the defaults of the fields it leaves out.
        expect(parseConfig({ deploy: { rollout: { maxParallel: "8" } } }).deploy.rollout).toEqual({ maxParallel: 8, canary: true, verifyTimeoutSeconds: 300 });
        expect(parseConfig({ deploy: { rollout: { canary: "false" }, decommissionTimeoutSeconds: 0 } }).deploy).toMatchObject({ rollout: { canary: false }, decommissionTimeoutSeconds: 0 });
    });

    test("numbers given as strings (top-level Pulumi config) are accepted", () => {
        expect(parseConfig({ workers: { count: "5" } }).workers.count).toBe(5);
    });

    // Every key, one bad value, and the message the user must see for it.
    const cases: [string, Record<string, unknown>, RegExp][] = [
        ["nixspark:libvirtUri", { libvirtUri: "" }, /libvirt connection URI/],
        ["nixspark:domainType", { domainType: "xen" }, /"kvm".*"qemu"/],
        ["nixspark:autostart", { autostart: "sometimes" }, /true or false/],
        ["nixspark:network.name", { network: { name: "My Net" } }, /lower-case letters/],
        ["nixspark:network.cidr", { network: { cidr: 24 } }, /CIDR/],
        ["nixspark:network.bridge", { network: { bridge: "a-bridge-name-that-is-long" } }, /1 to 15/],
        ["nixspark:storage.pool", { storage: { pool: "-x" } }, /lower-case letters/],
        ["nixspark:storage.path", { storage: { path: "relative/dir" } }, /absolute directory/],
        ["nixspark:image.path", { image: { path: "base.qcow2" } }, /absolute path/],
        ["nixspark:image.flake", { image: { flake: "" } }, /flake reference/],
        ["nixspark:image.attribute", { image: { attribute: "" } }, /attribute/],
        ["nixspark:image.kernel", { image: { initrd: "/boot/initrd" } }, /need image.kernel/],
        ["nixspark:image.initrd", { image: { kernel: "/k", initrd: "initrd" } }, /absolute path/],
        ["nixspark:image.cmdline", { image: { kernel: "/k", cmdline: 7 } }, /string/i],
        ["nixspark:master.vcpus", { master: { vcpus: 0 } }, /virtual CPUs: a whole number from 1 to 64/],
        ["nixspark:master.memoryMiB", { master: { memoryMiB: 100 } }, /memory in MiB/],
        ["nixspark:master.diskGiB", { master: { diskGiB: 1.5 } }, /disk size in GiB/],
        ["nixspark:workers.count", { workers: { count: "three" } }, /number of Spark workers: a whole number from 0 to 250/],
        ["nixspark:workers.vcpus", { workers: { vcpus: 100 } }, /virtual CPUs/],
        ["nixspark:workers.memoryMiB", { workers: { memoryMiB: -1 } }, /memory in MiB/],
        ["nixspark:workers.diskGiB", { workers: { diskGiB: 0 } }, /disk size/],
        ["nixspark:ssh.user", { ssh: { user: "Root!" } }, /lower-case letters/],
        ["nixspark:ssh.port", { ssh: { port: 70000 } }, /TCP port/],
        ["nixspark:ssh.publicKey", { ssh: { publicKey: "not a key" } }, /SSH public key line/],
        ["nixspark:ssh.privateKeyPath", { ssh: { privateKeyPath: "" } }, /private key/],
        ["nixspark:spark.settings.executor.memory", { spark: { settings: { "executor.memory": "1g" } } }, /start with 'spark.'/],
        ["nixspark:spark.settings.spark.x", { spark: { settings: { "spark.x": { a: 1 } } } }, /string, number or boolean/],
        ["nixspark:spark.pythonPackages", { spark: { pythonPackages: "numpy" } }, /list of python3Packages/],
        ["nixspark:spark.pythonPackages.0", { spark: { pythonPackages: ["numpy; rm -rf /"] } }, /attribute names/],
        ["nixspark:spark.pythonPackages", { spark: { pythonPackages: ["numpy", "pyspark"] } }, /remove pyspark: every job already gets PySpark from the cluster's own Spark package/],
        ["nixspark:spark.settings.spark.authenticate", { spark: { settings: { "spark.authenticate": "false" } } }, /set by nixspark:security/],
        ["nixspark:sparkSecrets", { security: { authenticate: false }, health: { enabled: false }, sparkSecrets: { "spark.ssl.keyPassword": "pw" } }, /need nixspark:security.authenticate/],
        ["nixspark:sparkSecrets.spark.x", { spark: { settings: { "spark.x": "1" } }, sparkSecrets: { "spark.x": "2" } }, /keep it in one place/],
        ["nixspark:sparkSecrets.spark.y", { sparkSecrets: { "spark.y": "two\nlines" } }, /one-line value/],
        ["nixspark:security.secretGeneration", { security: { secretGeneration: 0 } }, /generation/],
        ["nixspark:security.authenticate", { security: { authenticate: "maybe" } }, /true or false/],
        ["nixspark:deploy.enabled", { deploy: { enabled: "yes" } }, /true or false/],
        ["nixspark:deploy.flake", { deploy: { flake: "" } }, /flake reference/],
        ["nixspark:deploy.rebuildCommand", { deploy: { rebuildCommand: "" } }, /nixos-rebuild/],
        ["nixspark:deploy.useSudo", { deploy: { useSudo: 1 } }, /true or false/],
        ["nixspark:deploy.buildHost", { deploy: { buildHost: 5 } }, /string/i],
        ["nixspark:deploy.sshWaitSeconds", { deploy: { sshWaitSeconds: 0 } }, /seconds to wait for SSH/],
        ["nixspark:deploy.switchTimeoutSeconds", { deploy: { switchTimeoutSeconds: 1 } }, /nixos-rebuild/],
        ["nixspark:deploy.rollout.maxParallel", { deploy: { rollout: { maxParallel: 0 } } }, /workers switched at once: a whole number from 1 to 64/],
        ["nixspark:deploy.rollout.maxParallel", { deploy: { rollout: { maxParallel: 65 } } }, /a whole number from 1 to 64/],
        ["nixspark:deploy.rollout.canary", { deploy: { rollout: { canary: "yes" } } }, /true or false/],
        ["nixspark:deploy.rollout.verifyTimeoutSeconds", { deploy: { rollout: { verifyTimeoutSeconds: 1 } } }, /until Spark reports it ALIVE/],
        ["nixspark:deploy.rollout.batchSize", { deploy: { rollout: { batchSize: 2 } } }, /unknown key/],
        ["nixspark:deploy.decommissionTimeoutSeconds", { deploy: { decommissionTimeoutSeconds: -1 } }, /finish its executors/],
        ["nixspark:health.enabled", { health: { enabled: "maybe" } }, /true or false/],
        ["nixspark:health.timeoutSeconds", { health: { timeoutSeconds: 0 } }, /Spark master and workers/],
        ["nixspark:wrokers", { wrokers: { count: 3 } }, /unknown key/],
        ["nixspark:workers.cnt", { workers: { cnt: 3 } }, /unknown key/],
    ];
    test.each(cases)("%s is rejected with its own message", (key, raw, message) => {
        const problems = problemsOf(raw);
        expect(problems).toHaveLength(1);
        expect(problems[0].startsWith(`${key}: `)).toBe(true);
        expect(problems[0]).toMatch(message);
    });

    test("several problems are all reported, one line each", () => {
        const problems = problemsOf({ domainType: "xen", workers: { count: -1, vcpus: 0 } });
        expect(problems.map((p) => p.split(":").slice(0, 2).join(":")).sort()).toEqual([
            "nixspark:domainType",
            "nixspark:workers.count",
            "nixspark:workers.vcpus",
        ]);
        expect(() => parseConfig({ domainType: "xen" })).toThrow(/^invalid stack configuration:\n  nixspark:domainType: /);
    });

    test("Pulumi's flat config map is decoded", () => {
        const raw = rawFromPulumiConfig({
            "nixspark:workers": '{"count":3}',
            "nixspark:domainType": "qemu",
            "other:key": "ignored",
        });
        expect(raw).toEqual({ workers: { count: 3 }, domainType: "qemu" });
    });
});

describe("nixspark:data, the shared data directory", () => {
    test("unset path: no shared directory; the defaults: /data, read-only, tag nixspark-data", () => {
        expect(parseConfig({}).data).toEqual({ mountPoint: "/data", readOnly: true, tag: "nixspark-data" });
        expect(parseConfig({ data: { path: "/srv/spark-data/", readOnly: "false" } }).data).toEqual({ path: "/srv/spark-data", mountPoint: "/data", readOnly: false, tag: "nixspark-data" });
    });

    test("refused before anything is created, naming the key: a relative path, a mount point that is relative or a system path, a tag longer than virtiofs holds", () => {
        expect(problemsOf({ data: { path: "data" } })).toEqual([expect.stringMatching(/^nixspark:data\.path: expected an absolute directory path on the host/)]);
        for (const bad of ["data", "/data/", "/a b", "/x/../etc"]) {
            expect(problemsOf({ data: { path: "/srv", mountPoint: bad } })).toEqual([expect.stringMatching(/^nixspark:data\.mountPoint: ".*": expected an absolute path/)]);
        }
        for (const system of ["/nix", "/nix/store", "/etc", "/etc/spark", "/var/lib/spark", "/var/lib/spark/data", "/run/data", "/", "/var", "/home", "/tmp"]) {
            expect(problemsOf({ data: { path: "/srv", mountPoint: system } })).toEqual([
                expect.stringMatching(/^nixspark:data\.mountPoint: \S+ is (in \S+, )?a system path the nodes need for themselves; mount the data directory elsewhere: pulumi config set --path data\.mountPoint \/data$/),
            ]);
        }
        for (const fine of ["/data", "/srv/data", "/var/lib/datasets", "/home/data", "/mnt/x"]) expect(parseConfig({ data: { path: "/srv", mountPoint: fine } }).data.mountPoint).toBe(fine);
        expect(problemsOf({ data: { path: "/srv", tag: "t".repeat(37) } })).toEqual([expect.stringMatching(/^nixspark:data\.tag: expected a virtiofs tag of at most 36 bytes/)]);
        expect(parseConfig({ data: { path: "/srv", tag: "t".repeat(36) } }).data.tag).toHaveLength(36);
        expect(problemsOf({ data: { path: "/srv", virtiofsd: "virtiofsd" } })).toEqual([expect.stringMatching(/^nixspark:data\.virtiofsd: expected the absolute path of virtiofsd/)]);
        expect(problemsOf({ data: { path: "/srv", readonly: true } })).toEqual([expect.stringMatching(/^nixspark:data\.readonly: unknown key; did you mean `data\.readOnly`\?/)]);
    });
});
