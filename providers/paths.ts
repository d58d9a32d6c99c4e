// Local paths as the providers and the program name them: "~/" expanded,
// relative paths the project directory's. Modules are required inside the
// functions (a dynamic provider that calls these serializes self-contained).

/** "~" and "~/..." with the home directory (this user's unless given). */
export function expandHome(path: string, home?: string): string {
    const h = home ?? (require("node:os") as typeof import("node:os")).homedir();
    if (path === "~") return h;
    if (path.startsWith("~/")) return `${h}${path.slice(1)}`;
    return path;
}

/**
 * A key or known-hosts path as ssh is given it: "~/" expanded, and a relative
 * path made absolute against the working directory. The engine starts the
 * program and the dynamic providers in the project directory, so the stack's
 * own files are named relative to it (".nixspark/<stack>/known_hosts"): what
 * the state records then means this checkout in every checkout.
 */
export function localPath(file: string): string {
    const path = require("node:path") as typeof import("node:path");
    return path.resolve(expandHome(file));
}
