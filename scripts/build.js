// The program runs as JavaScript compiled once with tsc (Pulumi's convention
// for fast TypeScript programs: Pulumi.yaml's runtime option
// `typescript: false`, package.json's "main" the compiled bin/index.js), so no
// preview pays for ts-node's compile and type check. This file builds it and
// keeps it from ever running stale:
//
//   node scripts/build.js        `npm run build` (and `npm ci`'s prepare step):
//                                incremental, type-checked tsc of index.ts and
//                                everything it imports (tsconfig.build.json) into
//                                bin/, then bin/.sources.json: every source file
//                                of that program with its SHA-256
//   --require ./scripts/build.js the guard: Pulumi.yaml's nodeargs load it into the
//                                program's node process before bin/index.js.
//                                It hashes the files bin/.sources.json lists (a few
//                                milliseconds) and checks their outputs exist; if one
//                                changed or is gone, an output is missing, or there is no
//                                build yet, it says so in one line and rebuilds
//                                (incremental: about 2-4 s) before the program loads.
//                                A type error stops the run with tsc's messages,
//                                as ts-node's check did: never stale code.
//
// Plain JavaScript on purpose: it must run before anything is compiled.
"use strict";
const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");

const ROOT = path.resolve(__dirname, "..");
const OUT = path.join(ROOT, "bin");
const MANIFEST = path.join(OUT, ".sources.json");
const CONFIG = path.join(ROOT, "tsconfig.build.json");
/** Files that change the output without being part of the program's sources. */
const SETTINGS = ["tsconfig.json", "tsconfig.build.json", "package.json"];

/** The compiled file of a program source (bin/ mirrors the project: rootDir "."), if it has one. */
const outputOf = (rel) => (/\.ts$/.test(rel) && !/\.d\.ts$/.test(rel) ? path.join("bin", rel.replace(/\.ts$/, ".js")) : undefined);

const sha256 = (data) => crypto.createHash("sha256").update(data).digest("hex");
const sha256File = (file) => sha256(fs.readFileSync(file));

/**
 * Why the build in bin/ is not the program of these sources, or undefined
 * when it is. Reads the manifest and hashes each file it lists: no TypeScript loaded.
 */
function staleReason(root = ROOT) {
    let manifest;
    try {
        manifest = JSON.parse(fs.readFileSync(path.join(root, "bin", ".sources.json"), "utf8"));
    } catch {
        return "no build in bin/ yet";
    }
    for (const [rel, hash] of Object.entries(manifest.files ?? {})) {
        const out = outputOf(rel);
        if (out && !fs.existsSync(path.join(root, out))) return `${out} is missing`;
        let now;
        try {
            now = sha256File(path.join(root, rel));
        } catch {
            return `${rel} is gone`;
        }
        if (now !== hash) return `${rel} changed`;
    }
    return undefined;
}

/**
 * Compiles the program (type-checked, incremental) into bin/ and records its
 * sources. Throws with tsc's diagnostics on a type error; the manifest is then
 * not written, so the next run tries again.
 */
function build(root = ROOT) {
    const ts = require("typescript");
    const config = path.join(root, "tsconfig.build.json");
    const host = { ...ts.sys, onUnRecoverableConfigFileDiagnostic: (d) => { throw new Error(format(ts, [d], root)); } };
    // Settings hashed before tsc reads them, sources as tsc read them: an edit
    // made while this runs leaves the manifest behind, so the next run rebuilds.
    const settings = {};
    for (const rel of SETTINGS) if (fs.existsSync(path.join(root, rel))) settings[rel] = sha256File(path.join(root, rel));
    const parsed = ts.getParsedCommandLineOfConfigFile(config, undefined, host);
    const create = () => ts.createIncrementalProgram({ rootNames: parsed.fileNames, options: parsed.options, configFileParsingDiagnostics: parsed.errors });
    let program = create();
    // tsc's incremental state (bin/.tsbuildinfo) knows what it emitted, not
    // what is still on disk: with an output gone, start over without it.
    if (ownSources(program, root).some((rel) => outputOf(rel) && !fs.existsSync(path.join(root, outputOf(rel))))) {
        if (parsed.options.tsBuildInfoFile) fs.rmSync(parsed.options.tsBuildInfoFile, { force: true });
        program = create();
    }
    const diagnostics = [
        ...program.getConfigFileParsingDiagnostics(),
        ...program.getOptionsDiagnostics(),
        ...program.getSyntacticDiagnostics(),
        ...program.getGlobalDiagnostics(),
        ...program.getSemanticDiagnostics(),
    ];
    const emitted = program.emit();
    diagnostics.push(...emitted.diagnostics);
    const errors = diagnostics.filter((d) => d.category === ts.DiagnosticCategory.Error);
    fs.rmSync(path.join(root, "bin", ".sources.json"), { force: true });
    if (errors.length > 0) throw new Error(`tsc -p tsconfig.build.json found ${errors.length} error(s):\n${format(ts, errors, root)}`);
    const files = {};
    for (const sf of ownSourceFiles(program, root)) files[path.relative(root, sf.fileName)] = sha256(sf.text);
    Object.assign(files, settings);
    const tmp = `${path.join(root, "bin", ".sources.json")}.${process.pid}`;
    fs.writeFileSync(tmp, JSON.stringify({ files }, null, 1) + "\n");
    fs.renameSync(tmp, path.join(root, "bin", ".sources.json"));
    return Object.keys(files).length;
}

/** The program's own source files: what tsc read from this project, not from node_modules or its lib. */
function ownSourceFiles(program, root) {
    return program.getSourceFiles().filter((sf) => {
        const rel = path.relative(root, sf.fileName);
        return !rel.startsWith("..") && !path.isAbsolute(rel) && !rel.split(path.sep).includes("node_modules");
    });
}

/** The same, as paths relative to root. */
function ownSources(program, root) {
    return ownSourceFiles(program, root).map((sf) => path.relative(root, sf.fileName));
}

function format(ts, diagnostics, root) {
    return ts.formatDiagnostics(diagnostics, { getCanonicalFileName: (f) => f, getCurrentDirectory: () => root, getNewLine: () => "\n" });
}

/** The guard: make bin/ match the sources before the program loads, or stop. */
function ensureFresh(root = ROOT, say = (m) => process.stderr.write(`${m}\n`)) {
    if (staleReason(root) === undefined) return false;
    // Two previews started at once (two stacks of one checkout) build one
    // at a time; the second finds the first one's build fresh.
    return withBuildLock(root, () => {
        const reason = staleReason(root);
        if (reason === undefined) return false;
        say(`nixspark: ${reason} since the last build: compiling the program into bin/ (npm run build)`);
        try {
            build(root);
        } catch (e) {
            throw new Error(`nixspark: the program does not compile, nothing was run; fix it and check with \`npm run build\`:\n${e.message}`);
        }
        return true;
    });
}

/** Runs f holding bin/.build.lock (a directory); a lock older than 10 minutes is a dead build's. */
function withBuildLock(root, f) {
    const lock = path.join(root, "bin", ".build.lock");
    fs.mkdirSync(path.dirname(lock), { recursive: true });
    const deadline = Date.now() + 10 * 60_000;
    for (;;) {
        try {
            fs.mkdirSync(lock);
            break;
        } catch (e) {
            if (e.code !== "EEXIST") throw e;
            try {
                if (Date.now() - fs.statSync(lock).mtimeMs > 10 * 60_000) fs.rmSync(lock, { recursive: true, force: true });
            } catch {
                // gone meanwhile: try again
            }
            if (Date.now() > deadline) throw new Error(`nixspark: ${lock} is held by another build for 10 minutes; remove it if no build runs`);
            Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
        }
    }
    try {
        return f();
    } finally {
        fs.rmSync(lock, { recursive: true, force: true });
    }
}

module.exports = { staleReason, build, ensureFresh, MANIFEST, CONFIG, OUT };

if (require.main === module) {
    // `npm run build`: always compile (incremental), so type errors are reported every time.
    try {
        const n = build();
        process.stdout.write(`built bin/ from ${n} files (tsconfig.build.json)\n`);
    } catch (e) {
        process.stderr.write(`${e.message}\n`);
        process.exit(1);
    }
} else if (require.main === undefined && process.argv.some((a) => /[\\/]@pulumi[\\/]pulumi[\\/]cmd[\\/]run/.test(a))) {
    // Preloaded (--require) into the Pulumi program's node process.
    try {
        ensureFresh();
    } catch (e) {
        process.stderr.write(`${e.message}\n`);
        process.exit(1);
    }
}
