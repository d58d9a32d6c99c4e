// Serializes a dynamic provider exactly as @pulumi/pulumi's dynamic.Resource
// does (serializeFunction(() => provider)) and loads it back the way the
// dynamic-provider runner does (requireFromString(text).handler()).
export async function roundTrip<T>(provider: T): Promise<T> {
    const sc = require("@pulumi/pulumi/runtime/closure/serializeClosure");
    const requireFromString = require("require-from-string");
    const sf = await sc.serializeFunction(() => provider, { allowSecrets: true });
    return requireFromString(sf.text).handler() as T;
}
