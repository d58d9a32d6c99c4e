// Unknown keys of the stack configuration: a guess at what was meant (a
// misspelt key gets "did you mean"), and the `pulumi config` commands that
// move the value there (a dotted key needs --path).
import { z } from "zod";
import { CONFIG_NAMESPACE, configObject, keyOf } from "./configSchema";


/** Optimal string alignment distance: insertions, deletions, substitutions and swaps of neighbours cost 1. */
export function editDistance(a: string, b: string): number {
    const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
    for (let i = 1; i <= a.length; i++) {
        for (let j = 1; j <= b.length; j++) {
            const cost = a[i - 1] === b[j - 1] ? 0 : 1;
            d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
            if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
        }
    }
    return d[a.length][b.length];
}

/**
 * The known key closest to a misspelt one, if any is close: the same key in
 * other case, a few edits away (1 for keys of up to 3 letters, 2 up to 6, 3
 * beyond), or one a prefix of the other (timeout for timeoutSeconds).
 */
export function closestKey(typed: string, known: readonly string[]): string | undefined {
    const t = typed.toLowerCase();
    const limit = t.length <= 3 ? 1 : t.length <= 6 ? 2 : 3;
    let best: { key: string; score: number } | undefined;
    for (const key of known) {
        const k = key.toLowerCase();
        const prefix = Math.min(t.length, k.length) >= 4 && (k.startsWith(t) || t.startsWith(k));
        const score = editDistance(t, k);
        if ((score <= limit || prefix) && (!best || score < best.score)) best = { key, score };
    }
    return best?.key;
}

function unwrapSchema(t: z.ZodTypeAny): z.ZodTypeAny {
    for (;;) {
        if (t instanceof z.ZodDefault) t = t._def.innerType;
        else if (t instanceof z.ZodOptional) t = t._def.innerType;
        else if (t instanceof z.ZodEffects) t = t._def.schema;
        else return t;
    }
}

/** The schema at a path through the config's objects (undefined past a record, a list or a value). */
function schemaAt(path: readonly (string | number)[]): z.ZodTypeAny | undefined {
    let t: z.ZodTypeAny = configObject;
    for (const seg of path) {
        const u = unwrapSchema(t);
        if (!(u instanceof z.ZodObject) || typeof seg !== "string" || !(seg in u.shape)) return undefined;
        t = u.shape[seg];
    }
    return unwrapSchema(t);
}

/** The keys of the config object at a path (undefined at a record, a list or a value). */
function knownKeysAt(path: readonly (string | number)[]): string[] | undefined {
    const t = schemaAt(path);
    return t instanceof z.ZodObject ? Object.keys(t.shape) : undefined;
}

/**
 * A path with every object key that is not known replaced by the closest
 * known one (where there is one). Below a record of Spark settings the rest
 * is one name: spark.settings.spark.executor.memory is
 * spark.settings["spark.executor.memory"].
 */
function correctedPath(path: readonly (string | number)[]): (string | number)[] {
    const out: (string | number)[] = [];
    for (let i = 0; i < path.length; i++) {
        const seg = path[i];
        const rest = path.slice(i);
        if (schemaAt(out) instanceof z.ZodRecord && rest.every((r) => typeof r === "string")) return [...out, rest.join(".")];
        const known = knownKeysAt(out);
        out.push(known && typeof seg === "string" && !known.includes(seg) ? (closestKey(seg, known) ?? seg) : seg);
    }
    return out;
}

/** Pulumi's --path syntax: a.b, a["b.c"], a[0]. Undefined when the text is not one. */
function parsePulumiPath(text: string): (string | number)[] | undefined {
    const segs: (string | number)[] = [];
    const re = /^(?:\.?([A-Za-z0-9_-]+)|\["((?:[^"\\]|\\.)*)"\]|\[([0-9]+)\])/;
    let rest = text;
    while (rest.length > 0) {
        const m = re.exec(rest);
        if (!m || (segs.length === 0 && rest.startsWith("."))) return undefined;
        segs.push(m[1] ?? (m[2] !== undefined ? m[2].replace(/\\(.)/g, "$1") : Number(m[3])));
        rest = rest.slice(m[0].length);
    }
    return segs;
}

function pulumiPath(path: readonly (string | number)[]): string {
    return path
        .map((seg, i) => (typeof seg === "number" ? `[${seg}]` : /^[A-Za-z_][A-Za-z0-9_]*$/.test(seg) ? `${i === 0 ? "" : "."}${seg}` : `[${JSON.stringify(seg)}]`))
        .join("");
}

function shellWord(s: string): string {
    return /^[A-Za-z0-9_.:\/@%+=,-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * The `pulumi config set` commands that put a value at a path, one per leaf
 * (at most four; else undefined). A secret value is never printed: the
 * command says VALUE and --secret.
 */
function setCommands(path: (string | number)[], value: unknown, secret: boolean): string[] | undefined {
    const leaves: [(string | number)[], unknown][] = [];
    const walk = (p: (string | number)[], v: unknown) => {
        if (Array.isArray(v)) v.forEach((x, i) => walk([...p, i], x));
        else if (v !== null && typeof v === "object") for (const [k, x] of Object.entries(v)) walk([...p, k], x);
        else leaves.push([p, v]);
    };
    walk(path, value);
    if (leaves.length > 4) return undefined;
    return leaves.map(([p, v]) => {
        const where = p.length === 1 && typeof p[0] === "string" ? p[0] : `--path ${shellWord(pulumiPath(p))}`;
        return `pulumi config set ${secret ? "--secret " : ""}${where} ${secret ? "VALUE" : shellWord(String(v))}`;
    });
}

function valueAt(raw: unknown, path: readonly (string | number)[]): unknown {
    return path.reduce<unknown>((v, seg) => (v !== null && typeof v === "object" ? (v as Record<string, unknown>)[seg] : undefined), raw);
}

/** The problem line for a key the schema does not know, with a guess and the fix where there is one. */
export function unknownKeyProblem(raw: Record<string, unknown>, path: (string | number)[], isSecret: (topKey: string) => boolean): string {
    const top = String(path[0]);
    const value = valueAt(raw, path);
    const secret = isSecret(top);
    const move = (from: string, target: (string | number)[]) => {
        const sets = setCommands(target, value, secret || target[0] === "sparkSecrets");
        if (!sets) return `${from}, then set its fields under ${CONFIG_NAMESPACE}:${pulumiPath(target)} (pulumi config set --path ${pulumiPath(target)}.FIELD VALUE)`;
        return [from, ...sets].join(" && ");
    };
    // `pulumi config set nixspark:workers.count 3` without --path keeps a key
    // literally named "workers.count" at the top level.
    if (path.length === 1) {
        const dotted = parsePulumiPath(top);
        if (dotted && dotted.length > 1) {
            const target = correctedPath(dotted);
            if (knownKeysAt([])!.includes(String(target[0]))) {
                return `${keyOf(path)}: set without --path, so Pulumi keeps a key literally named \`${top}\` that nixspark does not read; set the field instead: ${move(`pulumi config rm ${shellWord(`${CONFIG_NAMESPACE}:${top}`)}`, target)}`;
            }
        }
    }
    const parent = path.slice(0, -1);
    const guess = closestKey(String(path[path.length - 1]), knownKeysAt(parent) ?? []);
    const rm = path.length === 1 ? `pulumi config rm ${shellWord(`${CONFIG_NAMESPACE}:${top}`)}` : `pulumi config rm --path ${shellWord(pulumiPath(path))}`;
    if (guess === undefined) return `${keyOf(path)}: unknown key (check the spelling; see Pulumi.yaml for every key); remove it: ${rm}`;
    const target = [...parent, guess];
    return `${keyOf(path)}: unknown key; did you mean \`${pulumiPath(target)}\`? ${move(rm, target)}`;
}

// ---- S3: the keys must be Pulumi secrets.

/**
 * One problem per S3 key set in plain text (Pulumi keeps it unencrypted in
 * Pulumi.<stack>.yaml), with the commands that make it a secret; `isSecret`
 * says which top-level keys Pulumi holds as secrets. The value is never printed.
 */
export function plainSecretProblems(raw: Record<string, unknown>, isSecret: (topKey: string) => boolean): string[] {
    return ["s3AccessKeyId", "s3SecretAccessKey"]
        .filter((k) => raw[k] !== undefined && raw[k] !== "" && !isSecret(k))
        .map(
            (k) =>
                `${keyOf([k])}: set in plain text, so Pulumi keeps it unencrypted in the stack file; set it as a secret (and rotate the key if the file was shared): ` +
                `pulumi config rm ${CONFIG_NAMESPACE}:${k} && pulumi config set --secret ${CONFIG_NAMESPACE}:${k} VALUE`,
        );
}
