// The deploy key's file: written from the Pulumi state when this checkout
// lacks it; another key found there is moved aside, never deleted.
import { localPath } from "./paths";


/**
 * Makes `file` hold `privateKey` (the stack's deploy key, from the Pulumi
 * state) for `ssh -i`: written 0600 in a 0700 directory when missing, with
 * `publicKey` as its .pub; left alone when it holds that key already. A file
 * holding another key is never overwritten or deleted: it is renamed to
 * FILE.not-in-state-<time> (its .pub with it) and the state's key written.
 */
export function ensureKeyFile(file: string, privateKey: string, publicKey?: string): { action: "kept" | "written" | "moved-aside"; file: string; movedTo?: string } {
    const fs = require("node:fs") as typeof import("node:fs");
    const path = require("node:path") as typeof import("node:path");
    const f = localPath(file);
    const want = privateKey.endsWith("\n") ? privateKey : `${privateKey}\n`;
    let action: "kept" | "written" | "moved-aside" = "written";
    let movedTo: string | undefined;
    let current: string | undefined;
    try {
        current = fs.readFileSync(f, "utf8");
    } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
    }
    if (current !== undefined && current.trim() === want.trim()) {
        action = "kept";
    } else {
        fs.mkdirSync(path.dirname(f), { recursive: true, mode: 0o700 });
        if (current !== undefined) {
            movedTo = `${f}.not-in-state-${new Date().toISOString().replace(/[:.]/g, "-")}`;
            fs.renameSync(f, movedTo);
            if (fs.existsSync(`${f}.pub`)) fs.renameSync(`${f}.pub`, `${movedTo}.pub`);
            action = "moved-aside";
        }
        try {
            // wx: never over a file another process wrote meanwhile (parallel deployments restore the same key).
            fs.writeFileSync(f, want, { mode: 0o600, flag: "wx" });
        } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== "EEXIST" || fs.readFileSync(f, "utf8").trim() !== want.trim()) throw e;
        }
    }
    const pub = `${f}.pub`;
    if (publicKey && (action !== "kept" || !fs.existsSync(pub))) fs.writeFileSync(pub, `${publicKey.trim()}\n`, { mode: 0o644 });
    return { action, file: f, movedTo };
}
