// Markers the engine puts into a dynamic provider's inputs, recognised here
// without capturing @pulumi/pulumi: Pulumi's unknown value
// (pulumi.runtime.unknownValue) and the stored provider (`__provider`:
// a reference to the provider's code and its version, providers/codeRef.ts).
// Tiny and dependency-free.
export const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

/** True when the value, or anything inside it, is unknown. */
export function isUnknown(v: unknown): boolean {
    if (v === UNKNOWN) return true;
    if (Array.isArray(v)) return v.some(isUnknown);
    if (v && typeof v === "object") return Object.values(v as Record<string, unknown>).some(isUnknown);
    return false;
}

/**
 * True when the resource's state was written by other provider code than the
 * code now asked. The engine stores the provider with every resource
 * (`__provider`: olds hold the old one, news the new one) and a "same" step
 * keeps the old one for good: a state written before references
 * (providers/codeRef.ts) holds the old code itself, and a reference names the
 * version it was written by. Every provider's diff therefore answers an
 * update for this alone, and that update keeps the outputs and stores the new
 * reference. False when either side does not carry the code (direct calls in tests).
 */
export function providerCodeChanged(olds: unknown, news: unknown): boolean {
    const o = (olds as Record<string, unknown> | undefined)?.__provider;
    const n = (news as Record<string, unknown> | undefined)?.__provider;
    if (o === undefined || o === null || n === undefined || n === null || n === UNKNOWN) return false;
    return JSON.stringify(o) !== JSON.stringify(n);
}

/** The recorded outputs without the engine's `__provider` (the engine adds the new code to what update returns). */
export function keptOutputs(olds: Record<string, unknown>): Record<string, unknown> {
    const { __provider: _code, ...outs } = olds;
    return outs;
}
