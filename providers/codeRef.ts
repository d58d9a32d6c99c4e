// What a dynamic resource carries into the state in place of its provider's
// code: a reference to it. The SDK stores the serialized provider with every
// resource (`__provider`) and it travels to the engine and the plugin on every
// preview; serialized by value that was ~190 KB of text per node and a second
// of serialization per run. A reference is ~2.5 KB: the provider's name and
// the version of its code. The dynamic-provider plugin, which the engine
// starts in the project directory, loads the code from the project's build
// (`bin/providers/registry.js`), where it already loads @pulumi/pulumi and
// fast-xml-parser from: like a provider plugin, the code is installed and
// the state says which provider and which version (docs/design.md,
// Provider rules).
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import type * as pulumi from "@pulumi/pulumi";
import { PROVIDER_MODULES } from "./registry";

const refs = new Map<string, pulumi.dynamic.ResourceProvider>();

/**
 * The provider that stands for `real` in the state: each method `real` has,
 * running `name`'s code from the project's build when called, and
 * `codeVersion`. One object per name, so the SDK serializes it once a run.
 */
export function providerRef(name: string, real: pulumi.dynamic.ResourceProvider): pulumi.dynamic.ResourceProvider {
    let ref = refs.get(name);
    if (ref) return ref;
    const methods: Record<string, unknown> = {};
    for (const [method, value] of Object.entries(real)) if (typeof value === "function") methods[method] = delegate(name, method);
    ref = { ...methods, codeVersion: codeVersion(name) } as unknown as pulumi.dynamic.ResourceProvider;
    refs.set(name, ref);
    return ref;
}

/** A method of a reference. Serialized, it captures two strings and `callProvider`. */
function delegate(name: string, method: string): (...args: unknown[]) => unknown {
    return function (...args: unknown[]) {
        return callProvider(name, method, args);
    };
}

/**
 * In the plugin: the build guard once (`refresh` and `destroy` run no program,
 * so nothing else would keep a changed source from running stale; see
 * scripts/build.js), then the registry from the working directory, the
 * project's, then the provider's method.
 */
function callProvider(name: string, method: string, args: unknown[]): unknown {
    const path = require("node:path");
    const g = globalThis as { nixsparkBuildChecked?: boolean };
    let registry;
    try {
        if (!g.nixsparkBuildChecked) {
            require(path.resolve("scripts/build.js")).ensureFresh();
            g.nixsparkBuildChecked = true;
        }
        registry = require(path.resolve("bin/providers/registry.js"));
    } catch (e) {
        const why = (e as Error).message;
        throw new Error(why.startsWith("nixspark:") ? why : `nixspark: cannot load the ${name} provider's code from ${path.resolve("bin/providers")} (${why.split("\n")[0]}); run \`npm ci\` in the project directory`);
    }
    return registry.provider(name)[method](...args);
}

/**
 * The version of a provider's code: SHA-256 (16 hex digits) of its module and
 * every module of this project it requires, transitively, as they are in
 * `dir` (beside this file: bin/providers when the program runs). It changes
 * exactly when the code the plugin would load for `name` does, and then the
 * provider's diff answers an update (providers/unknown.ts).
 */
export function codeVersion(name: string, dir: string = __dirname): string {
    const mod = Object.hasOwn(PROVIDER_MODULES, name) ? PROVIDER_MODULES[name] : undefined;
    const first = mod === undefined ? undefined : moduleFile(path.join(dir, mod));
    if (!first) throw new Error(`nixspark: no module of a provider named ${name} in ${dir}`);
    const texts = new Map<string, string>();
    const visit = (file: string) => {
        if (texts.has(file)) return;
        const text = fs.readFileSync(file, "utf8");
        texts.set(file, text);
        for (const m of text.matchAll(/(?:require\(|from )"(\.{1,2}\/[^"]+)"/g)) {
            const dep = moduleFile(path.resolve(path.dirname(file), m[1]));
            if (dep) visit(dep);
        }
    };
    visit(first);
    const h = crypto.createHash("sha256");
    for (const file of [...texts.keys()].sort()) h.update(path.relative(dir, file)).update("\0").update(texts.get(file)!).update("\0");
    return h.digest("hex").slice(0, 16);
}

/** The file Node (or ts-jest) would load for a relative module path, if there is one. */
function moduleFile(p: string): string | undefined {
    for (const c of [`${p}.js`, `${p}.ts`, p, path.join(p, "index.js"), path.join(p, "index.ts")]) if (fs.existsSync(c) && fs.statSync(c).isFile()) return c;
    return undefined;
}
