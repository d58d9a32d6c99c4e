// What moves on a node, by package and version, from two summaries of the
// same evaluation that gives its system (nix/flake.nix packageSummary):
// "numpy 1.26.4 → 2.0.2", "+ scipy 1.14.1", "- pandas 2.2.3". Shown by
// `pulumi preview` for each node whose deployment will switch, before
// anything is built. Import-free.

export type Summary = Record<string, unknown>;

/** Flattens { spark: "3.5.1", pythonPackages: { numpy: "1.26.4" } } to name -> version. */
function flatten(s: Summary | undefined): Map<string, string> {
    const out = new Map<string, string>();
    if (!s || typeof s !== "object") return out;
    for (const [k, v] of Object.entries(s)) {
        if (typeof v === "string") out.set(k, v);
        else if (v && typeof v === "object") for (const [n, ver] of Object.entries(v as Record<string, unknown>)) if (typeof ver === "string") out.set(n, ver);
    }
    return out;
}

/** One line per package that changes version, appears or goes; [] when nothing moves or a side is unknown. */
export function describePackageChanges(before: Summary | undefined, after: Summary | undefined): string[] {
    if (!before || !after || typeof before !== "object" || typeof after !== "object") return [];
    const a = flatten(before);
    const b = flatten(after);
    const lines: string[] = [];
    for (const name of [...new Set([...a.keys(), ...b.keys()])].sort()) {
        const x = a.get(name);
        const y = b.get(name);
        if (x === y) continue;
        if (x === undefined) lines.push(`+ ${name} ${y}`);
        else if (y === undefined) lines.push(`- ${name} ${x}`);
        else lines.push(`${name} ${x} → ${y}`);
    }
    return lines;
}
