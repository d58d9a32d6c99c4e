// The SparkHealth provider's contract against a stand-in master on loopback
// that serves fabricated /json/ bodies: diff/check rules, timeouts that name
// the missing workers, progress lines, refresh, and closure serialization.
// The same gate against a real Spark master: tests/integration/spark.test.ts.
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { removedWorkers, sparkHealthProvider, SparkHealthInputs } from "../../providers/sparkHealth";
import { roundTrip } from "../helpers/serialize";

const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

function worker(host: string, state = "ALIVE", id = `worker-20260101000000-${host}-4000`) {
    return { id, host, port: 4000, webuiaddress: `http://${host}:8081`, cores: 2, coresused: 0, memory: 3072, memoryused: 0, state, lastheartbeat: Date.now() };
}
function masterBody(workers: ReturnType<typeof worker>[], status = "ALIVE") {
    const alive = workers.filter((w) => w.state === "ALIVE");
    return JSON.stringify({
        url: "spark://10.77.0.10:7077",
        workers,
        aliveworkers: alive.length,
        cores: alive.length * 2,
        memory: alive.length * 3072,
        activeapps: [],
        status,
    });
}

let server: http.Server;
let body = "";
let requests = 0;
let webUiUrl = "";

beforeAll(async () => {
    server = http.createServer((req, res) => {
        requests++;
        if (req.url !== "/json/") {
            res.writeHead(404).end("not found");
            return;
        }
        res.writeHead(200, { "content-type": "application/json" }).end(body);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    webUiUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
    await new Promise((r) => server.close(r));
});
// Progress lines go to stderr; tests that look at them install their own spy.
let quiet: jest.SpyInstance;
beforeEach(() => (quiet = jest.spyOn(console, "error").mockImplementation(() => undefined)));
afterEach(() => quiet.mockRestore());

const expectedWorkers = [
    { name: "worker-1", ip: "10.77.0.11" },
    { name: "worker-2", ip: "10.77.0.12" },
];
const inputs = (over: Partial<SparkHealthInputs> = {}): SparkHealthInputs => ({
    masterUrl: "spark://10.77.0.10:7077",
    webUiUrl,
    expectedWorkers,
    timeoutSeconds: 5,
    trigger: { systems: ["/nix/store/aaa-nixos-system"], workers: 2 },
    ...over,
});

describe("SparkHealth create", () => {
    test("passes when the master and every declared worker are ALIVE, with totals", async () => {
        body = masterBody([worker("10.77.0.11"), worker("10.77.0.12")]);
        const r = await sparkHealthProvider.create!(inputs());
        expect(r.id).toBe("spark-health:spark://10.77.0.10:7077");
        expect(r.outs).toMatchObject({
            masterUrl: "spark://10.77.0.10:7077",
            webUiUrl,
            aliveWorkers: 2,
            totalCores: 4,
            totalMemoryMiB: 6144,
            masterStatus: "ALIVE",
            // every input comes back in outs: olds in diff/update are outputs
            expectedWorkers,
            timeoutSeconds: 5,
            trigger: inputs().trigger,
        });
        expect(Date.parse(r.outs.checkedAt)).toBeGreaterThan(Date.now() - 60_000);
    });

    test("fails on timeout naming the dead and the missing worker and quoting the master", async () => {
        body = masterBody([worker("10.77.0.11"), worker("10.77.0.12", "DEAD")]);
        const more = [...expectedWorkers, { name: "worker-3", ip: "10.77.0.13" }];
        const started = Date.now();
        const err = await sparkHealthProvider.create!(inputs({ expectedWorkers: more, timeoutSeconds: 3 })).catch((e: Error) => e);
        expect(err).toBeInstanceOf(Error);
        const msg = (err as Error).message;
        expect(msg).toMatch(/2 of 3 declared worker\(s\) not ALIVE/);
        expect(msg).toMatch(/worker-2 \(10\.77\.0\.12\): DEAD/);
        expect(msg).toMatch(/worker-3 \(10\.77\.0\.13\): missing: not registered/);
        expect(msg).not.toMatch(/worker-1 \(/);
        expect(msg).toMatch(/What the master said .*master status ALIVE, 1 alive worker/);
        expect(Date.now() - started).toBeLessThan(6_000); // bounded by timeoutSeconds
    });

    test("waits for a worker that registers late, and reports progress on stderr", async () => {
        body = masterBody([worker("10.77.0.11")]);
        const lines: string[] = [];
        const spy = jest.spyOn(console, "error").mockImplementation((l: string) => void lines.push(String(l)));
        try {
            const late = setTimeout(() => (body = masterBody([worker("10.77.0.11"), worker("10.77.0.12")])), 2_500);
            const r = await sparkHealthProvider.create!(inputs({ timeoutSeconds: 20 }));
            clearTimeout(late);
            expect(r.outs.aliveWorkers).toBe(2);
        } finally {
            spy.mockRestore();
        }
        expect(lines[0]).toMatch(/waiting up to 20 s for the Spark master spark:\/\/10\.77\.0\.10:7077 and 2 worker\(s\)/);
        expect(lines.some((l) => /1\/2 worker\(s\) ALIVE; not yet: worker-2 \(10\.77\.0\.12\): missing/.test(l))).toBe(true);
        expect(lines[lines.length - 1]).toMatch(/healthy after \d+ s/);
    });

    test("a worker that restarted (old registration DEAD, new one ALIVE) counts as ALIVE", async () => {
        body = masterBody([worker("10.77.0.11"), worker("10.77.0.12", "DEAD", "old"), worker("10.77.0.12", "ALIVE", "new")]);
        const r = await sparkHealthProvider.create!(inputs());
        expect(r.outs.aliveWorkers).toBe(2);
        expect(r.outs.workers.find((w: { name: string }) => w.name === "worker-2").id).toBe("new");
    });

    test("a master that is not ALIVE fails the gate even with ALIVE workers", async () => {
        body = masterBody([worker("10.77.0.11"), worker("10.77.0.12")], "RECOVERING");
        await expect(sparkHealthProvider.create!(inputs({ timeoutSeconds: 1 }))).rejects.toThrow(/master: status RECOVERING, expected ALIVE/);
    });

    test("an unreachable master fails with the connection error, within the timeout", async () => {
        const closed = http.createServer();
        await new Promise<void>((r) => closed.listen(0, "127.0.0.1", r));
        const port = (closed.address() as AddressInfo).port;
        await new Promise((r) => closed.close(r));
        await expect(sparkHealthProvider.create!(inputs({ webUiUrl: `http://127.0.0.1:${port}`, timeoutSeconds: 1 }))).rejects.toThrow(
            /master: not answering \(GET http:\/\/127\.0\.0\.1:\d+\/json\/: connect ECONNREFUSED/,
        );
    });
});

describe("SparkHealth update and read", () => {
    test("update re-runs the gate and returns fresh outputs", async () => {
        body = masterBody([worker("10.77.0.11"), worker("10.77.0.12")]);
        const r = await sparkHealthProvider.update!("id", { ...inputs(), aliveWorkers: 1 }, inputs({ trigger: "new" }));
        expect(r.outs).toMatchObject({ aliveWorkers: 2, trigger: "new" });
    });

    test("read re-polls once and reports the cluster as it is now, without failing", async () => {
        body = masterBody([worker("10.77.0.11"), worker("10.77.0.12", "DEAD")]);
        const spy = jest.spyOn(console, "error").mockImplementation(() => undefined);
        const before = requests;
        try {
            const old = { ...inputs(), aliveWorkers: 2, totalCores: 4, totalMemoryMiB: 6144, checkedAt: "2020-01-01T00:00:00.000Z" };
            const r = await sparkHealthProvider.read!("spark-health:x", old);
            expect(requests - before).toBe(1);
            expect(r.id).toBe("spark-health:x");
            expect(r.props).toMatchObject({ aliveWorkers: 1, totalCores: 2, totalMemoryMiB: 3072, masterStatus: "ALIVE", trigger: inputs().trigger });
            expect(r.props.checkedAt).not.toBe(old.checkedAt);
            const down = await sparkHealthProvider.read!("spark-health:x", { ...old, webUiUrl: "http://127.0.0.1:1" });
            expect(down.props).toMatchObject({ aliveWorkers: 0, masterStatus: "UNREACHABLE" });
        } finally {
            spy.mockRestore();
        }
    });
});

describe("SparkHealth diff and check (no I/O: they run on every preview)", () => {
    // A function: webUiUrl is known only once the stand-in master listens.
    const outs = () => ({ ...inputs(), aliveWorkers: 2, totalCores: 4, totalMemoryMiB: 6144, checkedAt: "x", masterStatus: "ALIVE", workers: [] });
    const diff = (news: any, olds: any = outs()) => sparkHealthProvider.diff!("id", olds, news);

    test("no change when the inputs are the same, even with reordered keys", async () => {
        const same = { ...inputs(), trigger: { workers: 2, systems: ["/nix/store/aaa-nixos-system"] }, __provider: "code-1" };
        expect(await diff(same, { ...outs(), __provider: "code-1" })).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
    });

    test("new provider code alone is an update that keeps the outputs without checking the cluster", async () => {
        const olds = { ...outs(), __provider: "code-1" };
        expect(await diff({ ...inputs(), __provider: "code-2" }, olds)).toEqual({ changes: true, replaces: [], deleteBeforeReplace: false });
        const r = await sparkHealthProvider.update!("id", olds, { ...inputs(), __provider: "code-2" });
        const { __provider: _code, ...kept } = olds;
        expect(r.outs).toEqual(kept);
    });

    test.each([
        ["trigger (deployed systems)", { trigger: { systems: ["/nix/store/bbb-nixos-system"], workers: 2 } }],
        ["expectedWorkers (topology)", { expectedWorkers: [...expectedWorkers, { name: "worker-3", ip: "10.77.0.13" }] }],
        ["timeoutSeconds", { timeoutSeconds: 60 }],
        ["masterUrl", { masterUrl: "spark://10.77.0.20:7077" }],
    ])("changing %s is an update, never a replacement", async (_what, over) => {
        const r = await diff(inputs(over as Partial<SparkHealthInputs>));
        expect(r.changes).toBe(true);
        expect(r.replaces).toEqual([]);
    });

    test("an unknown input during preview, even nested, is a change", async () => {
        expect((await diff({ ...inputs(), trigger: UNKNOWN })).changes).toBe(true);
        expect((await diff({ ...inputs(), trigger: { systems: [UNKNOWN] } })).changes).toBe(true);
        expect((await diff({ ...inputs(), expectedWorkers: UNKNOWN })).changes).toBe(true);
    });

    test("a scale-down: preview names each removed worker and its decommission bound; nothing is said otherwise; the bound alone is no change", async () => {
        const said: string[] = [];
        const spy = jest.spyOn(console, "error").mockImplementation((m: unknown) => void said.push(String(m)));
        try {
            const [w1] = expectedWorkers;
            expect((await diff({ ...inputs(), expectedWorkers: [w1], decommissionTimeoutSeconds: 90 })).changes).toBe(true);
            expect(said).toEqual(
                expectedWorkers.slice(1).map((w) => `[${w.name}] will be decommissioned through Spark (its running executors get up to 90 s to finish or hand over their blocks), then its VM is stopped and deleted`),
            );
            said.length = 0;
            await diff({ ...inputs(), expectedWorkers: [...expectedWorkers, { name: "worker-9", ip: "10.77.0.19" }] });
            await diff({ ...inputs(), expectedWorkers: UNKNOWN });
            expect(said).toEqual([]);
            expect((await diff({ ...inputs(), decommissionTimeoutSeconds: 30 })).changes).toBe(false);
        } finally {
            spy.mockRestore();
        }
        expect(removedWorkers([{ name: "worker-1", ip: "10.0.0.1" }, { name: "worker-2", ip: "10.0.0.2" }], [{ name: "worker-1", ip: "10.0.0.1" }])).toEqual([{ name: "worker-2", ip: "10.0.0.2" }]);
    });

    test("after a refresh that found a worker gone, the next up checks again", async () => {
        expect((await diff(inputs(), { ...outs(), aliveWorkers: 1 })).changes).toBe(true);
    });

    test("check names bad inputs and lets unknowns through", async () => {
        const bad = await sparkHealthProvider.check!({}, { masterUrl: "10.0.0.1:7077", webUiUrl: "ftp://x", expectedWorkers: [{ name: "w" }], timeoutSeconds: 0 });
        expect(bad.failures!.map((f) => f.property).sort()).toEqual(["expectedWorkers", "masterUrl", "timeoutSeconds", "webUiUrl"]);
        const unknowns = await sparkHealthProvider.check!({}, { masterUrl: UNKNOWN, webUiUrl: UNKNOWN, expectedWorkers: UNKNOWN, timeoutSeconds: 30 });
        expect(unknowns.failures).toEqual([]);
        const good = await sparkHealthProvider.check!({}, inputs());
        expect(good.failures).toEqual([]);
        expect(good.inputs).toEqual(inputs());
    });
});

describe("SparkHealth serialization", () => {
    test("survives serialize -> load -> create, diff and read", async () => {
        body = masterBody([worker("10.77.0.11"), worker("10.77.0.12")]);
        const p = await roundTrip(sparkHealthProvider);
        const r = await p.create!(inputs());
        expect(r.outs).toMatchObject({ aliveWorkers: 2, totalCores: 4 });
        expect((await p.diff!("id", r.outs, inputs())).changes).toBe(false);
        expect((await p.read!("id", r.outs)).props.aliveWorkers).toBe(2);
    });

    test("the serialized closure captures neither zod nor @pulumi/pulumi", async () => {
        const sc = require("@pulumi/pulumi/runtime/closure/serializeClosure");
        const sf = await sc.serializeFunction(() => sparkHealthProvider, { allowSecrets: true });
        expect(sf.text).not.toMatch(/zod|@pulumi\/pulumi|ZodType/);
        expect(sf.text).toMatch(/require\("node:http"\)/);
    });
});
