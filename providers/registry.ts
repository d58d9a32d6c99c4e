// The providers by the name a resource's state carries (providers/codeRef.ts),
// each the `<module>Provider` export of its module here. The dynamic-provider
// plugin loads this file from the project's build and a provider's module
// only when a resource of its kind is first called.
import type * as pulumi from "@pulumi/pulumi";

export const PROVIDER_MODULES: Record<string, string> = {
    BaseVolume: "baseVolume",
    ClusterSecret: "clusterSecret",
    DeployKey: "deployKey",
    Domain: "domain",
    Network: "network",
    NixImage: "nixImage",
    NixosDeployment: "nixosDeployment",
    Placement: "placement",
    StoragePool: "pool",
    SparkHealth: "sparkHealth",
    Volume: "volume",
};

export function provider(name: string): pulumi.dynamic.ResourceProvider {
    const mod = Object.hasOwn(PROVIDER_MODULES, name) ? PROVIDER_MODULES[name] : undefined;
    if (mod === undefined) throw new Error(`nixspark: this checkout has no provider named ${name}; the stack's state was written by another version of nixspark (check out that version, or a newer one)`);
    return require(`./${mod}`)[`${mod}Provider`];
}
