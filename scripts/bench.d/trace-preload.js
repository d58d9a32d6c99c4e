// A tracer for `scripts/bench --only preview --trace`, loaded into every Node.js
// process of one `pulumi preview` with NODE_OPTIONS="--require <this file>":
// the program (run by the language host through @pulumi/pulumi/cmd/run), the
// dynamic-provider plugin, and the short `node -e require.resolve(...)` calls
// of the language host and the plugin launcher.
//
// It changes nothing the program or the providers do; it only wraps, to time
// them:
//   - Module._load: time spent loading each module, as self time (the
//     module's own load minus the modules it loads), summed per package;
//   - ts-node's service.compile: TypeScript compilation (type check included
//     unless transpile-only), per file;
//   - @pulumi/pulumi's serializeFunction (a dynamic provider's closure);
//   - gRPC unary calls the process makes (client: the program's
//     RegisterResource, SupportsFeature, ...) and serves (server: the
//     dynamic provider's Check, Diff, Configure, ...);
//   - the nixspark program's phases it can see from outside: prepareNix
//     (cluster/nixParams) and the SparkCluster constructor.
// Every event is appended at once, as one JSON line, to
// $NIXSPARK_TRACE_FILE (a process can be killed by the engine at any time);
// times are wall-clock epoch milliseconds with sub-millisecond precision, so
// the lines of all processes share one clock with the bench's own.
"use strict";
const fs = require("node:fs");
const Module = require("node:module");
const { performance } = require("node:perf_hooks");

const file = process.env.NIXSPARK_TRACE_FILE;
if (file) install(file);

function install(file) {
    const now = () => performance.timeOrigin + performance.now();
    const argv = process.argv.slice(1).join(" ");
    const main = process.argv[1] ?? "";
    const role = /\/cmd\/run(\/index\.js)?$/.test(main) ? "program" : /\/cmd\/dynamic-provider(\/index\.js)?$/.test(main) ? "provider" : "other";
    const pid = process.pid;
    const emit = (ev) => {
        try {
            fs.appendFileSync(file, JSON.stringify({ pid, role, ...ev }) + "\n");
        } catch {
            // tracing must never break the traced process
        }
    };
    emit({ ev: "start", t: performance.timeOrigin, argv: argv.slice(0, 300) });
    emit({ ev: "preload", t: now() });

    // ---- module loading, self time per package
    const selfMs = new Map();
    const stack = [];
    const category = (filename) => {
        if (!filename || !filename.includes("/")) return "node:builtin";
        const nm = filename.lastIndexOf("/node_modules/");
        if (nm >= 0) {
            const rest = filename.slice(nm + 14).split("/");
            return rest[0].startsWith("@") ? `${rest[0]}/${rest[1]}` : rest[0];
        }
        if (/\.tsx?$/.test(filename)) return "program (.ts)";
        return "other";
    };
    const origLoad = Module._load;
    const patched = new Set();
    Module._load = function (request, parent, isMain) {
        let filename;
        try {
            filename = Module._resolveFilename(request, parent, isMain);
        } catch {
            return origLoad.apply(this, arguments);
        }
        if (Module._cache[filename] || !filename.includes("/")) return origLoad.apply(this, arguments);
        const frame = { t: now(), child: 0 };
        stack.push(frame);
        let exp;
        try {
            exp = origLoad.apply(this, arguments);
        } finally {
            stack.pop();
            const total = now() - frame.t;
            const cat = category(filename);
            selfMs.set(cat, (selfMs.get(cat) ?? 0) + total - frame.child);
            if (stack.length) stack[stack.length - 1].child += total;
            // The program's own files (cmd/run has changed to its directory by
            // then); not the build guard, which Pulumi.yaml preloads before cmd/run starts.
            if (role === "program" && /\.(tsx?|js)$/.test(filename) && !filename.includes("/node_modules/") && filename.startsWith(process.cwd() + "/") && filename !== `${process.cwd()}/scripts/build.js`) {
                emit({ ev: "program-module", t: frame.t, end: now(), file: filename });
            }
        }
        if (!patched.has(filename)) {
            patched.add(filename);
            try {
                patch(filename, exp);
            } catch (e) {
                emit({ ev: "patch-error", t: now(), file: filename, error: String(e) });
            }
        }
        return exp;
    };

    const timedAsync = (name, f, extra = () => ({})) =>
        function (...args) {
            const t = now();
            const r = f.apply(this, args);
            const done = () => emit({ ev: name, t, end: now(), ...extra(args) });
            if (r && typeof r.then === "function") r.then(done, done);
            else done();
            return r;
        };

    function patch(filename, exp) {
        if (filename.endsWith("/ts-node/dist/index.js") && typeof exp.register === "function") {
            const register = exp.register;
            exp.register = function (...args) {
                const t = now();
                const service = register.apply(this, args);
                emit({ ev: "ts-node.register", t, end: now(), transpileOnly: !!(args[0] && args[0].transpileOnly) });
                if (service && typeof service.compile === "function") {
                    const compile = service.compile.bind(service);
                    service.compile = (code, fileName, ...rest) => {
                        const t0 = now();
                        try {
                            return compile(code, fileName, ...rest);
                        } finally {
                            emit({ ev: "ts.compile", t: t0, end: now(), file: fileName });
                        }
                    };
                }
                return service;
            };
        } else if (filename.endsWith("/@pulumi/pulumi/runtime/closure/serializeClosure.js")) {
            exp.serializeFunction = timedAsync("serializeFunction", exp.serializeFunction);
        } else if (filename.endsWith("/@grpc/grpc-js/build/src/client.js") && exp.Client) {
            const proto = exp.Client.prototype;
            const unary = proto.makeUnaryRequest;
            proto.makeUnaryRequest = function (method, ...rest) {
                const t = now();
                // (serialize, deserialize, argument, [metadata], [options], callback)
                let i = rest.length - 1;
                while (i > 2 && typeof rest[i] !== "function") i--;
                if (i > 2) {
                    const cb = rest[i];
                    rest[i] = function (...res) {
                        emit({ ev: "rpc.client", t, end: now(), method });
                        return cb.apply(this, res);
                    };
                }
                return unary.call(this, method, ...rest);
            };
        } else if (filename.endsWith("/@grpc/grpc-js/build/src/server.js") && exp.Server) {
            const proto = exp.Server.prototype;
            const addService = proto.addService;
            proto.addService = function (service, implementation) {
                // The implementation may be a class instance (methods on its
                // prototype), so look each method up the way grpc-js does.
                const wrapped = {};
                for (const [name, attrs] of Object.entries(service)) {
                    let impl = implementation[name];
                    if (impl === undefined && typeof attrs.originalName === "string") impl = implementation[attrs.originalName];
                    if (typeof impl !== "function") continue;
                    const bound = impl.bind(implementation);
                    wrapped[name] =
                        attrs.requestStream || attrs.responseStream
                            ? bound
                            : (call, callback) => {
                                  const t = now();
                                  return bound(call, (...res) => {
                                      emit({ ev: "rpc.server", t, end: now(), method: name });
                                      return callback(...res);
                                  });
                              };
                }
                return addService.call(this, service, wrapped);
            };
        } else if (/\/cluster\/nixParams\.(ts|js)$/.test(filename) && typeof exp.prepareNix === "function") {
            exp.prepareNix = timedAsync("nixspark.prepareNix", exp.prepareNix);
        } else if (/\/cluster\/sparkCluster\.(ts|js)$/.test(filename) && typeof exp.SparkCluster === "function") {
            const Orig = exp.SparkCluster;
            exp.SparkCluster = new Proxy(Orig, {
                construct(target, args, newTarget) {
                    const t = now();
                    try {
                        return Reflect.construct(target, args, newTarget === exp.SparkCluster ? target : newTarget);
                    } finally {
                        emit({ ev: "nixspark.SparkCluster", t, end: now() });
                    }
                },
            });
        }
    }

    // Optionally a V8 CPU profile of the program and the provider
    // (--cpu-prof is not allowed in NODE_OPTIONS), written at exit.
    const profDir = process.env.NIXSPARK_TRACE_CPU_PROFILE;
    let stopProfile = () => undefined;
    if (profDir && role !== "other") {
        const inspector = require("node:inspector");
        const session = new inspector.Session();
        session.connect();
        session.post("Profiler.setSamplingInterval", { interval: 1000 });
        session.post("Profiler.enable");
        session.post("Profiler.start");
        stopProfile = () => {
            stopProfile = () => undefined;
            // The in-process session answers synchronously, so this works in "exit".
            session.post("Profiler.stop", (err, r) => {
                if (!err) fs.writeFileSync(`${profDir}/${role}-${pid}.cpuprofile`, JSON.stringify(r.profile));
            });
        };
    }

    process.on("exit", (code) => {
        stopProfile();
        const cpu = process.cpuUsage();
        emit({ ev: "exit", t: now(), code, cpuUserMs: cpu.user / 1000, cpuSystemMs: cpu.system / 1000, moduleSelfMs: Object.fromEntries(selfMs) });
    });
    // The engine stops its plugins with a signal: record what was used until then.
    for (const sig of ["SIGTERM", "SIGINT"]) {
        process.once(sig, () => {
            stopProfile();
            const cpu = process.cpuUsage();
            emit({ ev: "signal", t: now(), signal: sig, cpuUserMs: cpu.user / 1000, cpuSystemMs: cpu.system / 1000, moduleSelfMs: Object.fromEntries(selfMs) });
            process.exit(128 + (sig === "SIGTERM" ? 15 : 2));
        });
    }
}
