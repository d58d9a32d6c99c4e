// Every dynamic provider of the stack is serialized into state as a closure.
// It must be self-contained and small: no @pulumi/pulumi, no zod, no grpc
// captured by accident (DESIGN.md), and loadable the way the engine's
// dynamic-provider runner loads it.
import { clusterSecretProvider } from "../../providers/clusterSecret";
import { domainProvider } from "../../providers/domain";
import { networkProvider } from "../../providers/network";
import { nixImageProvider } from "../../providers/nixImage";
import { nixosDeploymentProvider } from "../../providers/nixosDeployment";
import { poolProvider } from "../../providers/pool";
import { sparkHealthProvider } from "../../providers/sparkHealth";
import { volumeProvider } from "../../providers/volume";
import { roundTrip } from "../helpers/serialize";

const providers = { clusterSecretProvider, domainProvider, networkProvider, nixImageProvider, nixosDeploymentProvider, poolProvider, sparkHealthProvider, volumeProvider };

describe.each(Object.entries(providers))("%s", (_name, provider) => {
    test("serializes without capturing the SDK, zod or grpc, and loads back with every method", async () => {
        const sc = require("@pulumi/pulumi/runtime/closure/serializeClosure");
        const sf = await sc.serializeFunction(() => provider, { allowSecrets: true });
        expect(sf.text).not.toMatch(/require\("@pulumi\/pulumi"\)|require\("zod"\)|@grpc|ZodType/);
        expect(sf.text.length).toBeLessThan(150_000);
        const loaded = await roundTrip(provider);
        for (const m of Object.keys(provider) as (keyof typeof provider)[]) expect(typeof loaded[m]).toBe("function");
    });
});
