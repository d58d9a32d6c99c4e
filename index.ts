// The nixspark program: read and validate the stack config, build the
// cluster, export what a user (and `npm run status`) needs to reach it.
import * as pulumi from "@pulumi/pulumi";
import { loadStackConfig } from "./cluster/stackConfig";
import { SparkCluster } from "./cluster/sparkCluster";

const stack = pulumi.getStack();
const { config } = loadStackConfig(stack, pulumi.runtime.allConfig());

if (!config.image.path) {
    throw new pulumi.RunError("nixspark:image.path: set it to a prebuilt qcow2 base image");
}

const cluster = new SparkCluster("nixspark", { stack, config, baseImagePath: config.image.path });

export const libvirtUri = config.libvirtUri;
export const network = cluster.network.name;
export const nodes = cluster.nodeOutputs;
export const masterAddress = cluster.masterAddress;
export const masterUrl = cluster.masterUrl;
export const webUiUrl = cluster.webUiUrl;
