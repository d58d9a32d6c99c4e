// The building blocks of the stack configuration's schema (cluster/configSchema.ts
// and the sections that live in files of their own): numbers, booleans and
// strings as Pulumi hands them over, with messages that say what is expected.
import { z } from "zod";

/** Accepts 3 and "3" (top-level Pulumi config values arrive as strings). */
export const int = (min: number, max: number, what: string) =>
    z.preprocess(
        (v) => (typeof v === "string" && /^-?\d+$/.test(v.trim()) ? Number(v) : v),
        z
            .number({ invalid_type_error: `expected ${what}: a whole number from ${min} to ${max}` })
            .int(`expected ${what}: a whole number from ${min} to ${max}`)
            .min(min, `expected ${what}: a whole number from ${min} to ${max}`)
            .max(max, `expected ${what}: a whole number from ${min} to ${max}`),
    );

export const bool = (what: string) =>
    z.preprocess(
        (v) => (v === "true" ? true : v === "false" ? false : v),
        z.boolean({ invalid_type_error: `expected ${what}: true or false` }),
    );

export const str = (what: string) =>
    z.string({ invalid_type_error: `expected ${what}`, required_error: `required: ${what}` }).min(1, `expected ${what}, got an empty string`);

/** A name that is safe inside libvirt object names, hostnames and file names. */
export const dnsLabel = (what: string) =>
    str(what).regex(/^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z]$/, `expected ${what}: lower-case letters, digits and '-', starting with a letter`);

/**
 * Every Spark setting becomes one line "<name> <value>" of spark-defaults.conf
 * (nix/modules/spark.nix; the secret ones are appended on the node), which
 * Spark reads with java.util.Properties.load: a line feed or a carriage
 * return in a value would end it and start a setting of its own.
 */
export const ONE_LINE = "expected a one-line value: a line break would start another line of spark-defaults.conf";
export const oneLine = (s: z.ZodString) => s.regex(/^[^\r\n]*$/, ONE_LINE);
