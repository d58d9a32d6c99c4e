// Config traps: settings that pass the schema field by field but would fail
// (or hang) a `pulumi up` much later. Each is refused by loadStackConfig
// before any resource is registered, one line per problem naming the key as
// the user writes it and the fix (the `pulumi config` command, where there is
// one).
import * as pulumi from "@pulumi/pulumi";
import { checkConfig, parseConfig } from "../../cluster/config";
import { loadStackConfig } from "../../cluster/stackConfig";
import { defaultCidr, HostRoute } from "../../cluster/subnet";

/** Pulumi's flat config map for a raw config: every top-level value as Pulumi hands it over (objects JSON-encoded). */
function flat(raw: Record<string, unknown>): Record<string, string> {
    return Object.fromEntries(Object.entries(raw).map(([k, v]) => [`nixspark:${k}`, typeof v === "string" ? v : JSON.stringify(v)]));
}

/** The problem lines the program stops with (and checks it is the plain RunError Pulumi prints without a stack trace). */
function refusal(all: Record<string, string>, routes: HostRoute[] = []): string[] {
    try {
        loadStackConfig("dev", all, routes);
    } catch (e) {
        expect(e).toBeInstanceOf(pulumi.RunError);
        const message = (e as Error).message;
        expect(message.startsWith("invalid stack configuration:\n  ")).toBe(true);
        return message.split("\n").slice(1).map((l) => l.replace(/^ {2}/, ""));
    }
    throw new Error("expected the config to be refused");
}

const accepted = (all: Record<string, string>, routes: HostRoute[] = []) => loadStackConfig("dev", all, routes).config;

const lineFor = (lines: string[], key: string) => {
    const found = lines.filter((l) => l.startsWith(`${key}: `));
    expect(found).toHaveLength(1);
    return found[0];
};

describe("authentication off with the health gate on", () => {
    test("is refused naming both keys and both ways out", () => {
        const lines = refusal(flat({ security: { authenticate: false } }));
        expect(lines).toHaveLength(1);
        const line = lineFor(lines, "nixspark:security.authenticate");
        expect(line).toMatch(/nixspark:health\.enabled/);
        expect(line).toMatch(/reaches no Spark port/);
        expect(line).toContain("pulumi config set --path health.enabled false");
        expect(line).toContain("pulumi config set --path security.authenticate true");
    });

    test("either way out is accepted", () => {
        expect(accepted(flat({ security: { authenticate: false }, health: { enabled: false } })).security.authenticate).toBe(false);
        expect(accepted(flat({ security: { authenticate: true } })).health.enabled).toBe(true);
    });

    test("parseConfig refuses it too (it is a schema rule)", () => {
        expect(() => parseConfig({ security: { authenticate: "false" } })).toThrow(/nixspark:security\.authenticate: .*health\.enabled false/);
    });
});

describe("executor memory against what a worker offers Spark", () => {
    const EXEC = "nixspark:spark.settings.spark.executor.memory";
    const withExec = (memory: unknown, workers: Record<string, unknown> = {}, settings: Record<string, unknown> = {}) =>
        flat({ workers, spark: { settings: { "spark.executor.memory": memory, ...settings } } });

    test("an executor bigger than the offer is refused with the numbers and both fixes", () => {
        // A 4096 MiB worker VM offers 4096 - 512 (OS) - 512 (daemon) = 3072 MiB.
        const lines = refusal(withExec("4g"));
        expect(lines).toHaveLength(1);
        const line = lineFor(lines, EXEC);
        expect(line).toContain("4g (4096 MiB)");
        expect(line).toContain("3072 MiB");
        expect(line).toContain("nixspark:workers.memoryMiB = 4096");
        expect(line).toContain(`pulumi config set --path 'spark.settings["spark.executor.memory"]' 3072m`);
        expect(line).toContain("pulumi config set --path workers.memoryMiB 5120");
    });

    test("sizes are read as Spark reads them: k, m, g, t, p, upper or lower case, kb/mb/gb, spaces around", () => {
        // (Spark truncates to whole MiB: 3146751k is 3072 MiB and 1023 KiB, so 3072 MiB.)
        for (const fits of ["3072m", "3g", "3G", " 3g ", "3145728k", "3gb", "3221225472b", "3146751k"]) {
            expect(accepted(withExec(fits)).spark.settings["spark.executor.memory"]).toBe(fits);
        }
        for (const [tooBig, mib] of [["3073m", 3073], ["4G", 4096], ["3146752k", 3073], ["1t", 1048576], ["1p", 1073741824]] as const) {
            expect(lineFor(refusal(withExec(tooBig)), EXEC)).toContain(`${tooBig} (${mib} MiB) does not fit`);
        }
    });

    test("spark.executor.memoryOverhead does not count in standalone mode", () => {
        expect(accepted(withExec("3g", {}, { "spark.executor.memoryOverhead": "1g" })).spark.settings["spark.executor.memoryOverhead"]).toBe("1g");
    });

    test("without spark.executor.memory, Spark's default 1g must fit", () => {
        // 1536 MiB: 1536 - 512 - 512 = 512 MiB offered, the default executor wants 1024.
        const lines = refusal(flat({ workers: { memoryMiB: 1536 } }));
        expect(lines).toHaveLength(1);
        const line = lineFor(lines, "nixspark:workers.memoryMiB");
        expect(line).toContain("512 MiB");
        expect(line).toMatch(/spark\.executor\.memory is not set: Spark's default 1g/);
        expect(line).toContain("pulumi config set --path workers.memoryMiB 2048");
        expect(line).toContain(`pulumi config set --path 'spark.settings["spark.executor.memory"]' 512m`);
        expect(accepted(flat({ workers: { memoryMiB: 2048 } })).workers.memoryMiB).toBe(2048);
    });

    test("a worker VM too small for the OS and daemon reserve is refused once, with the size that works", () => {
        for (const memoryMiB of [256, 1024, 1279]) {
            const lines = refusal(flat({ workers: { memoryMiB } }));
            expect(lines).toHaveLength(1);
            const line = lineFor(lines, "nixspark:workers.memoryMiB");
            expect(line).toContain(`${memoryMiB} MiB`);
            expect(line).toMatch(/OS reserve \(512 MiB\) and the worker daemon \(512 MiB\)/);
            expect(line).toMatch(/at least 256 MiB/);
            expect(line).toContain("pulumi config set --path workers.memoryMiB 2048");
        }
        // With a small executor, the smallest worker that offers it.
        expect(lineFor(refusal(withExec("512m", { memoryMiB: 1024 })), "nixspark:workers.memoryMiB")).toContain("pulumi config set --path workers.memoryMiB 1536");
    });

    test("sizes Spark cannot read, unitless sizes and executors below Spark's 450 MiB floor are refused by the schema", () => {
        const cases: [unknown, RegExp][] = [
            ["1.5g", /fractional/],
            ["2x", /k, m, g, t or p/],
            ["lots", /k, m, g, t or p/],
            ["2048", /without a unit.*2048m/],
            [2048, /without a unit.*2048m/],
            ["400m", /at least 450m/],
        ];
        for (const [memory, message] of cases) {
            const lines = refusal(withExec(memory, { memoryMiB: 8192 }));
            expect(lines).toHaveLength(1);
            expect(lineFor(lines, EXEC)).toMatch(message);
            expect(() => parseConfig({ spark: { settings: { "spark.executor.memory": memory } } })).toThrow(new RegExp(`${EXEC.replace(/\./g, "\\.")}: `));
        }
    });

    test("nodes that run no Spark (health gate off, like the tests' tiny guests) are not held to it", () => {
        const tiny = { vcpus: 1, memoryMiB: 256, diskGiB: 1 };
        const cfg = accepted(flat({ master: tiny, workers: { count: 2, ...tiny }, spark: { settings: { "spark.executor.memory": "512m" } }, health: { enabled: false } }));
        expect(cfg.workers.memoryMiB).toBe(256);
    });

    test("the dev stack's own sizes fit", () => {
        expect(accepted(flat({ workers: { count: 2, vcpus: 2, memoryMiB: 3072, diskGiB: 10 }, spark: { settings: { "spark.executor.memory": "1g" } } })).workers.count).toBe(2);
    });
});

describe("a dotted key set without --path", () => {
    test("is named with the two commands that fix it", () => {
        const lines = refusal({ "nixspark:workers.count": "3" });
        expect(lines).toHaveLength(1);
        const line = lineFor(lines, "nixspark:workers.count");
        expect(line).toMatch(/without --path/);
        expect(line).toContain("pulumi config rm nixspark:workers.count");
        expect(line).toContain("pulumi config set --path workers.count 3");
    });

    test("a Spark setting's path is quoted for the shell", () => {
        const line = lineFor(refusal({ 'nixspark:spark.settings["spark.executor.memory"]': "2g" }), 'nixspark:spark.settings["spark.executor.memory"]');
        expect(line).toContain(`pulumi config rm 'nixspark:spark.settings["spark.executor.memory"]'`);
        expect(line).toContain(`pulumi config set --path 'spark.settings["spark.executor.memory"]' 2g`);
    });

    test("a Spark setting written with dots gets its name back in one piece", () => {
        const line = lineFor(refusal({ "nixspark:spark.settings.spark.executor.memory": "2g" }), "nixspark:spark.settings.spark.executor.memory");
        expect(line).toContain(`pulumi config set --path 'spark.settings["spark.executor.memory"]' 2g`);
    });

    test("a misspelt part of the path is corrected in the command", () => {
        const line = lineFor(refusal({ "nixspark:worker.cout": "3" }), "nixspark:worker.cout");
        expect(line).toContain("pulumi config set --path workers.count 3");
    });
});

describe("a misspelt key", () => {
    test("top-level: did you mean, and how to move the value", () => {
        const line = lineFor(refusal(flat({ worker: { count: 3 } })), "nixspark:worker");
        expect(line).toMatch(/unknown key; did you mean `workers`\?/);
        expect(line).toContain("pulumi config rm nixspark:worker");
        expect(line).toContain("pulumi config set --path workers.count 3");
    });

    test("nested: did you mean, with the full path", () => {
        const line = lineFor(refusal(flat({ workers: { cout: 3 } })), "nixspark:workers.cout");
        expect(line).toMatch(/unknown key; did you mean `workers\.count`\?/);
        expect(line).toContain("pulumi config rm --path workers.cout");
        expect(line).toContain("pulumi config set --path workers.count 3");
    });

    test("a secret's value is never printed in the fix", () => {
        const line = lineFor(refusal(flat({ sparkSecret: { "spark.ssl.keyPassword": "hunter2" } })), "nixspark:sparkSecret");
        expect(line).toMatch(/did you mean `sparkSecrets`\?/);
        expect(line).toContain(`pulumi config set --secret --path 'sparkSecrets["spark.ssl.keyPassword"]' VALUE`);
        expect(line).not.toContain("hunter2");
        // Nor the value of any key Pulumi holds as a secret.
        const { problems } = checkConfig({ "ssh.privateKeyPath": "/keys/mine" }, { isSecret: (k) => k === "ssh.privateKeyPath" });
        expect(problems).toHaveLength(1);
        expect(problems[0]).toContain("pulumi config set --secret --path ssh.privateKeyPath VALUE");
        expect(problems[0]).not.toContain("/keys/mine");
    });

    test("transposed letters and case slips are found; a word far from every key gets no guess", () => {
        expect(lineFor(refusal(flat({ wrokers: { count: 3 } })), "nixspark:wrokers")).toMatch(/did you mean `workers`\?/);
        expect(lineFor(refusal(flat({ domaintype: "qemu" })), "nixspark:domaintype")).toMatch(/did you mean `domainType`\?.*pulumi config set domainType qemu/);
        expect(lineFor(refusal(flat({ health: { timeout: 30 } })), "nixspark:health.timeout")).toMatch(/did you mean `health\.timeoutSeconds`\?/);
        const far = lineFor(refusal(flat({ colour: "blue" })), "nixspark:colour");
        expect(far).toMatch(/unknown key/);
        expect(far).not.toMatch(/did you mean/);
    });
});

describe("every problem in one round", () => {
    const clash = (stack = "dev"): HostRoute[] => [{ iface: "virbr9", cidr: defaultCidr(stack) }];

    test("a schema error does not hide a subnet clash", () => {
        const lines = refusal(flat({ domainType: "xen" }), clash());
        expect(lines).toHaveLength(2);
        expect(lineFor(lines, "nixspark:domainType")).toMatch(/"kvm"/);
        expect(lines[1]).toMatch(new RegExp(`^nixspark:network\\.cidr \\(not set: the default for stack "dev"\\) is ${defaultCidr("dev").replace(/[./]/g, "\\$&")}.*on virbr9`));
    });

    test("nor does a bad workers section (the subnet does not depend on it)", () => {
        const lines = refusal(flat({ workers: { count: "three" } }), clash());
        expect(lines.map((l) => l.split(" ")[0])).toEqual(["nixspark:workers.count:", "nixspark:network.cidr"]);
    });

    test("checks across sections still run on the sections that are valid", () => {
        const lines = refusal(flat({ domainType: "xen", security: { authenticate: false }, spark: { settings: { "spark.executor.memory": "8g" } } }), clash());
        expect(lines.map((l) => l.split(":").slice(0, 2).join(":").split(" ")[0]).sort()).toEqual([
            "nixspark:domainType",
            "nixspark:network.cidr",
            "nixspark:security.authenticate",
            "nixspark:spark.settings.spark.executor.memory",
        ]);
    });

    test("a check is skipped when a section it needs is itself invalid (no guess from defaults)", () => {
        // workers.memoryMiB is bad, so the executor is not compared with the default worker size.
        const lines = refusal(flat({ workers: { memoryMiB: "big" }, spark: { settings: { "spark.executor.memory": "8g" } } }));
        expect(lines).toHaveLength(1);
        expect(lines[0].startsWith("nixspark:workers.memoryMiB: expected memory in MiB")).toBe(true);
    });
});

describe("Spark setting values are one line", () => {
    test("a newline or carriage return in nixspark:spark.settings is refused", () => {
        for (const value of ["x\nspark.master local", "x\rspark.master local", "x\r\n"]) {
            const line = lineFor(refusal(flat({ spark: { settings: { "spark.app.name": value } } })), "nixspark:spark.settings.spark.app.name");
            expect(line).toMatch(/expected a one-line value/);
            expect(line).toMatch(/another line of spark-defaults\.conf/);
        }
    });

    test("and in nixspark:sparkSecrets (refused before too; the message now says why)", () => {
        for (const value of ["pw\nspark.x y", "pw\r"]) {
            expect(lineFor(refusal(flat({ sparkSecrets: { "spark.ssl.keyPassword": value } })), "nixspark:sparkSecrets.spark.ssl.keyPassword")).toMatch(/expected a one-line value: .*spark-defaults\.conf/);
        }
    });
});

describe("nixspark:ssh.hostKeys is one of two words", () => {
    test("anything else is refused, naming the key and both words", () => {
        for (const value of ["bogus", "Console", "first_use", ""]) {
            const line = lineFor(refusal(flat({ ssh: { user: "deploy", port: 22, hostKeys: value } })), "nixspark:ssh.hostKeys");
            expect(line).toContain('expected "console"');
            expect(line).toContain('"first-use"');
        }
    });

    test("both words and leaving it out are accepted", () => {
        for (const hostKeys of ["console", "first-use", undefined]) {
            expect(accepted(flat({ ssh: { user: "deploy", port: 22, hostKeys } })).ssh.hostKeys).toBe(hostKeys);
        }
    });
});
