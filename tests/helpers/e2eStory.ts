// What every end-to-end story (tests/e2e/*.test.ts) does around its steps:
// progress lines on stderr prefixed with the stack, timed phases, and a
// teardown that destroys what the stories' stacks created, stops the bench
// and removes the project copy, whatever failed before.
import type { E2eProject } from "../fixtures/e2e-project";
import type { Bench } from "./libvirtBench";
import type { PulumiCli } from "./pulumiCli";

export interface StoryLog {
    say: (line: string) => void;
    /** Runs fn and records (and says) how long it took under `what`. */
    timed: <T>(what: string, fn: () => Promise<T>) => Promise<T>;
    timings: Record<string, string>;
}

export function storyLog(stack: string): StoryLog {
    const timings: Record<string, string> = {};
    const say = (line: string) => void process.stderr.write(`[e2e ${stack}] ${line}\n`);
    const timed = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
        const t = Date.now();
        try {
            return await fn();
        } finally {
            timings[what] = `${((Date.now() - t) / 1000).toFixed(1)} s`;
            say(`${what}: ${timings[what]}`);
        }
    };
    return { say, timed, timings };
}

/**
 * `pulumi destroy` of each stack given (a failure is said: the bench removes
 * the rest with its libvirtd), then the bench stopped and the project copy
 * removed, each step even when the one before failed; the timings last.
 */
export async function tearDownStory(o: { clis: Iterable<PulumiCli>; bench?: Bench; project?: E2eProject; log: StoryLog }): Promise<void> {
    try {
        for (const c of o.clis) {
            const d = await c.destroy({ allowFailure: true, timeoutMs: 5 * 60_000 }).catch((e: Error) => e);
            if (d instanceof Error || d.code !== 0) o.log.say(`cleanup: pulumi destroy of ${c.opts.stack} failed (the bench removes the rest): ${d instanceof Error ? d.message : d.stderr.slice(-2000)}`);
        }
    } finally {
        try {
            await o.bench?.stop();
        } finally {
            o.project?.remove();
            if (Object.keys(o.log.timings).length > 0) o.log.say(`timings: ${JSON.stringify(o.log.timings)}`);
        }
    }
}
