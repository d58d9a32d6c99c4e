// The status view, the stack outputs the scripts read, and the smoke job's
// output (cluster/sparkStatus.ts), with fabricated inputs.
import {
    buildStatusReport,
    NodeObservation,
    parseStackOutputs,
    renderStatus,
    shortSystem,
    StackNode,
    verifySmokeOutput,
} from "../../cluster/sparkStatus";
import { declared, master, w } from "./masterJson";

const SYS_A = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-dev-master-24.11";
const SYS_B = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-dev-worker-24.11";
const SYS_C = "/nix/store/cccccccccccccccccccccccccccccccc-nixos-system-dev-worker-24.11";

describe("status report", () => {
    const nodes: StackNode[] = [
        { name: "master", role: "master", ip: "10.77.0.10", libvirtName: "dev-master", system: SYS_A },
        { name: "worker-1", role: "worker", ip: "10.77.0.11", libvirtName: "dev-worker-1", system: SYS_B },
        { name: "worker-2", role: "worker", ip: "10.77.0.12", libvirtName: "dev-worker-2", system: SYS_B },
    ];
    const up = (node: StackNode, system = node.system as string): NodeObservation => ({ node, libvirt: { ok: true, value: "running" }, system: { ok: true, value: system } });
    const webUiUrl = "http://10.77.0.10:8080";

    test("all running, current and ALIVE: not degraded, one row per node", () => {
        const r = buildStatusReport(nodes.map((n) => up(n)), { state: master([w("10.77.0.11"), w("10.77.0.12")]), webUiUrl });
        expect(r.degraded).toBe(false);
        expect(r.rows.map((x) => [x.node, x.libvirt, x.system, x.spark, x.cores, x.memory])).toEqual([
            ["master", "running", "current aaaaaaa", "master ALIVE", "4", "6144 MiB"],
            ["worker-1", "running", "current bbbbbbb", "ALIVE", "1/2", "512/3072 MiB"],
            ["worker-2", "running", "current bbbbbbb", "ALIVE", "1/2", "512/3072 MiB"],
        ]);
        const text = renderStatus(r);
        expect(text.split("\n")[0]).toMatch(/^NODE\s+ROLE\s+ADDRESS\s+LIBVIRT\s+NIXOS SYSTEM\s+SPARK\s+CORES\s+MEMORY$/);
        expect(text).toMatch(/master spark:\/\/10\.77\.0\.10:7077: ALIVE, 2 alive worker\(s\), 4 cores, 6144 MiB, 1 running app\(s\)/);
        expect(text).toMatch(/^OK: /m);
    });

    test("every kind of degradation is named with its node", () => {
        const obs: NodeObservation[] = [
            up(nodes[0]),
            { node: nodes[1], libvirt: { ok: true, value: "shut off" }, system: { ok: false, error: "ssh deploy@10.77.0.11: unreachable" } },
            { ...up(nodes[2], SYS_C) },
        ];
        const r = buildStatusReport(obs, { state: master([w("10.77.0.12", "DEAD")]), webUiUrl });
        expect(r.degraded).toBe(true);
        expect(r.problems).toEqual([
            "worker-1 (10.77.0.11): VM is shut off, expected running",
            "worker-1 (10.77.0.11): Spark worker missing: not registered with the master",
            `worker-2 (10.77.0.12): runs NixOS system ${SYS_C}, the stack deployed ${SYS_B}`,
            "worker-2 (10.77.0.12): Spark worker DEAD: the master lost contact with it (registration worker-20260101000000-10.77.0.12-4000)",
        ]);
        expect(r.rows[1]).toMatchObject({ libvirt: "shut off", system: "unknown", spark: "MISSING", cores: "-" });
        expect(r.rows[2]).toMatchObject({ system: "DRIFT ccccccc != bbbbbbb", spark: "DEAD" });
        expect(r.notes).toEqual(["worker-1: running NixOS system unknown: ssh deploy@10.77.0.11: unreachable"]);
        const text = renderStatus(r);
        expect(text).toMatch(/DEGRADED: 4 problem\(s\)\n  - worker-1 \(10\.77\.0\.11\): VM is shut off/);
        expect(text).toMatch(/Not checked:\n  - worker-1: running NixOS system unknown/);
    });

    test("a domain libvirt does not know is MISSING; libvirt or ssh that cannot be asked is unknown, not degraded", () => {
        const r = buildStatusReport(
            [
                { node: nodes[0], libvirt: { ok: false, error: "virsh is not installed" }, system: { ok: false, error: "ssh is not installed" } },
                { node: nodes[1], libvirt: { missing: true } },
                { node: nodes[2] },
            ],
            { state: master([w("10.77.0.11"), w("10.77.0.12")]), webUiUrl },
        );
        expect(r.rows.map((x) => [x.libvirt, x.system])).toEqual([
            ["unknown", "unknown"],
            ["MISSING", "n/a"],
            ["n/a", "n/a"],
        ]);
        expect(r.problems).toEqual(["worker-1 (10.77.0.11): libvirt domain dev-worker-1 does not exist"]);
    });

    test("an unreachable master degrades the cluster and leaves worker state unknown", () => {
        const r = buildStatusReport(nodes.map((n) => up(n)), { error: "connect ECONNREFUSED 10.77.0.10:8080", webUiUrl });
        expect(r.degraded).toBe(true);
        expect(r.problems).toEqual(["master: the Spark master's web UI http://10.77.0.10:8080 did not answer: connect ECONNREFUSED 10.77.0.10:8080"]);
        expect(r.rows.map((x) => x.spark)).toEqual(["UNREACHABLE", "unknown", "unknown"]);
        expect(r.master).toMatch(/UNREACHABLE/);
    });

    test("an undeclared worker is listed and noted but does not degrade", () => {
        const r = buildStatusReport(nodes.map((n) => up(n)), { state: master([w("10.77.0.11"), w("10.77.0.12"), w("10.77.0.50")]), webUiUrl });
        expect(r.degraded).toBe(false);
        expect(r.rows[3]).toMatchObject({ node: "(undeclared)", address: "10.77.0.50", spark: "ALIVE" });
    });

    test("shortSystem keeps the hash prefix and the name", () => {
        expect(shortSystem(SYS_A)).toBe("aaaaaaa nixos-system-dev-master-24.11");
        expect(shortSystem("/run/current-system")).toBe("/run/current-system");
    });
});

describe("parseStackOutputs", () => {
    const ok = {
        masterUrl: "spark://10.77.0.10:7077",
        webUiUrl: "http://10.77.0.10:8080",
        libvirtUri: "qemu:///system",
        network: "dev-net",
        nodes: [
            { name: "master", role: "master", ip: "10.77.0.10", mac: "x", hostname: "dev-master", libvirtName: "dev-master", system: SYS_A },
            { name: "worker-1", role: "worker", ip: "10.77.0.11", libvirtName: "dev-worker-1" },
        ],
        ssh: { user: "deploy", port: 22, identityFile: "~/.ssh/id_ed25519", knownHostsFile: "~/.config/nixspark/dev/known_hosts" },
    };
    test("keeps what the scripts use", () => {
        expect(parseStackOutputs(ok, "stack dev")).toEqual({
            masterUrl: ok.masterUrl,
            webUiUrl: ok.webUiUrl,
            libvirtUri: "qemu:///system",
            nodes: [
                { name: "master", role: "master", ip: "10.77.0.10", libvirtName: "dev-master", system: SYS_A },
                { name: "worker-1", role: "worker", ip: "10.77.0.11", libvirtName: "dev-worker-1" },
            ],
            ssh: ok.ssh,
        });
    });
    test("names the missing output and says how to fix it", () => {
        expect(() => parseStackOutputs({}, "stack dev")).toThrow(/stack dev: output "masterUrl" is missing; expected for example spark:\/\/10\.77\.0\.10:7077\. Run `pulumi up`/);
        expect(() => parseStackOutputs({ ...ok, nodes: [{ name: "m", role: "master" }] }, "f.json")).toThrow(/output "nodes\[0\]\.ip" is missing/);
        expect(() => parseStackOutputs({ ...ok, ssh: { user: "deploy" } }, "f.json")).toThrow(/output "ssh" must be \{user, port, identityFile, knownHostsFile\}/);
    });
});

describe("verifySmokeOutput", () => {
    const task = (p: number, worker: string, sum: string) => `NIXSPARK_TASK partition=${p} worker=${worker} executor=${p % 2} host=h pid=1 count=25000 sum=${sum}`;
    const lines = (workers: string[], total = "333338333350000") =>
        [
            "some spark noise",
            task(0, workers[0], "1"),
            task(1, workers[1 % workers.length], "2"),
            task(2, workers[0], "3"),
            task(3, workers[1 % workers.length], "4"),
            `NIXSPARK_RESULT sum=${total} expected=333338333350000 partitions=4 workers=${new Set(workers).size}`,
        ].join("\n");

    test("a right sum with tasks on two workers passes", () => {
        const v = verifySmokeOutput(lines(["10.77.0.11:8081", "10.77.0.12:8081"]), 2);
        expect(v.ok).toBe(true);
        expect(v.workers).toEqual([
            { worker: "10.77.0.11:8081", partitions: [0, 2] },
            { worker: "10.77.0.12:8081", partitions: [1, 3] },
        ]);
    });
    test("all tasks on one worker fails and says so", () => {
        const v = verifySmokeOutput(lines(["10.77.0.11:8081"]), 2);
        expect(v.ok).toBe(false);
        expect(v.problems).toEqual([expect.stringMatching(/^tasks ran on 1 worker\(s\) \(10\.77\.0\.11:8081\), expected at least 2/)]);
    });
    test("a wrong sum or a job that did not finish fails", () => {
        expect(verifySmokeOutput(lines(["a", "b"], "42"), 2).problems).toEqual(["wrong result: the job computed 42, expected 333338333350000"]);
        const none = verifySmokeOutput("Traceback: boom", 2);
        expect(none.problems[0]).toMatch(/printed no NIXSPARK_RESULT line/);
        expect(none.problems[1]).toMatch(/expected 4 task lines/);
    });
});
