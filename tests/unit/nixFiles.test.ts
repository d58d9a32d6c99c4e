// The Nix side, as far as Debian's Nix 2.8 can check it without nixpkgs:
// every .nix file parses, and the pure functions that turn stack settings
// into node parameters evaluate and follow their rules.
import * as fs from "node:fs";
import * as path from "node:path";
import { copyDir, evalJson, FIXTURES, filesUnder, nix, NIX_DIR, nixEnv } from "../fixtures/nix-env";

jest.setTimeout(120_000);

beforeAll(() => {
    nixEnv();
});

const example = JSON.parse(fs.readFileSync(path.join(NIX_DIR, "stacks/example.json"), "utf8"));

/** params.nix applied to the example stack with some fields replaced. */
function params<T = any>(overrides: Record<string, unknown> = {}): T {
    return evalJson<T>(`import ./lib/params.nix (builtins.fromJSON ${JSON.stringify(JSON.stringify({ ...example, ...overrides }))})`);
}

/** The error message of a params evaluation that must fail. */
function paramsError(overrides: Record<string, unknown>): string {
    try {
        params(overrides);
    } catch (e) {
        return (e as Error).message;
    }
    throw new Error("expected the evaluation to fail");
}

describe("every .nix file", () => {
    const files = [...filesUnder(NIX_DIR, ".nix"), ...fs.readdirSync(FIXTURES).filter((d) => d.startsWith("nix-") && fs.statSync(path.join(FIXTURES, d)).isDirectory()).flatMap((d) => filesUnder(path.join(FIXTURES, d), ".nix"))];

    test("there are the files the design names", () => {
        const rel = files.map((f) => path.relative(NIX_DIR, f));
        for (const f of ["flake.nix", "lib/params.nix", "lib/stacks.nix", "modules/common.nix", "modules/image.nix", "modules/master.nix", "modules/worker.nix", "modules/spark.nix", "tests/spark-cluster.nix"]) {
            expect(rel).toContain(f);
        }
    });

    test.each(files.map((f) => [path.relative(path.dirname(NIX_DIR), f), f]))("%s parses", (_rel, file) => {
        nix(["nix-instantiate", "--parse", file]);
    });
});

describe("lib/params.nix (stack settings -> node parameters)", () => {
    test("the example stack", () => {
        const p = params();
        expect(p.stack).toBe("example");
        expect(p.deployUser).toBe("deploy");
        expect(p.sshKeys).toEqual([example.sshPublicKey]);
        expect(p.master).toEqual({ ip: "10.77.0.10", hostname: "example-master", vcpus: 2, memoryMiB: 2048, url: "spark://10.77.0.10:7077", webUiUrl: "http://10.77.0.10:8080" });
        expect(p.worker.cores).toBe(2);
        expect(p.ports).toEqual({ ssh: 22, master: 7077, masterWebUi: 8080, worker: 7078, workerWebUi: 8081 });
        expect(p.network).toEqual({ cidr: "10.77.0.0/24", prefix: 24, mode: "nat" });
    });

    test.each([
        // VM MiB, OS reserve, Spark memory (VM - reserve - 512 MiB daemon heap, at least 256)
        [1024, 512, 256],
        [2048, 512, 1024],
        [4096, 512, 3072],
        [8192, 819, 6861],
        [65536, 6553, 58471],
    ])("a worker VM of %i MiB keeps %i MiB for the OS and offers %i MiB to Spark", (vm, reserve, spark) => {
        const p = params({ worker: { vcpus: 3, memoryMiB: vm } });
        expect(p.worker).toEqual({ cores: 3, vmMemoryMiB: vm, osReserveMiB: reserve, sparkMemoryMiB: spark });
        expect(p.worker.sparkMemoryMiB + p.worker.osReserveMiB + p.daemonMemoryMiB).toBeLessThanOrEqual(Math.max(vm, 256 + reserve + 512));
    });

    test("Spark settings: fixed ports and the master by default, the stack's settings win, every value a string", () => {
        const p = params({ sparkSettings: { "spark.executor.memory": "1g", "spark.sql.shuffle.partitions": 8, "spark.eventLog.enabled": true, "spark.ui.port": "4140" } });
        expect(p.sparkSettings).toEqual({
            "spark.master": "spark://10.77.0.10:7077",
            "spark.driver.port": "7100",
            "spark.blockManager.port": "7200",
            "spark.port.maxRetries": "16",
            "spark.decommission.enabled": "true",
            "spark.storage.decommission.enabled": "true",
            "spark.ui.port": "4140",
            "spark.executor.memory": "1g",
            "spark.sql.shuffle.partitions": "8",
            "spark.eventLog.enabled": "true",
        });
    });

    test("workers leave gracefully: decommissioning (SIGPWR) and block migration are on by default, and a stack can turn them off", () => {
        expect(params().sparkSettings).toMatchObject({ "spark.decommission.enabled": "true", "spark.storage.decommission.enabled": "true" });
        const off = params({ sparkSettings: { "spark.decommission.enabled": false } }).sparkSettings;
        expect(off["spark.decommission.enabled"]).toBe("false");
        expect(off["spark.storage.decommission.enabled"]).toBe("true");
    });

    test("the firewall opens the fixed ports and each port setting with its retries, to the cluster subnet", () => {
        const p = params({ sparkSettings: { "spark.driver.port": "9000", "spark.port.maxRetries": "4", "spark.driver.blockManager.port": "9100" } });
        expect(p.firewall.sourceCidr).toBe("10.77.0.0/24");
        expect(p.firewall.tcpPorts).toEqual([7077, 8080, 7078, 8081]);
        expect(p.firewall.tcpPortRanges).toEqual([
            { from: 9000, to: 9004 },
            { from: 7200, to: 7204 },
            { from: 9100, to: 9104 },
            { from: 4040, to: 4044 },
        ]);
    });

    test("a port setting of 0 (random) opens nothing for it", () => {
        const p = params({ sparkSettings: { "spark.blockManager.port": "0" } });
        expect(p.firewall.tcpPortRanges.map((r: { from: number }) => r.from)).toEqual([7100, 4040]);
    });

    test("python packages: the stack's list, sorted, without duplicates; the default list when absent", () => {
        expect(params({ pythonPackages: ["scipy", "pyarrow", "numpy", "scipy"] }).pythonPackages).toEqual(["numpy", "pyarrow", "scipy"]);
        const { pythonPackages: _dropped, ...withoutList } = example;
        expect(evalJson<any>(`(import ./lib/params.nix (builtins.fromJSON ${JSON.stringify(JSON.stringify(withoutList))})).pythonPackages`)).toEqual(["numpy", "pandas"]);
    });

    test("the node block (master up to the DHCP pool) and the gateway, as cluster/topology.ts lays them out", () => {
        expect(params().firewall.nodeRange).toEqual({ from: "10.77.0.10", to: "10.77.0.191" });
        expect(params().firewall.gateway).toBe("10.77.0.1");
        const wide = params({ cidr: "10.64.4.0/22", prefix: 22, masterIp: "10.64.4.10" });
        expect(wide.firewall.nodeRange).toEqual({ from: "10.64.4.10", to: "10.64.6.255" });
        expect(wide.firewall.gateway).toBe("10.64.4.1");
    });

    test("security: off unless the stack file asks; settings follow; a Spark setting cannot override them", () => {
        expect(params().security).toEqual({ authenticate: false, ioEncryption: false });
        const on = params({ security: { authenticate: true } });
        expect(on.sparkSettings["spark.authenticate"]).toBe("true");
        expect(on.sparkSettings["spark.network.crypto.enabled"]).toBe("true");
        expect(on.sparkSettings["spark.io.encryption.enabled"]).toBeUndefined();
        expect(paramsError({ security: { authenticate: "yes" } })).toMatch(/security.authenticate: expected true or false/);
        expect(paramsError({ sparkSettings: { "spark.network.crypto.enabled": "false" } })).toMatch(/set by nixspark:security/);
    });

    test("pyspark is refused: jobs get PySpark from the Spark package, a second one would shadow its spark-submit", () => {
        expect(paramsError({ pythonPackages: ["numpy", "pyspark"] })).toMatch(/pythonPackages: remove "pyspark": every job already gets PySpark from the cluster's own Spark package/);
    });

    test.each([
        [{ version: 2 }, /version 2 is not understood/],
        [{ sshPublicKey: "not a key" }, /field "sshPublicKey": expected an SSH public key line/],
        [{ masterIp: "10.77.0.300" }, /masterIp: expected an IPv4 address/],
        [{ worker: { vcpus: 0, memoryMiB: 4096 } }, /worker.vcpus: expected a whole number of at least 1/],
        [{ worker: { vcpus: 2 } }, /worker.memoryMiB is missing/],
        [{ sparkSettings: { "executor.memory": "1g" } }, /executor.memory: Spark setting names start with "spark."/],
        [{ sparkSettings: { "spark.memory.fraction": 0.5 } }, /write fractional numbers as strings/],
        [{ sparkSettings: { "spark.driver.port": "http" } }, /spark.driver.port" = "http": expected a TCP port number/],
        [{ pythonPackages: "numpy" }, /pythonPackages: expected a list of python3Packages attribute names/],
    ])("refuses %j with a message that names the field", (overrides, message) => {
        expect(paramsError(overrides)).toMatch(message);
    });

    test("a missing field is named", () => {
        const { masterIp: _dropped, ...rest } = example;
        expect(() => evalJson(`import ./lib/params.nix (builtins.fromJSON ${JSON.stringify(JSON.stringify(rest))})`)).toThrow(/missing field "masterIp"/);
    });
});

describe("lib/stacks.nix (every stacks/<stack>.json)", () => {
    test("one entry per JSON file, named after the file", () => {
        const dir = copyDir(path.join(NIX_DIR, "stacks"), "nixspark-stacks-");
        fs.writeFileSync(path.join(dir, "dev.json"), JSON.stringify({ ...example, stack: "dev", masterIp: "10.88.0.10" }));
        fs.writeFileSync(path.join(dir, "notes.txt"), "not a stack");
        const stacks = evalJson<Record<string, any>>(`builtins.mapAttrs (_: p: p.master.ip) (import ./lib/stacks.nix { stacksDir = ${dir}; })`);
        expect(stacks).toEqual({ dev: "10.88.0.10", example: "10.77.0.10" });
    });

    test("a file whose stack field differs from its name is refused", () => {
        const dir = copyDir(path.join(NIX_DIR, "stacks"), "nixspark-stacks-");
        fs.writeFileSync(path.join(dir, "prod.json"), JSON.stringify({ ...example, stack: "dev" }));
        expect(() => evalJson(`builtins.mapAttrs (_: p: p.stack) (import ./lib/stacks.nix { stacksDir = ${dir}; })`)).toThrow(/prod.json holds settings for stack "dev"/);
    });
});

describe("lib/params-module.nix (parameters -> nixspark.* options)", () => {
    test("sets the options the role modules read", () => {
        const m = evalJson<any>(`import ./lib/params-module.nix (import ./lib/params.nix (builtins.fromJSON (builtins.readFile ./stacks/example.json)))`);
        expect(m.nixspark.clusterCidr).toBe("10.77.0.0/24");
        expect(m.nixspark.master).toEqual({ address: "10.77.0.10", hostname: "example-master", port: 7077, webUiPort: 8080 });
        expect(m.nixspark.worker).toEqual({ cores: 2, memoryMiB: 3072, port: 7078, webUiPort: 8081 });
        expect(m.nixspark.pythonPackages).toEqual(["numpy", "pandas"]);
        expect(m.nixspark.firewall.tcpPorts).toEqual([7077, 8080, 7078, 8081]);
        expect(Object.keys(m.nixspark).sort()).toEqual(
            ["clusterCidr", "daemonMemoryMiB", "deployUser", "firewall", "master", "network", "pythonPackages", "security", "sparkSettings", "sshKeys", "stack", "worker"].sort(),
        );
    });

    test("every option it sets is declared in modules/options.nix", () => {
        const options = fs.readFileSync(path.join(NIX_DIR, "modules/options.nix"), "utf8");
        const m = evalJson<any>(`import ./lib/params-module.nix (import ./lib/params.nix (builtins.fromJSON (builtins.readFile ./stacks/example.json)))`);
        const leaves = (o: Record<string, unknown>, prefix: string[]): string[][] =>
            Object.entries(o).flatMap(([k, v]) => (v && typeof v === "object" && !Array.isArray(v) && k !== "sparkSettings" ? leaves(v as Record<string, unknown>, [...prefix, k]) : [[...prefix, k]]));
        for (const leaf of leaves(m.nixspark, [])) {
            expect([leaf.join("."), new RegExp(`\\b${leaf[leaf.length - 1]} = mkOption`).test(options)]).toEqual([leaf.join("."), true]);
        }
    });
});

describe("flake.lock", () => {
    test("pins nixpkgs to a nixos-24.11 revision that Nix 2.8 reads", () => {
        const lock = JSON.parse(fs.readFileSync(path.join(NIX_DIR, "flake.lock"), "utf8"));
        expect(lock.nodes.nixpkgs.original).toEqual({ owner: "NixOS", repo: "nixpkgs", ref: "nixos-24.11", type: "github" });
        expect(lock.nodes.nixpkgs.locked.rev).toMatch(/^[0-9a-f]{40}$/);
        expect(lock.nodes.nixpkgs.locked.narHash).toMatch(/^sha256-[A-Za-z0-9+/]{43}=$/);
        const dir = copyDir(NIX_DIR, "nixspark-flake-");
        const meta = JSON.parse(nix(["nix", "--extra-experimental-features", "nix-command flakes", "flake", "metadata", "--json", `path:${dir}`]));
        expect(meta.locks.nodes.nixpkgs.locked.rev).toBe(lock.nodes.nixpkgs.locked.rev);
        expect(meta.description).toMatch(/nixspark/);
    });
});

describe("event logs and the history server: the options and the NixOS test's helper", () => {
    test("nixspark.history defaults: on, port 18080, logs under /var/lib/spark (modules/options.nix, evaluated alone)", () => {
        const stubLib = path.join(FIXTURES, "nix-stub-nixpkgs/lib");
        const h = evalJson<any>(`let lib = import ${stubLib}; in (lib.evalModules { modules = [ ./modules/options.nix { nixspark.clusterCidr = "10.77.0.0/24"; nixspark.master.address = "10.77.0.10"; } ]; }).config.nixspark.history`);
        expect(h).toEqual({ enable: true, port: 18080, logDirectory: "/var/lib/spark/event-logs" });
    });

    test("nix/tests/history_apps.py prints each completed application's name and user from /api/v1/applications, and no running one", async () => {
        const { spawn } = require("node:child_process") as typeof import("node:child_process");
        const apps = [
            { id: "app-1", name: "sum-of-squares", attempts: [{ completed: true, sparkUser: "root" }] },
            { id: "app-2", name: "sum-of-squares", attempts: [{ completed: true, sparkUser: "analyst" }] },
            { id: "app-3", name: "still-running", attempts: [{ completed: false, sparkUser: "analyst" }] },
        ];
        // A stand-in for the history server's REST API, on loopback.
        const server = `import http.server, json\nclass H(http.server.BaseHTTPRequestHandler):\n    def do_GET(self):\n        body = json.dumps(json.loads(${JSON.stringify(JSON.stringify(apps))}) if self.path == "/api/v1/applications" else {}).encode()\n        self.send_response(200 if self.path == "/api/v1/applications" else 404); self.end_headers(); self.wfile.write(body)\n    def log_message(self, *a): pass\ns = http.server.HTTPServer(("127.0.0.1", 0), H)\nprint(s.server_address[1], flush=True)\ns.serve_forever()\n`;
        const child = spawn("python3", ["-c", server], { stdio: ["ignore", "pipe", "inherit"] });
        try {
            const port = await new Promise<string>((resolve, reject) => {
                child.stdout!.once("data", (d: Buffer) => resolve(d.toString().trim()));
                child.once("exit", (code) => reject(new Error(`the stand-in server exited with ${code}`)));
            });
            const { execFileSync } = require("node:child_process") as typeof import("node:child_process");
            const out = execFileSync("python3", [path.join(NIX_DIR, "tests/history_apps.py"), `http://127.0.0.1:${port}/`], { encoding: "utf8", timeout: 20_000 });
            expect(out.split("\n").filter(Boolean)).toEqual(["sum-of-squares root", "sum-of-squares analyst"]);
        } finally {
            child.kill("SIGKILL");
        }
    });
});
