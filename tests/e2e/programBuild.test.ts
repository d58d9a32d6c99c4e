// The program runs as compiled JavaScript (bin/, Pulumi.yaml's runtime option
// `typescript: false`), and a user who edits a .ts file and runs `pulumi
// preview` gets their edit: scripts/build.js, preloaded into the program's
// node process, sees the changed source and rebuilds before the program loads
// (one line says so), and refuses to run a program that does not compile.
//
// The real Pulumi CLI (local backend) on a copy of the project; a 1+1 stack
// that is never created, with a prebuilt image path and deploy and health off,
// so a preview needs no libvirt and no Nix evaluation.
import * as fs from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { installPulumi, PulumiCli } from "../helpers/pulumiCli";
import { createE2eProject, E2eProject, programBuild, randomCidr } from "../fixtures/e2e-project";

jest.setTimeout(10 * 60_000);

let project: E2eProject | undefined;
let cli: PulumiCli;

beforeAll(async () => {
    await installPulumi();
    project = createE2eProject("nxs-build-");
    cli = new PulumiCli({ cwd: project.dir, stack: "build", backendDir: project.backendDir, env: { NIX_CONFIG: project.nixConfig } });
    await cli.stackInit();
    const size = { vcpus: 1, memoryMiB: 256, diskGiB: 1 };
    cli.writeStackConfig({
        network: { cidr: randomCidr() },
        storage: { path: path.join(project.root, "images") },
        image: { path: path.join(project.root, "base.qcow2") },
        master: size,
        workers: { count: 1, ...size },
        ssh: { user: "root", port: 22, privateKeyPath: path.join(project.root, "id_ed25519"), publicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyFakeKeyFakeKeyFakeKeyFakeKeyFakeKey t@h" },
        spark: { settings: {}, pythonPackages: [] },
        deploy: { enabled: false },
        health: { enabled: false },
    });
}, 20 * 60_000);

afterAll(() => project?.remove());

const messages = (p: { diagnostics: { message: string }[]; stdout: string; stderr: string }) =>
    p.diagnostics.map((d) => d.message).join("\n") + p.stdout + p.stderr;

/** Replaces `anchor` in a project file with `anchor` + `added` (the file must contain it once). */
function insertAfter(rel: string, anchor: string, added: string): void {
    const file = path.join(project!.dir, rel);
    const text = fs.readFileSync(file, "utf8");
    expect(text.split(anchor).length).toBe(2);
    fs.writeFileSync(file, text.replace(anchor, anchor + added));
}

describe("compiled program", () => {
    test("an unchanged preview runs the prebuilt program without compiling", async () => {
        expect(programBuild.staleReason(project!.dir)).toBeUndefined();
        const p = await cli.preview();
        expect(p.summary.create).toBeGreaterThan(5);
        expect(messages(p)).not.toContain("since the last build");
    });

    test("an edit of index.ts is rebuilt and used by the next preview, once", async () => {
        const marker = `index-edit-${randomBytes(4).toString("hex")}`;
        insertAfter("index.ts", "const stack = pulumi.getStack();", `\n    void pulumi.log.info(${JSON.stringify(marker)});`);
        expect(programBuild.staleReason(project!.dir)).toBe("index.ts changed");
        const p = await cli.preview();
        expect(messages(p)).toContain("index.ts changed since the last build: compiling the program into bin/ (npm run build)");
        expect(p.diagnostics.some((d) => d.message.includes(marker))).toBe(true);
        // Built now: the next preview uses the same edit and compiles nothing.
        const again = await cli.preview();
        expect(again.diagnostics.some((d) => d.message.includes(marker))).toBe(true);
        expect(messages(again)).not.toContain("since the last build");
    });

    test("an edit of a file the program imports is used too", async () => {
        const marker = `topology-edit-${randomBytes(4).toString("hex")}`;
        const rel = path.join("cluster", "topology.ts");
        fs.appendFileSync(path.join(project!.dir, rel), `\nconsole.log(${JSON.stringify(marker)});\n`);
        const p = await cli.preview();
        expect(messages(p)).toContain(`${rel} changed since the last build`);
        expect(messages(p)).toContain(marker);
    });

    test("a type error stops the preview with tsc's message and the command to run; nothing stale runs", async () => {
        const marker = `stale-${randomBytes(4).toString("hex")}`;
        insertAfter("index.ts", "const stack = pulumi.getStack();", `\n    void pulumi.log.info(${JSON.stringify(marker)});\n    const broken: number = "not a number";`);
        const p = await cli.preview({ allowFailure: true });
        expect(p.code).not.toBe(0);
        const text = messages(p);
        expect(text).toContain("the program does not compile, nothing was run");
        expect(text).toContain("npm run build");
        expect(text).toMatch(/index\.ts\(\d+,\d+\): error TS2322/);
        expect(text).not.toContain(marker);
        // Still refused on the next run: a failed build records nothing.
        expect(programBuild.staleReason(project!.dir)).toBe("no build in bin/ yet");
    });
});
