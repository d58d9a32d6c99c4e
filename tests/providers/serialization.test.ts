// Every dynamic provider of the stack is serialized into state as a closure.
// It must be self-contained and small: no @pulumi/pulumi, no zod, no grpc
// captured by accident (docs/design.md, Provider rules), and loadable the way the engine's
// dynamic-provider runner loads it.
import { clusterSecretProvider } from "../../providers/clusterSecret";
import { domainProvider } from "../../providers/domain";
import { networkProvider } from "../../providers/network";
import { nixImageProvider } from "../../providers/nixImage";
import { nixosDeploymentProvider } from "../../providers/nixosDeployment";
import { poolProvider } from "../../providers/pool";
import { sparkHealthProvider } from "../../providers/sparkHealth";
import { volumeProvider } from "../../providers/volume";
import { baseVolumeProvider } from "../../providers/baseVolume";
import { deployKeyProvider } from "../../providers/deployKey";
import { roundTrip } from "../helpers/serialize";

const providers = { baseVolumeProvider, clusterSecretProvider, deployKeyProvider, domainProvider, networkProvider, nixImageProvider, nixosDeploymentProvider, poolProvider, sparkHealthProvider, volumeProvider };

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

// The XML readers parse with fast-xml-parser, required when a reader runs:
// the stored closure names the module instead of carrying its source, and a
// loaded copy still parses what libvirt prints.
describe("libvirt XML readers in a serialized provider", () => {
    test("carry a require of fast-xml-parser, not its code, and parse after loading", async () => {
        const { readDomain, readVolume } = require("../../providers/libvirtXml");
        const readers = { readDomain, readVolume };
        const sc = require("@pulumi/pulumi/runtime/closure/serializeClosure");
        const sf = await sc.serializeFunction(() => readers, { allowSecrets: true });
        expect(sf.text).toMatch(/require\("fast-xml-parser"\)/);
        expect(sf.text).not.toMatch(/class XMLParser|OrderedObjParser/);
        expect(sf.text.length).toBeLessThan(30_000);
        const loaded = await roundTrip(readers);
        expect(loaded.readDomain(`<domain type="qemu"><name>a&amp;b</name><memory unit="MiB">512</memory><vcpu>2</vcpu></domain>`)).toEqual({ name: "a&b", domainType: "qemu", vcpus: 2, memoryMiB: 512, uuid: undefined, diskPath: undefined, mac: undefined, network: undefined });
        expect(loaded.readVolume(`<volume><name>v</name><capacity unit="bytes">2147483648</capacity><backingStore><path>/p/base.qcow2</path></backingStore></volume>`)).toMatchObject({ name: "v", capacityBytes: 2147483648, backingPath: "/p/base.qcow2" });
    });
});

// The deploy key's provider holds a secret: after loading it still keeps the
// state's key in place of a candidate, and its create computes the fingerprint.
describe("the DeployKey provider after serialize -> load", () => {
    test("check keeps the state's key; create records the fingerprint", async () => {
        const { generateDeployKey } = require("../../cluster/deployKey");
        const a = generateDeployKey("a");
        const b = generateDeployKey("b");
        const loaded = await roundTrip(deployKeyProvider);
        const olds = { source: "stack", publicKey: a.publicKey, privateKey: a.privateKey, origin: "new", storedAt: "t1" };
        const r = await loaded.check!(olds, { ...olds, publicKey: b.publicKey, privateKey: b.privateKey, storedAt: "t2" });
        expect(r).toEqual({ inputs: olds, failures: [] });
        const c = await loaded.create!(olds);
        expect(c.outs.fingerprint).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
    });
});
