// After the build, `up` prints `nix store diff-closures` of the node's old
// and new system, for the first node of each role only (SparkCluster sets
// `closureDiff` on the master and the canary; tests/unit/sparkCluster.test.ts).
//
// Real Nix builds two tiny "systems" whose closures hold a numpy and a Spark
// package (/bin/sh builders, milliseconds), so diff-closures reads real store
// paths; the node is a real sshd in its own network namespace with the
// recording nixos-rebuild stand-in, which installs the new system path.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { NixosDeploymentInputs, nixosDeploymentProvider } from "../../providers/nixosDeployment";
import { closureDiff } from "../../providers/deployment/closureDiff";
import { nix } from "../fixtures/nix-env";
import { createDeployment, SshTargetEnv } from "../helpers/sshTarget";

jest.setTimeout(120_000);

let env: SshTargetEnv;
let OLD: string;
let NEW: string;
let tmp: string;
let restoreEnv: () => void = () => undefined;
let logged: string[] = [];

beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "nixspark-closure-"));
    const expr = path.join(tmp, "systems.nix");
    fs.writeFileSync(
        expr,
        `let
  mk = name: deps: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo ${"${toString deps}"} > $out" ]; };
  sys = numpy: spark: mk "nixos-system-dev-worker-24.11" [ (mk "python3.11-numpy-\${numpy}" [ ]) (mk "spark-\${spark}" [ ]) (mk "openjdk-17.0.13" [ ]) ];
in { old = sys "1.26.4" "3.5.1"; new = sys "2.0.2" "3.5.3"; }
`,
    );
    const built = JSON.parse(nix(["nix", "build", "--no-link", "--json", "-f", expr, "old", "new"])) as { outputs: { out: string } }[];
    [OLD, NEW] = built.map((b) => b.outputs.out);
    env = await SshTargetEnv.create();
    // The stack created this node: first contact records its host key.
    const restore = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
    const quiet = jest.spyOn(console, "error").mockImplementation(() => undefined);
    try {
        env.setSystem("dev-worker", OLD);
        await createDeployment(env.deploymentInputs({ expectedSystem: OLD, flavour: "legacy" }));
    } finally {
        quiet.mockRestore();
        restore();
    }
});

afterAll(async () => {
    await env?.cleanup();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

beforeEach(() => {
    env.resetNode(OLD);
    env.setSystem("dev-worker", NEW);
    restoreEnv = env.useStandin({ NIXSPARK_STANDIN_FLAVOUR: "legacy" });
    logged = [];
    jest.spyOn(console, "error").mockImplementation((...args: unknown[]) => void logged.push(args.map(String).join(" ")));
});
afterEach(() => {
    restoreEnv();
    jest.restoreAllMocks();
});

function inputs(system: string, over: Partial<NixosDeploymentInputs> = {}): Record<string, unknown> {
    return env.deploymentInputs({ expectedSystem: system, flavour: "legacy", ...over }) as unknown as Record<string, unknown>;
}

test("closureDiff: what moved between two systems, by package and version", async () => {
    const lines = await closureDiff(OLD, NEW);
    expect(lines.some((l) => /^python3\.11-numpy: 1\.26\.4 → 2\.0\.2/.test(l))).toBe(true);
    expect(lines.some((l) => /^spark: 3\.5\.1 → 3\.5\.3/.test(l))).toBe(true);
    expect(lines.some((l) => l.startsWith("openjdk"))).toBe(false); // unchanged
    await expect(closureDiff("/nix/store/00000000000000000000000000000000-nixos-system-gone", NEW)).rejects.toThrow();
});

test("the first node of a role prints the diff after its switch; another node of the role does not", async () => {
    const olds = { ...inputs(OLD), currentSystem: OLD, flavourUsed: "legacy" };
    await nixosDeploymentProvider.update!("worker-1", olds, inputs(NEW, { closureDiff: true }));
    expect(env.currentSystem()).toBe(NEW);
    const at = logged.findIndex((l) => l.startsWith(`[worker-1] what moved in dev-worker (nix store diff-closures ${OLD} ${NEW}; shown once per role):`));
    expect(at).toBeGreaterThan(-1);
    expect(logged.slice(at)).toContainEqual(expect.stringMatching(/^\[worker-1\] {3}python3\.11-numpy: 1\.26\.4 → 2\.0\.2/));
    expect(logged.slice(at)).toContainEqual(expect.stringMatching(/^\[worker-1\] {3}spark: 3\.5\.1 → 3\.5\.3/));
    // After the switch: the stand-in's switch call was logged before it.
    expect(logged.findIndex((l) => l.startsWith("[worker-1] switching to"))).toBeLessThan(at);

    logged = [];
    env.resetNode(OLD);
    await nixosDeploymentProvider.update!("worker-2", olds, inputs(NEW));
    expect(env.currentSystem()).toBe(NEW);
    expect(logged.some((l) => /what moved|diff-closures|numpy/.test(l))).toBe(false);
});

test("a previous system that is not in this host's store: the switch goes on, and the log says why there is no diff", async () => {
    const gone = "/nix/store/00000000000000000000000000000000-nixos-system-dev-worker-24.11";
    env.resetNode(gone);
    const olds = { ...inputs(gone), currentSystem: gone, flavourUsed: "legacy" };
    const r = await nixosDeploymentProvider.update!("worker-1", olds, inputs(NEW, { closureDiff: true }));
    expect(r.outs).toMatchObject({ currentSystem: NEW });
    expect(logged).toContainEqual(expect.stringMatching(/^\[worker-1\] no closure diff for dev-worker: .+ \(the previous system is not in this host's store, or was built elsewhere\)$/));
});
