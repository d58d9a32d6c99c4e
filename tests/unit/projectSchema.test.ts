// Pulumi.yaml declares every key of the config schema with the same default,
// so what `pulumi config` users read is what the program does.
import * as fs from "node:fs";
import * as path from "node:path";
import { parseConfig } from "../../cluster/config";
import { configObject } from "../../cluster/configSchema";

const yaml = require("js-yaml");
const project = yaml.load(fs.readFileSync(path.join(__dirname, "../../Pulumi.yaml"), "utf8")) as {
    config: Record<string, { type: string; default: unknown; description: string }>;
};

describe("Pulumi.yaml config block", () => {
    const defaults = parseConfig({}) as Record<string, unknown>;

    test("declares exactly the schema's keys", () => {
        expect(Object.keys(project.config).sort()).toEqual(Object.keys(configObject.shape).sort());
    });

    test.each(Object.keys(configObject.shape))("%s: type, description and the program's default", (key) => {
        const decl = project.config[key];
        expect(decl.description.length).toBeGreaterThan(20);
        // Pulumi refuses to run a stack that sets no value for a declared key without a default
        // ("validating stack config: Stack 'dev' is missing configuration values ..."): every key has one.
        expect(decl).toHaveProperty("default");
        // A key the schema leaves unset (the S3 keys: secrets that are set or not) defaults to "", which the schema reads as unset.
        const expectedType = Array.isArray(defaults[key]) ? "array" : typeof defaults[key] === "object" ? "object" : typeof defaults[key] === "number" ? "integer" : defaults[key] === undefined ? "string" : typeof defaults[key];
        expect(decl.type).toBe(expectedType);
        // The declared default, put through the schema, is the schema's own default.
        expect(parseConfig({ [key]: decl.default })).toEqual(defaults);
        // And it spells out every field the schema defaults (nothing hidden).
        if (expectedType === "object") expect(Object.keys(decl.default as object).sort()).toEqual(Object.keys(defaults[key] as object).sort());
        else expect(decl.default).toEqual(defaults[key] ?? "");
    });
});
