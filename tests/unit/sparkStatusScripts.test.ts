// `npm run status` and `npm run smoke` as processes, with their sources
// replaced: stand-ins for virsh and ssh (first on PATH, recording their argv)
// and a stand-in Spark master on loopback. This checks the I/O wiring that the
// real-Spark integration test (tests/integration/spark.test.ts) cannot reach
// without VMs: libvirt states, the NixOS system over SSH, and the smoke job
// submitted on the master over SSH.
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { run } from "../../providers/run";

jest.setTimeout(60_000);

const REPO = path.resolve(__dirname, "../..");
const SYS_M = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-dev-master-24.11";
const SYS_W = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-dev-worker-24.11";
const SYS_X = "/nix/store/cccccccccccccccccccccccccccccccc-nixos-system-dev-worker-24.11";

const FAKE_SSH = `#!/usr/bin/env python3
# Stand-in for ssh: records its argv, answers the remote commands the scripts send.
import json, os, sys
args = sys.argv[1:]
i = args.index("--")
dest, cmd = args[i - 1], args[i + 1:]
data = sys.stdin.read() if cmd[:1] == ["tee"] else ""
with open(os.environ["FAKE_SSH_LOG"], "a") as f:
    f.write(json.dumps({"opts": args[: i - 1], "dest": dest, "cmd": cmd, "stdin": data}) + "\\n")
host = dest.split("@", 1)[1]
if cmd[:1] == ["readlink"]:
    systems = json.loads(os.environ.get("FAKE_SYSTEMS", "{}"))
    if host in systems:
        print(systems[host])
        sys.exit(0)
    sys.stderr.write("ssh: connect to host %s port 22: Connection refused\\n" % host)
    sys.exit(255)
if cmd == ["env"]:
    # The deploy user's ssh session on a node (nix/modules/spark.nix environment.variables).
    print("PATH=/run/current-system/sw/bin\\nSPARK_CONF_DIR=/run/nixspark/spark-conf\\nPYSPARK_PYTHON=/nix/store/x-python3-env/bin/python3")
    sys.exit(0)
if cmd[:4] == ["sudo", "-n", "-u", "spark"]:
    cmd = cmd[4:]
if cmd[:1] == ["env"]:
    cmd = cmd[1:]
    while cmd and "=" in cmd[0]:
        cmd = cmd[1:]
if cmd[:1] == ["/run/current-system/sw/bin/spark-submit"]:
    sys.stdout.write(os.environ["FAKE_JOB_OUTPUT"])
    sys.exit(0)
sys.exit(0)
`;

const FAKE_VIRSH = `#!/usr/bin/env python3
# Stand-in for virsh -c URI domstate NAME.
import json, os, sys
assert sys.argv[1] == "-c" and sys.argv[3] == "domstate", sys.argv
states = json.loads(os.environ.get("FAKE_DOMSTATES", "{}"))
name = sys.argv[4]
if name in states:
    print(states[name])
    print()
    sys.exit(0)
sys.stderr.write("error: failed to get domain '%s'\\n" % name)
sys.exit(1)
`;

let dir: string;
let bin: string;
let server: http.Server;
let webUiUrl: string;
let masterBody = "";

function worker(host: string, state = "ALIVE") {
    return { id: `worker-1-${host}-4000`, host, port: 4000, webuiaddress: `http://${host}:8081`, cores: 2, coresused: 0, memory: 3072, memoryused: 0, state, lastheartbeat: 1 };
}
function setMaster(workers: ReturnType<typeof worker>[]) {
    const alive = workers.filter((w) => w.state === "ALIVE");
    masterBody = JSON.stringify({ url: "spark://127.0.0.10:7077", workers, aliveworkers: alive.length, cores: 2 * alive.length, memory: 3072 * alive.length, activeapps: [], status: "ALIVE" });
}

beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-scripts-"));
    bin = path.join(dir, "bin");
    fs.mkdirSync(bin);
    fs.mkdirSync(path.join(dir, "empty"));
    fs.writeFileSync(path.join(bin, "ssh"), FAKE_SSH, { mode: 0o755 });
    fs.writeFileSync(path.join(bin, "virsh"), FAKE_VIRSH, { mode: 0o755 });
    server = http.createServer((_req, res) => void res.writeHead(200, { "content-type": "application/json" }).end(masterBody));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    webUiUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
    await new Promise((r) => server.close(r));
    fs.rmSync(dir, { recursive: true, force: true });
});

// Loopback addresses only: nothing here may reach another machine, even by mistake.
const outputs = () => ({
    masterUrl: "spark://127.0.0.10:7077",
    webUiUrl,
    libvirtUri: "qemu:///system",
    nodes: [
        { name: "master", role: "master", ip: "127.0.0.10", libvirtName: "dev-master", system: SYS_M },
        { name: "worker-1", role: "worker", ip: "127.0.0.11", libvirtName: "dev-worker-1", system: SYS_W },
        { name: "worker-2", role: "worker", ip: "127.0.0.12", libvirtName: "dev-worker-2", system: SYS_W },
    ],
    ssh: { user: "deploy", port: 2222, identityFile: path.join(dir, "id_ed25519"), knownHostsFile: path.join(dir, "known_hosts") },
});

function writeOutputs(o: object): string {
    const f = path.join(dir, `outputs-${Math.random().toString(36).slice(2)}.json`);
    fs.writeFileSync(f, JSON.stringify(o));
    return f;
}

function script(name: string, args: string[], env: Record<string, string>) {
    const log = path.join(dir, `ssh-${Math.random().toString(36).slice(2)}.log`);
    const childEnv: Record<string, string | undefined> = { ...process.env, PATH: `${bin}:${process.env.PATH}`, FAKE_SSH_LOG: log, ...env };
    delete childEnv.SPARK_HOME; // smoke would otherwise submit locally
    return run([process.execPath, "-r", "ts-node/register/transpile-only", path.join(REPO, "scripts", name), ...args], {
        cwd: REPO,
        timeoutMs: 50_000,
        allowFailure: true,
        env: childEnv,
    }).then((r) => ({
        ...r,
        ssh: fs.existsSync(log) ? fs.readFileSync(log, "utf8").trim().split("\n").map((l) => JSON.parse(l) as { opts: string[]; dest: string; cmd: string[]; stdin: string }) : [],
    }));
}

describe("npm run status", () => {
    test("asks libvirt, each node over ssh and the master; names every degradation and exits 1", async () => {
        setMaster([worker("127.0.0.11")]);
        const r = await script("status.ts", ["--outputs", writeOutputs(outputs())], {
            FAKE_DOMSTATES: JSON.stringify({ "dev-master": "running", "dev-worker-1": "running", "dev-worker-2": "shut off" }),
            FAKE_SYSTEMS: JSON.stringify({ "127.0.0.10": SYS_M, "127.0.0.11": SYS_X }),
        });
        expect(r.stderr).toBe("");
        expect(r.code).toBe(1);
        expect(r.stdout).toMatch(/master\s+master\s+127\.0\.0\.10\s+running\s+current aaaaaaa\s+master ALIVE/);
        expect(r.stdout).toMatch(/worker-1\s+worker\s+127\.0\.0\.11\s+running\s+DRIFT ccccccc != bbbbbbb\s+ALIVE\s+0\/2\s+0\/3072 MiB/);
        expect(r.stdout).toMatch(/worker-2\s+worker\s+127\.0\.0\.12\s+shut off\s+unknown\s+MISSING/);
        expect(r.stdout).toMatch(/DEGRADED: 3 problem\(s\)/);
        expect(r.stdout).toMatch(/- worker-1 \(127\.0\.0\.11\): runs NixOS system \/nix\/store\/c+-nixos-system-dev-worker-24\.11, the stack deployed \/nix\/store\/b+/);
        expect(r.stdout).toMatch(/- worker-2 \(127\.0\.0\.12\): VM is shut off, expected running/);
        expect(r.stdout).toMatch(/- worker-2 \(127\.0\.0\.12\): Spark worker missing/);
        expect(r.stdout).toMatch(/worker-2: running NixOS system unknown: ssh deploy@127\.0\.0\.12: unreachable: ssh: connect to host 127\.0\.0\.12 port 22: Connection refused/);
        // ssh with the stack's key and known hosts, strict host keys, no prompts
        expect(r.ssh).toHaveLength(3);
        for (const call of r.ssh) {
            expect(call.cmd).toEqual(["readlink", "-f", "/run/current-system"]);
            expect(call.opts.join(" ")).toContain(`-p 2222 -i ${path.join(dir, "id_ed25519")}`);
            expect(call.opts).toEqual(expect.arrayContaining([`UserKnownHostsFile=${path.join(dir, "known_hosts")}`, "StrictHostKeyChecking=yes", "BatchMode=yes"]));
        }
        expect(r.ssh.map((c) => c.dest).sort()).toEqual(["deploy@127.0.0.10", "deploy@127.0.0.11", "deploy@127.0.0.12"]);
    });

    test("a libvirt domain that does not exist is MISSING; no virsh and no ssh are unknown/n/a, not a crash", async () => {
        setMaster([worker("127.0.0.11"), worker("127.0.0.12")]);
        const missing = await script("status.ts", ["--outputs", writeOutputs(outputs()), "--no-ssh"], {
            FAKE_DOMSTATES: JSON.stringify({ "dev-master": "running", "dev-worker-1": "running" }),
        });
        expect(missing.code).toBe(1);
        expect(missing.stdout).toMatch(/worker-2\s+worker\s+127\.0\.0\.12\s+MISSING\s+n\/a\s+ALIVE/);
        expect(missing.stdout).toMatch(/- worker-2 \(127\.0\.0\.12\): libvirt domain dev-worker-2 does not exist/);
        expect(missing.ssh).toEqual([]);

        const noTools = await script("status.ts", ["--outputs", writeOutputs(outputs()), "--virsh", path.join(dir, "no-such-virsh"), "--json"], {
            PATH: path.join(dir, "empty"), // neither virsh nor ssh on PATH
            FAKE_SYSTEMS: JSON.stringify({ "127.0.0.10": SYS_M, "127.0.0.11": SYS_W, "127.0.0.12": SYS_W }),
        });
        const report = JSON.parse(noTools.stdout);
        expect(report.rows.map((x: { libvirt: string }) => x.libvirt)).toEqual(["unknown", "unknown", "unknown"]);
        expect(report.notes[0]).toMatch(/master: libvirt state unknown: .*no-such-virsh is not installed/);
        expect(report.notes).toContain("worker-2: running NixOS system unknown: ssh is not installed");
        expect(report.rows.map((x: { system: string }) => x.system)).toEqual(["unknown", "unknown", "unknown"]);
        expect(report.degraded).toBe(false);
        expect(noTools.code).toBe(0);
    });

    test("unreadable outputs: exit 2 with what to do", async () => {
        const r = await script("status.ts", ["--outputs", writeOutputs({ webUiUrl })], {});
        expect(r.code).toBe(2);
        expect(r.stderr).toMatch(/status: .*output "masterUrl" is missing; .*Run `pulumi up` for this stack first, or pass --outputs FILE/);
        const bad = await script("status.ts", ["--bogus"], {});
        expect(bad.code).toBe(2);
        expect(bad.stderr).toMatch(/unknown option --bogus/);
    });
});

describe("npm run smoke over ssh (the default on a real cluster)", () => {
    const jobOutput = (workers: string[], total = "333338333350000") =>
        [0, 1, 2, 3].map((p) => `NIXSPARK_TASK partition=${p} worker=${workers[p % workers.length]} executor=${p % 2} host=h pid=1 count=25000 sum=1`).join("\n") +
        `\nNIXSPARK_RESULT sum=${total} expected=333338333350000 partitions=4 workers=${new Set(workers).size}\n`;

    test("copies the job to the master, runs spark-submit there with the spread settings, cleans up", async () => {
        setMaster([worker("127.0.0.11"), worker("127.0.0.12")]);
        const r = await script("smoke.ts", ["--outputs", writeOutputs(outputs())], { FAKE_JOB_OUTPUT: jobOutput(["127.0.0.11:8081", "127.0.0.12:8081"]) });
        expect(r.code).toBe(0);
        expect(r.stdout).toMatch(/smoke: OK in \d+ s: sum of squares 1\.\.100000 = 333338333350000; 4 tasks on 2 workers: 127\.0\.0\.11:8081 \(partitions 0,2\), 127\.0\.0\.12:8081 \(partitions 1,3\)/);
        expect(r.ssh.map((c) => c.cmd[0])).toEqual(["tee", "/run/current-system/sw/bin/spark-submit", "rm"]);
        expect(r.ssh.every((c) => c.dest === "deploy@127.0.0.10")).toBe(true);
        const [upload, submit, cleanup] = r.ssh;
        const remote = upload.cmd[1];
        expect(remote).toMatch(/^\/tmp\/nixspark-smoke-[0-9a-f]{12}\.py$/);
        expect(upload.stdin).toBe(fs.readFileSync(path.join(REPO, "scripts/jobs/sum_of_squares.py"), "utf8"));
        expect(submit.cmd).toEqual([
            "/run/current-system/sw/bin/spark-submit", "--master", "spark://127.0.0.10:7077", "--name", "nixspark-smoke",
            "--conf", "spark.executor.cores=1", "--conf", "spark.cores.max=2", "--conf", "spark.executor.memory=512m",
            "--conf", "spark.deploy.spreadOut=true", "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0",
            "--conf", "spark.scheduler.maxRegisteredResourcesWaitingTime=120s", "--conf", "spark.ui.enabled=false",
            remote,
        ]);
        expect(cleanup.cmd).toEqual(["rm", "-f", remote]);
    });

    test("with Spark authentication the deploy user submits as spark (who may read the secret configuration); root submits as itself", async () => {
        setMaster([worker("127.0.0.11"), worker("127.0.0.12")]);
        const env = { FAKE_JOB_OUTPUT: jobOutput(["127.0.0.11:8081", "127.0.0.12:8081"]) };
        const auth = await script("smoke.ts", ["--outputs", writeOutputs({ ...outputs(), security: { authenticate: true } })], env);
        expect(auth.code).toBe(0);
        // spark-submit as spark, with what sudo's reset would drop carried from the session by env.
        expect(auth.ssh[1].cmd).toEqual(["env"]);
        expect(auth.ssh[2].cmd.slice(0, 8)).toEqual([
            "sudo", "-n", "-u", "spark",
            "env", "SPARK_CONF_DIR=/run/nixspark/spark-conf", "PYSPARK_PYTHON=/nix/store/x-python3-env/bin/python3",
            "/run/current-system/sw/bin/spark-submit",
        ]);
        const asRoot = await script("smoke.ts", ["--outputs", writeOutputs({ ...outputs(), security: { authenticate: true }, ssh: { ...outputs().ssh, user: "root" } })], env);
        expect(asRoot.code).toBe(0);
        expect(asRoot.ssh[1].cmd[0]).toBe("/run/current-system/sw/bin/spark-submit");
    });

    test("tasks on one worker only, or a wrong sum: exit 1 with the reason", async () => {
        setMaster([worker("127.0.0.11"), worker("127.0.0.12")]);
        const one = await script("smoke.ts", ["--outputs", writeOutputs(outputs())], { FAKE_JOB_OUTPUT: jobOutput(["127.0.0.11:8081"]) });
        expect(one.code).toBe(1);
        expect(one.stderr).toMatch(/smoke: FAILED after \d+ s:\nsmoke:   - tasks ran on 1 worker\(s\) \(127\.0\.0\.11:8081\), expected at least 2/);
        const wrong = await script("smoke.ts", ["--outputs", writeOutputs(outputs())], { FAKE_JOB_OUTPUT: jobOutput(["a:1", "b:1"], "7") });
        expect(wrong.code).toBe(1);
        expect(wrong.stderr).toMatch(/wrong result: the job computed 7, expected 333338333350000/);
    });

    test("fewer ALIVE workers than needed: fails before submitting, pointing at status", async () => {
        setMaster([worker("127.0.0.11"), worker("127.0.0.12", "DEAD")]);
        const r = await script("smoke.ts", ["--outputs", writeOutputs(outputs())], { FAKE_JOB_OUTPUT: "" });
        expect(r.code).toBe(1);
        expect(r.stderr).toMatch(/the master reports 1 ALIVE worker\(s\), the smoke test needs tasks on 2; run `npm run status`/);
        expect(r.ssh).toEqual([]);
    });
});
