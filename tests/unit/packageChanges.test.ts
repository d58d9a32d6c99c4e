// The package-level preview: what moves on a node, by version.
import { describePackageChanges } from "../../providers/packageChanges";
import { nixosDeploymentProvider } from "../../providers/nixosDeployment";
import { roundTrip } from "../helpers/serialize";

const before = { spark: "3.5.1", jdk: "11.0.25+9", python: "3.12.7", pythonPackages: { numpy: "1.26.4", pandas: "2.2.3" }, kernel: "6.6.63" };

test("version changes, additions and removals, one line each, sorted; nothing when nothing moves", () => {
    const after = { ...before, spark: "3.5.3", pythonPackages: { numpy: "2.0.2", scipy: "1.14.1" } };
    expect(describePackageChanges(before, after)).toEqual(["numpy 1.26.4 → 2.0.2", "- pandas 2.2.3", "+ scipy 1.14.1", "spark 3.5.1 → 3.5.3"]);
    expect(describePackageChanges(before, { ...before })).toEqual([]);
    expect(describePackageChanges(undefined, before)).toEqual([]);
});

test("the deployment's diff says what its switch moves, before anything is built (preview shows the provider's lines)", async () => {
    const lines: string[] = [];
    const spy = jest.spyOn(console, "error").mockImplementation((...a: unknown[]) => void lines.push(a.map(String).join(" ")));
    try {
        const p = await roundTrip(nixosDeploymentProvider);
        const base = { node: "worker-1", flake: "path:/nix", configuration: "dev-worker", host: "10.0.0.11", sshUser: "deploy", identityFile: "/k", knownHostsFile: "/kh", rebuildCommand: "nixos-rebuild" };
        const olds = { ...base, expectedSystem: "/nix/store/a-nixos-system", packages: before, currentSystem: "/nix/store/a-nixos-system" };
        const news = { ...base, expectedSystem: "/nix/store/b-nixos-system", packages: { ...before, pythonPackages: { ...before.pythonPackages, numpy: "2.0.2" } } };
        expect(await p.diff!("id", olds, news)).toMatchObject({ changes: true });
        // The loaded provider writes to the real process's stderr; the spy sees the direct call.
        await nixosDeploymentProvider.diff!("id", olds, news);
        expect(lines).toContain("[worker-1] will switch: numpy 1.26.4 → 2.0.2");
        lines.length = 0;
        await nixosDeploymentProvider.diff!("id", olds, { ...news, expectedSystem: olds.expectedSystem, packages: before });
        expect(lines).toEqual([]);
    } finally {
        spy.mockRestore();
    }
});
