// Command pulumi-language-nodejs is nixspark's own, minimal Node.js language
// host for the Pulumi engine.
//
// Why it exists: Pulumi's own host (module
// github.com/pulumi/pulumi/sdk/nodejs/cmd/pulumi-language-nodejs/v3) has no
// tags and the Go module proxy reachable from our machines serves none of its
// pseudo-versions, so it cannot be built here. What the engine needs from a
// language host is small: start `@pulumi/pulumi/cmd/run` from the project's
// node_modules with the engine's addresses and the stack config, report how it
// exited, and name the resource plugins the installed packages declare. The
// rest (TypeScript via ts-node, closures, dynamic providers) lives in the
// @pulumi/pulumi npm package itself.
//
// Protocol: the engine starts `pulumi-language-nodejs [flags] ENGINE_ADDR`,
// reads the gRPC port from our first stdout line, then calls the
// LanguageRuntime service. Unimplemented calls (code generation, packing,
// linking) fail with codes.Unimplemented, which the engine tolerates for
// ordinary `up`/`preview`/`destroy`/`refresh`.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/version"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Exit code of @pulumi/pulumi/cmd/run meaning "the error was already shown".
const exitAfterUserMessage = 32

// The module that runs a program; PULUMI_LANGUAGE_NODEJS_RUN_PATH overrides it.
const defaultRunModule = "@pulumi/pulumi/cmd/run"

func main() {
	tracing := flag.String("tracing", "", "Zipkin-compatible tracing endpoint (passed on to the program)")
	typescript := flag.Bool("typescript", true, "run TypeScript through ts-node (runtime option `typescript`)")
	root := flag.String("root", "", "project root (informational)")
	_ = flag.String("binary", "", "ignored: prebuilt program binaries are not supported")
	flag.Parse()

	node, err := exec.LookPath("node")
	if err != nil {
		fail("could not find node on PATH: %v", err)
	}

	h := &host{node: node, tracing: *tracing, typescript: *typescript, root: *root}
	if args := flag.Args(); len(args) > 0 {
		h.engine = args[0]
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if h.engine != "" {
		// Exit when the engine goes away instead of lingering as an orphan.
		if err := rpcutil.Healthcheck(ctx, h.engine, 5*time.Minute, cancel); err != nil {
			fail("could not watch the engine at %s: %v", h.engine, err)
		}
	}

	stop := make(chan bool)
	go func() { <-ctx.Done(); stop <- true }()
	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Cancel: stop,
		Init: func(s *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(s, h)
			return nil
		},
		Options: rpcutil.TracingServerInterceptorOptions(nil),
	})
	if err != nil {
		fail("could not start the language host gRPC server: %v", err)
	}
	fmt.Printf("%d\n", handle.Port)
	if err := <-handle.Done; err != nil {
		fail("language host gRPC server stopped: %v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pulumi-language-nodejs: "+format+"\n", args...)
	os.Exit(1)
}

type host struct {
	pulumirpc.UnimplementedLanguageRuntimeServer

	node       string
	tracing    string
	typescript bool
	root       string

	mu     sync.Mutex
	engine string
}

func (h *host) engineAddress() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.engine
}

func (h *host) Handshake(_ context.Context, req *pulumirpc.LanguageHandshakeRequest,
) (*pulumirpc.LanguageHandshakeResponse, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if req.GetEngineAddress() != "" {
		h.engine = req.GetEngineAddress()
	}
	if req.RootDirectory != nil {
		h.root = req.GetRootDirectory()
	}
	return &pulumirpc.LanguageHandshakeResponse{}, nil
}

func (h *host) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version.Version}, nil
}

func (h *host) RuntimeOptionsPrompts(context.Context, *pulumirpc.RuntimeOptionsRequest,
) (*pulumirpc.RuntimeOptionsResponse, error) {
	return &pulumirpc.RuntimeOptionsResponse{}, nil
}

// InstallDependencies does not install: nixspark installs node_modules itself
// (npm ci), and there is no registry to reach during a deployment anyway.
func (h *host) InstallDependencies(req *pulumirpc.InstallDependenciesRequest,
	stream grpc.ServerStreamingServer[pulumirpc.InstallDependenciesResponse],
) error {
	dir := programDir(req.GetInfo(), req.GetDirectory())
	if _, err := os.Stat(filepath.Join(dir, "node_modules")); err != nil {
		return fmt.Errorf("%s has no node_modules: run `npm ci` there first", dir)
	}
	return stream.Send(&pulumirpc.InstallDependenciesResponse{
		Stdout: []byte("node_modules present; nothing to install\n"),
	})
}

func (h *host) About(context.Context, *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	out, err := exec.Command(h.node, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("node --version: %w", err)
	}
	return &pulumirpc.AboutResponse{
		Executable: h.node,
		Version:    strings.TrimPrefix(strings.TrimSpace(string(out)), "v"),
	}, nil
}

// GetProgramDependencies lists package.json dependencies with the versions
// installed in node_modules.
func (h *host) GetProgramDependencies(_ context.Context, req *pulumirpc.GetProgramDependenciesRequest,
) (*pulumirpc.GetProgramDependenciesResponse, error) {
	dir := programDir(req.GetInfo(), req.GetProgram())
	manifest, err := readPackageJSON(filepath.Join(dir, "package.json"))
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(manifest.Dependencies))
	for name := range manifest.Dependencies {
		names = append(names, name)
	}
	sort.Strings(names)
	var deps []*pulumirpc.DependencyInfo
	for _, name := range names {
		v := manifest.Dependencies[name]
		if installed, err := readPackageJSON(filepath.Join(dir, "node_modules", name, "package.json")); err == nil {
			v = installed.Version
		}
		deps = append(deps, &pulumirpc.DependencyInfo{Name: name, Version: v})
	}
	return &pulumirpc.GetProgramDependenciesResponse{Dependencies: deps}, nil
}

// GetRequiredPlugins is the pre-GetRequiredPackages form of the same answer.
func (h *host) GetRequiredPlugins(_ context.Context, req *pulumirpc.GetRequiredPluginsRequest,
) (*pulumirpc.GetRequiredPluginsResponse, error) {
	pkgs, err := pluginPackages(programDir(req.GetInfo(), req.GetProgram()))
	if err != nil {
		return nil, err
	}
	var plugins []*pulumirpc.PluginDependency
	for _, p := range pkgs {
		plugins = append(plugins, &pulumirpc.PluginDependency{
			Name: p.Name, Kind: p.Kind, Version: p.Version, Server: p.Server,
		})
	}
	return &pulumirpc.GetRequiredPluginsResponse{Plugins: plugins}, nil
}

// GetRequiredPackages names the resource plugins that installed npm packages
// declare with `"pulumi": {"resource": true}` in their package.json, as
// Pulumi's own host does. The engine uses the answer to check (and, when
// allowed, download) plugins before the program runs.
func (h *host) GetRequiredPackages(_ context.Context, req *pulumirpc.GetRequiredPackagesRequest,
) (*pulumirpc.GetRequiredPackagesResponse, error) {
	pkgs, err := pluginPackages(programDir(req.GetInfo(), ""))
	if err != nil {
		return nil, err
	}
	return &pulumirpc.GetRequiredPackagesResponse{Packages: pkgs}, nil
}

// Run starts the program through @pulumi/pulumi/cmd/run and waits for it.
func (h *host) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	dir := programDir(req.GetInfo(), req.GetPwd())
	runModule := os.Getenv("PULUMI_LANGUAGE_NODEJS_RUN_PATH")
	if runModule == "" {
		runModule = defaultRunModule
	}
	runPath, err := h.resolve(dir, runModule)
	if err != nil {
		return &pulumirpc.RunResponse{Error: fmt.Sprintf(
			"cannot find %s from %s (is @pulumi/pulumi installed? run `npm ci`): %v", runModule, dir, err)}, nil
	}

	opts := req.GetInfo().GetOptions()
	var args []string
	if nodeargs := stringOption(opts, "nodeargs"); nodeargs != "" {
		args = append(args, strings.Fields(nodeargs)...)
	}
	args = append(args, runPath)
	flagArg := func(name, value string) {
		if value != "" {
			args = append(args, "--"+name, value)
		}
	}
	flagArg("monitor", req.GetMonitorAddress())
	flagArg("engine", h.engineAddress())
	flagArg("organization", req.GetOrganization())
	flagArg("project", req.GetProject())
	flagArg("root-directory", req.GetInfo().GetRootDirectory())
	flagArg("stack", req.GetStack())
	flagArg("pwd", req.GetPwd())
	if req.GetDryRun() {
		args = append(args, "--dry-run")
	}
	if req.GetParallel() > 0 {
		flagArg("parallel", fmt.Sprint(req.GetParallel()))
	}
	flagArg("tracing", h.tracing)
	program := req.GetProgram()
	if program == "" {
		program = "."
	}
	args = append(args, program)
	args = append(args, req.GetArgs()...)

	config, err := json.Marshal(legacyConfigKeys(req.GetConfig()))
	if err != nil {
		return nil, err
	}
	secretKeys := req.GetConfigSecretKeys()
	if secretKeys == nil {
		secretKeys = []string{}
	}
	secrets, err := json.Marshal(secretKeys)
	if err != nil {
		return nil, err
	}

	env := append(os.Environ(),
		"PULUMI_CONFIG="+string(config),
		"PULUMI_CONFIG_SECRET_KEYS="+string(secrets),
	)
	if boolOption(opts, "typescript", h.typescript) {
		env = append(env, "PULUMI_NODEJS_TYPESCRIPT=true")
	}
	if tsconfig := stringOption(opts, "tsconfig"); tsconfig != "" {
		env = append(env, "PULUMI_NODEJS_TSCONFIG_PATH="+tsconfig)
	}

	cmd := exec.CommandContext(ctx, h.node, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	err = cmd.Run()
	_ = os.Stdout.Sync()
	_ = os.Stderr.Sync()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return &pulumirpc.RunResponse{}, nil
	case errors.As(err, &exit) && exit.ExitCode() == exitAfterUserMessage:
		return &pulumirpc.RunResponse{Bail: true}, nil
	case errors.As(err, &exit):
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("Program exited with non-zero exit code: %d", exit.ExitCode())}, nil
	default:
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("could not run node: %v", err)}, nil
	}
}

// resolve finds a module the way the program itself would, from dir.
func (h *host) resolve(dir, module string) (string, error) {
	if filepath.IsAbs(module) {
		return module, nil
	}
	script := "console.log(require.resolve(process.argv[1], {paths: [process.cwd()]}))"
	cmd := exec.Command(h.node, "-e", script, module)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return "", fmt.Errorf("%v: %s", err, strings.TrimSpace(string(exit.Stderr)))
		}
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// legacyConfigKeys rewrites "ns:key" to "ns:config:key": @pulumi/pulumi
// accepts both, older SDK versions only the latter, so hosts send that.
func legacyConfigKeys(config map[string]string) map[string]string {
	out := make(map[string]string, len(config))
	for k, v := range config {
		if i := strings.Index(k, ":"); i > 0 && !strings.Contains(k[i+1:], ":") {
			k = k[:i] + ":config:" + k[i+1:]
		}
		out[k] = v
	}
	return out
}

func programDir(info *pulumirpc.ProgramInfo, fallback string) string {
	if d := info.GetProgramDirectory(); d != "" {
		return d
	}
	if fallback != "" {
		if st, err := os.Stat(fallback); err == nil && !st.IsDir() {
			return filepath.Dir(fallback)
		}
		return fallback
	}
	wd, _ := os.Getwd()
	return wd
}

func stringOption(opts *structpb.Struct, name string) string {
	if v, ok := opts.GetFields()[name]; ok {
		return v.GetStringValue()
	}
	return ""
}

func boolOption(opts *structpb.Struct, name string, def bool) bool {
	v, ok := opts.GetFields()[name]
	if !ok {
		return def
	}
	if s, isString := v.GetKind().(*structpb.Value_StringValue); isString {
		return s.StringValue == "true"
	}
	return v.GetBoolValue()
}

type packageJSON struct {
	Name         string            `json:"name"`
	Version      string            `json:"version"`
	Dependencies map[string]string `json:"dependencies"`
	Pulumi       struct {
		Resource bool   `json:"resource"`
		Name     string `json:"name"`
		Version  string `json:"version"`
		Server   string `json:"server"`
	} `json:"pulumi"`
}

func readPackageJSON(path string) (*packageJSON, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var p packageJSON
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &p, nil
}

// pluginPackages walks node_modules (the program's and its ancestors', as
// Node resolves them), including nested node_modules, and returns every
// package that declares a resource plugin, once per name and version.
func pluginPackages(dir string) ([]*pulumirpc.PackageDependency, error) {
	seen := map[string]bool{}
	var found []*pulumirpc.PackageDependency
	var walk func(nodeModules string, depth int)
	visit := func(pkgDir string, depth int) {
		if p, err := readPackageJSON(filepath.Join(pkgDir, "package.json")); err == nil && p.Pulumi.Resource {
			name := p.Pulumi.Name
			if name == "" {
				name = strings.TrimPrefix(strings.TrimPrefix(p.Name, "@pulumi/"), "@")
			}
			v := p.Pulumi.Version
			if v == "" {
				v = p.Version
			}
			if v != "" && !strings.HasPrefix(v, "v") {
				v = "v" + v
			}
			if key := name + "@" + v; !seen[key] {
				seen[key] = true
				found = append(found, &pulumirpc.PackageDependency{
					Name: name, Kind: "resource", Version: v, Server: p.Pulumi.Server,
				})
			}
		}
		if depth < 8 {
			walk(filepath.Join(pkgDir, "node_modules"), depth+1)
		}
	}
	walk = func(nodeModules string, depth int) {
		entries, err := os.ReadDir(nodeModules)
		if err != nil {
			return
		}
		for _, e := range entries {
			path := filepath.Join(nodeModules, e.Name())
			if strings.HasPrefix(e.Name(), "@") {
				scoped, err := os.ReadDir(path)
				if err != nil {
					continue
				}
				for _, s := range scoped {
					visit(filepath.Join(path, s.Name()), depth)
				}
				continue
			}
			if !strings.HasPrefix(e.Name(), ".") {
				visit(path, depth)
			}
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	for d := abs; ; d = filepath.Dir(d) {
		walk(filepath.Join(d, "node_modules"), 0)
		if d == filepath.Dir(d) {
			break
		}
	}
	sort.Slice(found, func(i, j int) bool { return found[i].Name+found[i].Version < found[j].Name+found[j].Version })
	return found, nil
}
