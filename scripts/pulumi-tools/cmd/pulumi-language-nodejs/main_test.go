package main

import (
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"
)

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestPluginPackagesFindsDeclaredResourcePlugins(t *testing.T) {
	dir := t.TempDir()
	nm := filepath.Join(dir, "node_modules")
	writeFile(t, filepath.Join(nm, "@pulumi/command/package.json"),
		`{"name":"@pulumi/command","version":"1.2.1","pulumi":{"resource":true,"name":"command","version":"1.2.1"}}`)
	writeFile(t, filepath.Join(nm, "@pulumi/pulumi/package.json"), `{"name":"@pulumi/pulumi","version":"3.248.0"}`)
	writeFile(t, filepath.Join(nm, "zod/package.json"), `{"name":"zod","version":"3.25.76"}`)
	// Nested copy at another version, and a scoped name without pulumi.name.
	writeFile(t, filepath.Join(nm, "zod/node_modules/@acme/thing/package.json"),
		`{"name":"@acme/thing","version":"0.3.0","pulumi":{"resource":true}}`)

	got, err := pluginPackages(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"acme/thing@v0.3.0", "command@v1.2.1"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i, p := range got {
		if p.Name+"@"+p.Version != want[i] || p.Kind != "resource" {
			t.Errorf("package %d = %s@%s (%s), want %s", i, p.Name, p.Version, p.Kind, want[i])
		}
	}
}

func TestLegacyConfigKeys(t *testing.T) {
	got := legacyConfigKeys(map[string]string{"proj:workers": "2", "aws:config:region": "x"})
	if got["proj:config:workers"] != "2" || got["aws:config:region"] != "x" || len(got) != 2 {
		t.Fatalf("unexpected %v", got)
	}
}

func TestBoolOption(t *testing.T) {
	opts, err := structpb.NewStruct(map[string]any{"typescript": false, "s": "true"})
	if err != nil {
		t.Fatal(err)
	}
	if boolOption(opts, "typescript", true) || !boolOption(opts, "s", false) || !boolOption(nil, "x", true) {
		t.Fatal("runtime options not read as expected")
	}
}
