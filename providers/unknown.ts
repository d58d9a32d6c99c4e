// Pulumi's marker for an input not known during preview
// (pulumi.runtime.unknownValue), spelled out so that providers need not
// capture @pulumi/pulumi to recognise it. Tiny and dependency-free: a
// provider that imports it serializes with it.
export const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

/** True when the value, or anything inside it, is unknown. */
export function isUnknown(v: unknown): boolean {
    if (v === UNKNOWN) return true;
    if (Array.isArray(v)) return v.some(isUnknown);
    if (v && typeof v === "object") return Object.values(v as Record<string, unknown>).some(isUnknown);
    return false;
}
