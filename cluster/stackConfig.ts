// Reads and validates the whole stack configuration before any resource is
// registered, so a bad config stops `pulumi preview` with one clear line per
// problem and leaves the stack empty.
import * as pulumi from "@pulumi/pulumi";
import { ClusterConfig, ConfigError, parseConfig, rawFromPulumiConfig } from "./config";
import { buildTopology, Topology, TopologyError } from "./topology";

export function loadStackConfig(stack: string, all: Record<string, string>): { config: ClusterConfig; topology: Topology } {
    try {
        const config = parseConfig(rawFromPulumiConfig(all));
        return { config, topology: buildTopology(stack, config) };
    } catch (e) {
        if (e instanceof ConfigError || e instanceof TopologyError) {
            const message = e instanceof TopologyError ? `invalid stack configuration:\n  ${e.message}` : e.message;
            // RunError: Pulumi prints the message alone, without a stack trace.
            throw new pulumi.RunError(message);
        }
        throw e;
    }
}
