// NixImage against real Nix (Debian's nix-bin, no binary cache) and a small
// local flake whose outputs are built by /bin/sh (tests/fixtures/nix-image-flake).
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { evalDrvPath } from "../../cluster/nixFlake";
import {
    buildNixImage,
    checkNixImageInputs,
    gcRootFor,
    NixImageInputs,
    NixImageOutputs,
    nixImageDefaults,
    nixImageDiff,
    nixImageProvider,
} from "../../providers/nixImage";
import { roundTrip } from "../helpers/serialize";
import { copyDir, FIXTURES, nix, nixEnv, tempDir } from "../fixtures/nix-env";

jest.setTimeout(180_000);

const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

let flakeDir: string;
let flake: string;
let rootsBase: string;

beforeAll(() => {
    nixEnv();
    flakeDir = copyDir(path.join(FIXTURES, "nix-image-flake"), "nixspark-image-flake-");
    flake = `path:${flakeDir}`;
    rootsBase = tempDir("nixspark-gcroots-");
});

/** Inputs as the program would register them: drvPath evaluated first. */
async function inputsFor(attribute: string, rootDir = path.join(rootsBase, "dev/gcroots")): Promise<NixImageInputs> {
    return { flake, attribute, drvPath: await evalDrvPath(flake, attribute), gcRootDir: rootDir, ...nixImageDefaults() };
}

/** The GC roots Nix knows for a store path. */
function rootsOf(storePath: string): string {
    return nix(["nix-store", "--query", "--roots", storePath]);
}

/** Whether Nix would refuse to delete a store path because something roots it. */
function collectable(storePath: string): boolean {
    const out = nix(["nix-store", "--gc", "--print-dead"]);
    return out.split("\n").includes(storePath);
}

function setVersion(v: string) {
    fs.writeFileSync(path.join(flakeDir, "version"), v);
}

describe("check and diff (no Nix)", () => {
    const outs: NixImageOutputs = {
        flake: "path:/p/nix",
        attribute: 'packages.x86_64-linux."dev-base-image"',
        drvPath: "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-disk-image.drv",
        gcRootDir: "/p/.nixspark/dev/gcroots",
        buildTimeoutSeconds: 10800,
        storePath: "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-disk-image",
        imagePath: "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-disk-image/nixos.qcow2",
        sizeBytes: 1,
        gcRoot: "/p/.nixspark/dev/gcroots/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-disk-image",
    };
    const inputs = { flake: outs.flake, attribute: outs.attribute, drvPath: outs.drvPath, gcRootDir: outs.gcRootDir, buildTimeoutSeconds: 10800 };

    test("same derivation: no changes (outputs and __provider are not compared here; the provider's diff answers new code)", () => {
        expect(nixImageDiff({ ...outs, __provider: "old closure" }, { ...inputs, __provider: "new closure" })).toMatchObject({ changes: false, replaces: [] });
    });
    test("a new derivation: replace", () => {
        const d = nixImageDiff(outs, { ...inputs, drvPath: "/nix/store/cccccccccccccccccccccccccccccccc-nixos-disk-image.drv" });
        expect(d).toMatchObject({ changes: true, replaces: ["drvPath"], deleteBeforeReplace: false });
        expect(d.reasons[0]).toMatch(/the image derivation changed/);
    });
    test("an unknown derivation during preview: replace", () => {
        expect(nixImageDiff(outs, { ...inputs, drvPath: UNKNOWN })).toMatchObject({ changes: true, replaces: ["drvPath"] });
    });
    test("same derivation from elsewhere, or roots moved: an update that rebuilds nothing", () => {
        expect(nixImageDiff(outs, { ...inputs, flake: "path:/moved/nix" })).toMatchObject({ changes: true, replaces: [], stables: ["storePath", "imagePath", "sizeBytes"] });
        expect(nixImageDiff(outs, { ...inputs, gcRootDir: UNKNOWN })).toMatchObject({ changes: true, replaces: [] });
    });
    test("check names each bad input; unknown values pass", () => {
        expect(checkNixImageInputs({ ...inputs, drvPath: "/nix/store/x-image", gcRootDir: "roots", flake: "path:./nix#x", buildTimeoutSeconds: 0 }).map((f) => f.property)).toEqual([
            "flake",
            "drvPath",
            "gcRootDir",
            "buildTimeoutSeconds",
        ]);
        expect(checkNixImageInputs({ ...inputs, drvPath: UNKNOWN, flake: UNKNOWN })).toEqual([]);
        expect(checkNixImageInputs({ ...inputs, attribute: "" })).toEqual([{ property: "attribute", reason: "attribute must be a non-empty string" }]);
    });
});

describe("against real Nix", () => {
    test("create builds the image, shows progress, and roots it per stack; delete removes only that root", async () => {
        const version = `create-${Date.now()}`; // a new derivation: Nix really builds it
        setVersion(version);
        const inputs = await inputsFor("packages.x86_64-linux.base-image");
        const progress: string[] = [];
        const spy = jest.spyOn(console, "error").mockImplementation((...args: unknown[]) => {
            progress.push(args.join(" "));
        });
        let created: { id: string; outs: NixImageOutputs };
        try {
            created = (await nixImageProvider.create!(inputs)) as { id: string; outs: NixImageOutputs };
        } finally {
            spy.mockRestore();
        }
        const outs = created.outs;
        expect(created.id).toBe(outs.storePath);
        expect(outs).toMatchObject(inputs); // every input is in the outputs
        expect(outs.storePath).toMatch(/^\/nix\/store\/[a-z0-9]{32}-fixture-disk-image$/);
        expect(outs.imagePath).toBe(path.join(outs.storePath, "nixos.qcow2"));
        expect(outs.sizeBytes).toBe(fs.statSync(outs.imagePath).size);
        expect(outs.sizeBytes).toBeGreaterThan(0);
        expect(outs.gcRoot).toBe(gcRootFor(inputs.gcRootDir, outs.storePath));
        expect(fs.readlinkSync(outs.gcRoot)).toBe(outs.storePath);
        expect(progress.some((l) => l.includes(`fixture: writing the image (version ${version})`))).toBe(true);

        // The root protects the image from garbage collection...
        expect(rootsOf(outs.storePath)).toContain(outs.gcRoot);
        expect(collectable(outs.storePath)).toBe(false);

        // ...until delete removes it.
        await nixImageProvider.delete!(created.id, outs);
        expect(fs.existsSync(outs.gcRoot)).toBe(false);
        expect(rootsOf(outs.storePath)).not.toContain(outs.gcRoot);
        expect(collectable(outs.storePath)).toBe(true);
    });

    test("preview: no-op while the derivation is unchanged, replace when it changes", async () => {
        setVersion("diff-1");
        const before = await inputsFor("packages.x86_64-linux.base-image");
        const { outs } = (await nixImageProvider.create!(before)) as { outs: NixImageOutputs };
        try {
            // The program evaluates again on the next preview: same files, same derivation.
            const same = await inputsFor("packages.x86_64-linux.base-image");
            expect(same.drvPath).toBe(before.drvPath);
            expect(await nixImageProvider.diff!(outs.storePath, outs, same)).toMatchObject({ changes: false, replaces: [] });

            setVersion("diff-2");
            const changed = await inputsFor("packages.x86_64-linux.base-image");
            expect(changed.drvPath).not.toBe(before.drvPath);
            expect(await nixImageProvider.diff!(outs.storePath, outs, changed)).toMatchObject({ changes: true, replaces: ["drvPath"] });

            // The replacement is built beside the old image and rooted separately:
            // deleting the old resource afterwards leaves the new root alone.
            const { outs: next } = (await nixImageProvider.create!(changed)) as { outs: NixImageOutputs };
            expect(next.storePath).not.toBe(outs.storePath);
            await nixImageProvider.delete!(outs.storePath, outs);
            expect(fs.readlinkSync(next.gcRoot)).toBe(next.storePath);
            await nixImageProvider.delete!(next.storePath, next);
        } finally {
            if (fs.existsSync(outs.gcRoot)) await nixImageProvider.delete!(outs.storePath, outs);
        }
    });

    test("an image that is a file; an attribute with a quoted name", async () => {
        setVersion("file-1");
        const file = (await buildNixImage(await inputsFor("packages.x86_64-linux.file-image")));
        expect(file.imagePath).toBe(file.storePath);
        const dotted = await buildNixImage(await inputsFor('packages.x86_64-linux."st.ack-base-image"'));
        expect(dotted.imagePath).toBe(path.join(dotted.storePath, "nixos.qcow2"));
        for (const o of [file, dotted]) await nixImageProvider.delete!(o.storePath, o);
    });

    test("a failing build surfaces Nix's error lines", async () => {
        const inputs = await inputsFor("packages.x86_64-linux.broken");
        const spy = jest.spyOn(console, "error").mockImplementation(() => undefined);
        try {
            await expect(nixImageProvider.create!(inputs)).rejects.toThrow(/nix build .*#packages\.x86_64-linux\.broken failed \(exit code 1\):[\s\S]*fixture: error: the disk is full \(on purpose\)/);
        } finally {
            spy.mockRestore();
        }
        expect(fs.existsSync(inputs.gcRootDir) ? fs.readdirSync(inputs.gcRootDir).filter((f) => f.includes("broken")) : []).toEqual([]);
    });

    test("the flake changed between evaluation and build: refused, nothing rooted", async () => {
        setVersion("race-1");
        const inputs = await inputsFor("packages.x86_64-linux.base-image", path.join(rootsBase, "race/gcroots"));
        setVersion("race-2");
        await expect(buildNixImage(inputs)).rejects.toThrow(/now evaluates to .* but the program evaluated .*run it again/);
        expect(fs.existsSync(inputs.gcRootDir) ? fs.readdirSync(inputs.gcRootDir) : []).toEqual([]);
    });

    test("read: a removed root is registered again; a vanished store path means the resource is gone", async () => {
        setVersion(`read-${Date.now()}`);
        const inputs = await inputsFor("packages.x86_64-linux.base-image", path.join(rootsBase, "read/gcroots"));
        const { id, outs } = (await nixImageProvider.create!(inputs)) as { id: string; outs: NixImageOutputs };

        expect(await nixImageProvider.read!(id, outs)).toEqual({ id, props: outs });

        fs.unlinkSync(outs.gcRoot);
        const spy = jest.spyOn(console, "error").mockImplementation(() => undefined);
        try {
            const again = await nixImageProvider.read!(id, outs);
            expect(again.id).toBe(id);
        } finally {
            spy.mockRestore();
        }
        expect(fs.readlinkSync(outs.gcRoot)).toBe(outs.storePath);

        // Someone removes the root and collects the image: refresh reports it gone.
        await nixImageProvider.delete!(id, outs);
        nix(["nix-store", "--delete", outs.storePath]);
        expect(fs.existsSync(outs.storePath)).toBe(false);
        expect(await nixImageProvider.read!(id, outs)).toEqual({ id: "", props: {} });
    });

    test("update (same derivation, roots moved) moves the root", async () => {
        setVersion("update-1");
        const inputs = await inputsFor("packages.x86_64-linux.base-image", path.join(rootsBase, "upd-a/gcroots"));
        const { id, outs } = (await nixImageProvider.create!(inputs)) as { id: string; outs: NixImageOutputs };
        const moved = { ...inputs, gcRootDir: path.join(rootsBase, "upd-b/gcroots") };
        expect(nixImageDiff(outs, moved)).toMatchObject({ changes: true, replaces: [] });
        const spy = jest.spyOn(console, "error").mockImplementation(() => undefined);
        let updated: NixImageOutputs;
        try {
            updated = (await nixImageProvider.update!(id, outs, moved)).outs as NixImageOutputs;
        } finally {
            spy.mockRestore();
        }
        expect(updated.storePath).toBe(outs.storePath);
        expect(fs.existsSync(outs.gcRoot)).toBe(false);
        expect(fs.readlinkSync(updated.gcRoot)).toBe(outs.storePath);
        await nixImageProvider.delete!(id, updated);
    });

    test("the provider survives serialize -> load and still builds and deletes", async () => {
        const loaded = await roundTrip(nixImageProvider);
        setVersion("roundtrip-1");
        const inputs = await inputsFor("packages.x86_64-linux.base-image", path.join(rootsBase, "rt/gcroots"));
        expect((await loaded.check!({}, inputs)).failures).toEqual([]);
        const spy = jest.spyOn(console, "error").mockImplementation(() => undefined);
        let created: { id: string; outs: NixImageOutputs };
        try {
            created = (await loaded.create!(inputs)) as { id: string; outs: NixImageOutputs };
        } finally {
            spy.mockRestore();
        }
        expect(fs.readlinkSync(created.outs.gcRoot)).toBe(created.id);
        expect(await loaded.diff!(created.id, created.outs, inputs)).toMatchObject({ changes: false });
        await loaded.delete!(created.id, created.outs);
        expect(fs.existsSync(created.outs.gcRoot)).toBe(false);
    });
});
