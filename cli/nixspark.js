#!/usr/bin/env node
// The `nixspark` command (package.json "bin"): runs the TypeScript entry
// cli/main.ts through ts-node, transpile-only (no type check at run time;
// `npx tsc --noEmit -p .` checks it), so that it works from a checkout with
// no build step. It does not depend on the compiled program in bin/.
"use strict";
const path = require("node:path");

require("ts-node").register({
    transpileOnly: true,
    project: path.join(__dirname, "..", "tsconfig.json"),
});

// A reader that went away (`nixspark --help | head`) is no error of ours.
for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (e) => {
        if (e && e.code === "EPIPE") process.exit(process.exitCode || 0);
        throw e;
    });
}

require("./main")
    .main(process.argv.slice(2))
    .then(
        (code) => process.exit(code),
        (e) => {
            process.stderr.write(`nixspark: ${e && e.stack ? e.stack : e}\n`);
            process.exit(1);
        },
    );
