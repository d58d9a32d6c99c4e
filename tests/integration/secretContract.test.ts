// The contract between ClusterSecret and the node's nixspark-spark-conf unit,
// executed: the unit's ExecStart, taken from the real evaluation of the
// master role (against the stand-in nixpkgs), runs in a scratch root on the
// file the program writes (secretProperties of the stack's secret output);
// the file's format is enforced, the secret lands once, and the assembled
// files are readable by root and the Spark users' group only. Real Spark
// daemons started from the directory the unit assembles (a driver given the
// stack's secret output accepted, one given the doubly wrapped string
// "spark.authenticate.secret <S>", what the unit used to make of it,
// refused) are in submit.test.ts, on the cluster its other stories share.
import * as fs from "node:fs";
import * as path from "node:path";
import { parseConfig } from "../../cluster/config";
import { buildTopology } from "../../cluster/topology";
import { nixStackParams } from "../../cluster/nixParams";
import { clusterSecretProvider, secretProperties, SECRET_FILE } from "../../providers/clusterSecret";
import { run } from "../../providers/run";
import { evalUnit, removeContractDirs, ScratchRoot, stackFlake } from "../helpers/nixContract";
import { findJavaHome } from "../helpers/sparkLocal";

jest.setTimeout(300_000);

const STACK = "contract";
const CONF_DIR = "/run/nixspark/spark-conf";

let root: ScratchRoot;
let unit: ReturnType<typeof evalUnit>;
let secret: string;

beforeAll(async () => {
    const cfg = parseConfig({ workers: { count: 2 }, ssh: { publicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIContractContractContractContractContract00 contract" } });
    expect(cfg.security.authenticate).toBe(true);
    const flake = stackFlake(nixStackParams(cfg, buildTopology(STACK, cfg)));
    unit = evalUnit(flake, `${STACK}-master`, "nixspark-spark-conf");
    // The stack's secret output, as the provider makes it.
    secret = ((await clusterSecretProvider.create!({ generation: 1 })).outs as { value: string }).value;
    root = new ScratchRoot();
    root.withAccounts(["spark", "deploy"], { "spark-users": ["spark", "deploy"] });
}, 300_000);

afterAll(() => {
    root?.remove();
    removeContractDirs();
});

/** Writes the secret file as the deployment does (install -m 0400, root), with this content. */
function deliver(content: string) {
    const file = root.at(SECRET_FILE);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.rmSync(file, { force: true });
    fs.writeFileSync(file, content, { mode: 0o400 });
}

test("the unit refuses a secret file that is not in the format the program writes, naming the file", async () => {
    deliver(`${secret}\n`); // a bare secret, as the NixOS test used to write
    const r = await root.runUnit(unit, { allowFailure: true });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`${SECRET_FILE} is not a Spark properties fragment with spark.authenticate.secret`);
    expect(r.stderr + r.stdout).not.toContain(secret);
    expect(fs.existsSync(root.at(`${CONF_DIR}/spark-defaults.conf`))).toBe(false);
});

test("the unit appends the program's secret properties unchanged: the secret once, the secret settings after it", async () => {
    deliver(secretProperties(secret, { "spark.ssl.keyPassword": "kp-of-the-test" }));
    const r = await root.runUnit(unit);
    expect(r.code).toBe(0);
    const defaults = fs.readFileSync(root.at(`${CONF_DIR}/spark-defaults.conf`), "utf8");
    const secretLines = defaults.split("\n").filter((l) => l.startsWith("spark.authenticate.secret"));
    expect(secretLines).toEqual([`spark.authenticate.secret ${secret}`]);
    expect(defaults).toMatch(/^spark\.ssl\.keyPassword kp-of-the-test$/m);
    expect(defaults).toMatch(/^spark\.authenticate true$/m);
    for (const f of ["spark-defaults.conf", "spark-env.sh", "driver-secret.args"]) {
        const st = fs.statSync(root.at(`${CONF_DIR}/${f}`));
        expect({ mode: st.mode & 0o777, uid: st.uid, gid: st.gid }).toEqual({ mode: 0o440, uid: 0, gid: root.gid("spark-users") });
    }
    // The java argument file a cluster-mode driver gets (cli/verbs/submit.ts): a real JVM reads the secret from it, and only that.
    const args = root.at(`${CONF_DIR}/driver-secret.args`);
    expect(fs.readFileSync(args, "utf8")).toBe(`-Dspark.authenticate.secret=${secret}\n`);
    const jvm = await run([path.join(await findJavaHome(), "bin/java"), `@${args}`, "-XshowSettings:properties", "-version"], { timeoutMs: 60_000 });
    expect(jvm.stderr.split("\n").map((l) => l.trim())).toContain(`spark.authenticate.secret = ${secret}`);
    expect(jvm.stderr).not.toMatch(/spark\.ssl\.keyPassword/);
    const dir = fs.statSync(root.at(CONF_DIR));
    expect({ mode: dir.mode & 0o777, gid: dir.gid }).toEqual({ mode: 0o750, gid: root.gid("spark-users") });
});
