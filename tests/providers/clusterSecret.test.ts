// The cluster secret: made once by the stack, rotated by a new generation,
// written to the node as a root-only file outside the store (a real sshd in
// a private network namespace in front of the fake target), and never in
// an argument, a log line or an error message.
import * as fs from "node:fs";
import * as path from "node:path";
import { clusterSecretProvider, newSecret, SECRET_FILE, secretProperties } from "../../providers/clusterSecret";
import { NixosDeploymentInputs, nixosDeploymentProvider } from "../../providers/nixosDeployment";
import { roundTrip } from "../helpers/serialize";
import { createDeployment, SshTargetEnv } from "../helpers/sshTarget";

jest.setTimeout(60_000);

describe("ClusterSecret", () => {
    test("256 random bits, URL-safe, different every time", () => {
        const a = newSecret();
        expect(a).toMatch(/^[A-Za-z0-9_-]{43}$/);
        expect(newSecret()).not.toBe(a);
    });

    test("create makes a value; the same generation keeps it; a new generation replaces it (rotation)", async () => {
        const p = await roundTrip(clusterSecretProvider);
        const { outs } = await p.create!({ generation: 1 });
        expect(outs.value).toMatch(/^[A-Za-z0-9_-]{43}$/);
        expect(await p.diff!("id", outs, { generation: 1 })).toMatchObject({ changes: false });
        expect(await p.diff!("id", outs, { generation: 2 })).toMatchObject({ changes: true, replaces: ["generation"] });
        const again = await p.update!("id", { ...outs, __provider: "old code" }, { generation: 1, __provider: "new code" });
        expect(again.outs).toEqual(outs);
        expect((await p.check!({}, { generation: 0 })).failures).toHaveLength(1);
    });

    test("the properties file: the secret and the secret Spark settings, one line each", () => {
        expect(secretProperties("s3cr3t", { "spark.ssl.keyPassword": "pw", "spark.a": "b" })).toBe("spark.authenticate.secret s3cr3t\nspark.a b\nspark.ssl.keyPassword pw\n");
        expect(() => secretProperties("s", { "spark.x": "two\nlines" })).toThrow(/must be one line/);
    });
});

describe("NixosDeployment delivers it", () => {
    const SYS_A = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-dev-worker-24.11";
    const SECRET = secretProperties("c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1sZWFr");
    const ROTATED = secretProperties("cm90YXRlZC1zZWNyZXQtdGhhdC1tdXN0LW5vdA");
    let env: SshTargetEnv;
    let restoreEnv: () => void = () => undefined;
    let logged: string[] = [];

    beforeAll(async () => {
        env = await SshTargetEnv.create();
    });
    afterAll(async () => {
        restoreEnv();
        await env?.cleanup();
    });
    beforeEach(() => {
        env.resetNode("/nix/store/00000000000000000000000000000000-nixos-system-base-image");
        env.clearStandinLog();
        env.setSystem("dev-worker", SYS_A);
        restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
        logged = [];
        jest.spyOn(console, "error").mockImplementation((...args: unknown[]) => {
            logged.push(args.map(String).join(" "));
        });
    });
    afterEach(() => {
        restoreEnv();
        jest.restoreAllMocks();
    });

    const inputs = (over: Partial<NixosDeploymentInputs> = {}): NixosDeploymentInputs =>
        env.deploymentInputs({ expectedSystem: SYS_A, secretProperties: SECRET, secretUnits: ["nixspark-spark-conf.service", "spark-worker.service"], ...over });
    const onNode = (): string => path.join(env.root, SECRET_FILE);

    test("before the switch, as a file only root can read, outside /nix/store, with the content on stdin only", async () => {
        await createDeployment(inputs());
        const file = onNode();
        expect(fs.readFileSync(file, "utf8")).toBe(SECRET);
        const st = fs.statSync(file);
        expect(st.mode & 0o777).toBe(0o400);
        expect([st.uid, st.gid]).toEqual([0, 0]);
        expect(SECRET_FILE.startsWith("/nix/store")).toBe(false);
        const remote = env.remoteCalls();
        const write = remote.findIndex((c) => c.words[0] === "install");
        const activate = remote.findIndex((c) => c.words[0].endsWith("/bin/switch-to-configuration"));
        expect(write).toBeGreaterThanOrEqual(0);
        expect(write).toBeLessThan(activate);
        expect(remote[write]).toEqual({ words: ["install", "-D", "-m", "0400", "-o", "root", "-g", "root", "/proc/self/fd/0", SECRET_FILE], sudo: true, env: {} });
        // Nowhere in what was sent as words, nor in what the user saw.
        expect(JSON.stringify(remote)).not.toContain("c2VjcmV0");
        expect(logged.join("\n")).not.toContain("c2VjcmV0");
        // No restart on a first deployment: the units start with the secret in place.
        expect(remote.some((c) => c.words[0] === "systemctl")).toBe(false);
    });

    test("a delivery that fails stops the deployment before the switch and names no value: not in the error, not in a log line", async () => {
        // The directory the file goes to is a plain file on the node: install -D fails there.
        const dir = path.join(env.root, path.dirname(SECRET_FILE));
        fs.rmSync(dir, { recursive: true, force: true });
        fs.mkdirSync(path.dirname(dir), { recursive: true });
        fs.writeFileSync(dir, "not a directory\n");
        try {
            const failed = await createDeployment(inputs()).then(() => undefined, (e: Error) => e);
            expect(failed).toBeInstanceOf(Error);
            expect(failed!.message).toContain(`writing the cluster secret to `);
            expect(failed!.message).toContain(`${SECRET_FILE} failed with exit code`);
            // The switch never ran: a node without its secret would start Spark unauthenticated.
            expect(env.remoteCalls().some((c) => c.words[0].endsWith("/bin/switch-to-configuration"))).toBe(false);
            expect(`${failed!.message}\n${failed!.stack ?? ""}\n${logged.join("\n")}`).not.toContain("c2VjcmV0");
        } finally {
            fs.rmSync(dir, { force: true });
        }
    });

    test("a rotated secret is an update that rewrites the file and restarts what reads it, naming no value", async () => {
        const p = await roundTrip(nixosDeploymentProvider);
        const olds = (await createDeployment(inputs())) as unknown as Record<string, unknown>;
        const news = inputs({ secretProperties: ROTATED }) as unknown as Record<string, unknown>;
        expect(await p.diff!("id", olds, news)).toMatchObject({ changes: true, replaces: [] });
        expect(await p.diff!("id", olds, inputs() as unknown as Record<string, unknown>)).toMatchObject({ changes: false });
        env.clearStandinLog();
        fs.writeFileSync(path.join(env.root, "commands.log"), "");
        await nixosDeploymentProvider.update!("id", olds, news);
        expect(fs.readFileSync(onNode(), "utf8")).toBe(ROTATED);
        const remote = env.remoteCalls();
        expect(remote).toContainEqual({ words: ["systemctl", "restart", "nixspark-spark-conf.service", "spark-worker.service"], sudo: true, env: {} });
        expect(logged.join("\n")).toContain("the cluster secret changed: restarting nixspark-spark-conf.service, spark-worker.service");
        expect(logged.join("\n")).not.toMatch(/cm90YXRl|c2VjcmV0/);
    });
});
