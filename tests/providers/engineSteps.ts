// The engine's side of a stored dynamic provider, for upgrade tests: the
// provider is serialized into state (`__provider`) as the SDK does, and each
// step loads the code the engine would use (pulumi's
// cmd/dynamic-provider/index.js): diff and update run the NEW code, read and
// delete the STORED one; a "same" step (diff says no changes) keeps the
// stored code, an update stores the new code with what update returned.

export type Provider = {
    diff?: (id: string, olds: any, news: any) => Promise<{ changes?: boolean; replaces?: string[] }>;
    create: (inputs: any) => Promise<{ id: string; outs?: any }>;
    update?: (id: string, olds: any, news: any) => Promise<{ outs?: any }>;
    read?: (id: string, props: any) => Promise<{ id?: string; props?: any }>;
    delete?: (id: string, props: any) => Promise<void>;
};

/** The text the SDK stores as `__provider` (dynamic.Resource: serializeFunction(() => provider)). */
export async function serializeProvider(provider: object): Promise<string> {
    const sc = require("@pulumi/pulumi/runtime/closure/serializeClosure");
    return (await sc.serializeFunction(() => provider, { allowSecrets: true })).text;
}

/** Loads stored code the way the dynamic-provider host does. */
export function loadProvider(text: string): Provider {
    const requireFromString = require("require-from-string");
    return requireFromString(text).handler() as Provider;
}

export interface Stored {
    id: string;
    /** Outputs as in state, `__provider` included. */
    state: Record<string, any>;
}

/** create through the given code; the state carries that code. */
export async function engineCreate(code: string, inputs: Record<string, any>): Promise<Stored> {
    const r = await loadProvider(code).create({ ...inputs, __provider: code });
    return { id: r.id, state: { ...(r.outs ?? {}), __provider: code } };
}

/** An `up` whose program now carries `code`: diff with the new code, then update or "same". */
export async function engineUp(
    stored: Stored,
    code: string,
    inputs: Record<string, any>,
): Promise<{ step: "same" | "update" | "replace"; stored: Stored; updateOuts?: Record<string, any> }> {
    const p = loadProvider(code);
    const news = { ...inputs, __provider: code };
    const d = p.diff ? await p.diff(stored.id, stored.state, news) : { changes: undefined };
    if (d.replaces && d.replaces.length > 0) return { step: "replace", stored };
    if (d.changes === false) return { step: "same", stored };
    const r = p.update ? ((await p.update(stored.id, stored.state, news)) ?? {}) : {};
    return { step: "update", stored: { id: stored.id, state: { ...(r.outs ?? {}), __provider: code } }, updateOuts: r.outs };
}

/** refresh: read through the stored code. */
export async function engineRead(stored: Stored): Promise<Stored | undefined> {
    const r = await loadProvider(stored.state.__provider).read!(stored.id, stored.state);
    if (!r.id) return undefined;
    return { id: r.id, state: { ...(r.props ?? {}), __provider: stored.state.__provider } };
}

/** destroy: delete through the stored code. */
export async function engineDelete(stored: Stored): Promise<void> {
    const p = loadProvider(stored.state.__provider);
    if (p.delete) await p.delete(stored.id, stored.state);
}
