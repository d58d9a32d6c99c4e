# Stack settings (the JSON that cluster/nixParams.ts writes to
# nix/stacks/<stack>.json) -> the parameters every node's configuration is
# built from.
#
# Pure on purpose: builtins only, no nixpkgs. So it evaluates with any Nix
# (the test suite runs it with Debian's nix-instantiate, where there is no
# nixpkgs) and the rules that matter most (how much memory Spark may use,
# which ports the firewall opens, which Spark settings win) are checked
# without building a system.
#
#   params = import ./params.nix;
#   p = params (builtins.fromJSON (builtins.readFile ./stacks/dev.json));
#   p.worker.sparkMemoryMiB
let
  inherit (builtins)
    all attrNames concatStringsSep elem filter foldl' fromJSON genList isAttrs isBool isFloat isInt
    isList isString mapAttrs match sort toString
    ;

  max = a: b: if a > b then a else b;
  uniq = list: foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ] list;

  fail = what: throw "nixspark stack settings: ${what}";

  # Every setting reaches spark-defaults.conf as a string.
  settingToString =
    key: v:
    if isString v then
      v
    else if isBool v then
      (if v then "true" else "false")
    else if isInt v then
      toString v
    else if isFloat v then
      fail "sparkSettings.\"${key}\": write fractional numbers as strings (Nix would print ${toString v})"
    else
      fail "sparkSettings.\"${key}\": expected a string, number or boolean";

  isPort = n: isInt n && n >= 1 && n <= 65535;

  # IPv4 arithmetic, for the address blocks of cluster/topology.ts.
  mod = a: b: a - (a / b) * b;
  pow2 = k: foldl' (a: _: a * 2) 1 (genList (x: x) k);
  ipToInt = s: foldl' (acc: o: acc * 256 + fromJSON o) 0 (match ipv4 s);
  intToIp =
    n:
    concatStringsSep "." (
      map toString [
        (n / 16777216)
        (mod (n / 65536) 256)
        (mod (n / 256) 256)
        (mod n 256)
      ]
    );

  # Settings that nixspark:security decides; a stack's sparkSettings may not
  # turn them off behind the firewall's back.
  securityKeys = [
    "spark.authenticate"
    "spark.authenticate.secret"
    "spark.network.crypto.enabled"
    "spark.io.encryption.enabled"
  ];
  toPort =
    key: s:
    let
      n = if match "[0-9]+" s != null then fromJSON s else null;
    in
    if n != null && isPort n then
      n
    else if n == 0 then
      0 # Spark's "pick a random port": the firewall cannot open that
    else
      fail "sparkSettings.\"${key}\" = \"${s}\": expected a TCP port number";

  ipv4 = "([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})";
  checkIp =
    what: s:
    let
      m = if isString s then match ipv4 s else null;
    in
    if m != null && all (o: fromJSON o <= 255) m then s else fail "${what}: expected an IPv4 address, got ${toString s}";

  require =
    json: key: check: what:
    if !(json ? ${key}) then
      fail "missing field \"${key}\" (${what})"
    else if !(check json.${key}) then
      fail "field \"${key}\": expected ${what}"
    else
      json.${key};

  size =
    json: role:
    let
      s = require json role isAttrs "an object with vcpus and memoryMiB";
      vcpus = s.vcpus or (fail "${role}.vcpus is missing");
      memoryMiB = s.memoryMiB or (fail "${role}.memoryMiB is missing");
    in
    if !(isInt vcpus && vcpus >= 1) then
      fail "${role}.vcpus: expected a whole number of at least 1"
    else if !(isInt memoryMiB && memoryMiB >= 256) then
      fail "${role}.memoryMiB: expected a whole number of MiB, at least 256"
    else
      { inherit vcpus memoryMiB; };

  # Fixed ports: the firewall opens exactly these, on the cluster subnet only.
  ports = {
    ssh = 22;
    master = 7077;
    masterWebUi = 8080;
    worker = 7078;
    workerWebUi = 8081;
  };

  # Heap of each Spark daemon (master, worker); Spark's own default is 1g,
  # far more than a standalone daemon needs.
  daemonMemoryMiB = 512;

  # What the OS and the page cache keep on a worker VM: a tenth of its
  # memory, at least 512 MiB.
  osReserveMiB = vmMemoryMiB: max 512 (vmMemoryMiB / 10);

  # Memory a worker offers to executors (SPARK_WORKER_MEMORY): the VM's memory
  # minus the OS reserve and the worker daemon's own heap; at least 256 MiB
  # so that a tiny VM still registers (it will then be overcommitted).
  sparkMemoryMiB = vmMemoryMiB: max 256 (vmMemoryMiB - osReserveMiB vmMemoryMiB - daemonMemoryMiB);

  # Spark settings whose value is a port: each (and the retries Spark makes
  # on the ports above it) is opened in the firewall.
  portSettings = [
    "spark.driver.port"
    "spark.blockManager.port"
    "spark.driver.blockManager.port"
    "spark.ui.port"
  ];
in
json:
let
  version = json.version or 1;
  stack = require json "stack" (s: isString s && match "[A-Za-z0-9][A-Za-z0-9_.-]*" s != null) "the stack name";
  sshUser = require json "sshUser" (s: isString s && match "[a-z_][a-z0-9_-]*" s != null) "a Unix user name";
  sshPublicKey = require json "sshPublicKey" (
    s: isString s && match "(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp[0-9]+|sk-ssh-ed25519@openssh.com) [A-Za-z0-9+/=]+( .*)?" s != null
  ) "an SSH public key line";
  cidr = require json "cidr" (s: isString s && match "${ipv4}/[0-9]{1,2}" s != null) "an IPv4 subnet such as 10.77.0.0/24";
  prefix = require json "prefix" (n: isInt n && n >= 8 && n <= 30) "the subnet prefix length (8 to 30)";
  masterIp = checkIp "masterIp" (require json "masterIp" isString "the master's IPv4 address");
  masterHostname = require json "masterHostname" (
    s: isString s && match "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?" s != null
  ) "a hostname (lower-case letters, digits and '-')";
  master = size json "master";
  workerSize = size json "worker";
  userSettings = json.sparkSettings or { };
  pythonPackages = json.pythonPackages or [
    "numpy"
    "pandas"
  ];

  defaultSettings = {
    "spark.master" = "spark://${masterIp}:${toString ports.master}";
    # Fixed instead of random ports, so a firewall can allow them.
    "spark.driver.port" = "7100";
    "spark.blockManager.port" = "7200";
    "spark.ui.port" = "4040";
    # How far Spark walks up from a busy port; the firewall opens the range.
    "spark.port.maxRetries" = "16";
    # A worker that gets SIGPWR leaves gracefully (Spark 3.1+): the master
    # stops placing executors on it, its executors finish their tasks and
    # hand their cached and shuffle blocks to others before they exit. The
    # deployment of a removed worker does that before its VM stops.
    "spark.decommission.enabled" = "true";
    "spark.storage.decommission.enabled" = "true";
  };

  sparkSettings =
    if !isAttrs userSettings then
      fail "sparkSettings: expected an object of Spark settings"
    else
      defaultSettings // mapAttrs settingToString userSettings // securitySettings;

  badKeys = filter (k: match "spark\\.[A-Za-z0-9._-]+" k == null) (attrNames userSettings);
  securityOverrides = filter (k: elem k securityKeys) (attrNames userSettings);

  # Who may reach the Spark ports (modules/spark.nix): the node block, from
  # the master's address to the last address below the DHCP pool (the top
  # quarter of the subnet, for ad-hoc guests: they reach nothing), and the
  # host's gateway address (submission port and UIs, with authentication only).
  subnetBase = ipToInt (builtins.head (builtins.split "/" cidr));
  subnetSize = pow2 (32 - prefix);
  nodeRange = {
    from = masterIp;
    to = intToIp (subnetBase + subnetSize - subnetSize / 4 - 1);
  };
  gateway = intToIp (subnetBase + 1);

  security =
    let
      s = json.security or { };
      flag = k: d: if !(s ? ${k}) then d else if isBool s.${k} then s.${k} else fail "security.${k}: expected true or false";
    in
    if !isAttrs s then
      fail "security: expected an object"
    else
      {
        # Off unless the program asks: the secret must reach the node first.
        authenticate = flag "authenticate" false;
        ioEncryption = flag "ioEncryption" false;
      };

  # How a node gets its address (nixspark:network.mode): "nat" (absent: the
  # libvirt network's DHCP reservation) or "bridge" (a host bridge onto a
  # shared L2 segment with no DHCP server: the static address the domain
  # hands the node as the systemd credential nixspark.network, see
  # modules/guest.nix). Absent in nat mode, so a nat stack's file is as before.
  networkMode =
    let
      m = json.networkMode or "nat";
    in
    if elem m [
      "nat"
      "bridge"
    ] then
      m
    else
      fail "networkMode: expected \"nat\" or \"bridge\" (nixspark:network.mode), got ${builtins.toJSON m}";

  # The shared data directory (nixspark:data; none when absent): the tag the
  # VM's virtiofs device carries, where the nodes mount it, and how.
  data =
    let
      d = json.data or null;
    in
    if d == null then
      null
    else if !isAttrs d then
      fail "data: expected an object with tag, mountPoint and readOnly"
    else if !(isString (d.tag or null) && match "[A-Za-z0-9._-]{1,36}" d.tag != null) then
      fail "data.tag: expected a virtiofs tag of 1 to 36 letters, digits, '.', '_' or '-'"
    else if !(isString (d.mountPoint or null) && match "(/[A-Za-z0-9._-]+)+" d.mountPoint != null) then
      fail "data.mountPoint: expected an absolute path such as /data"
    else if !isBool (d.readOnly or null) then
      fail "data.readOnly: expected true or false"
    else
      { inherit (d) tag mountPoint readOnly; };

  securitySettings =
    if security.authenticate then
      {
        "spark.authenticate" = "true";
        "spark.network.crypto.enabled" = "true";
      }
      // (if security.ioEncryption then { "spark.io.encryption.enabled" = "true"; } else { })
    else
      { };

  maxRetries =
    let
      s = sparkSettings."spark.port.maxRetries";
    in
    if match "[0-9]+" s != null then fromJSON s else fail "sparkSettings.\"spark.port.maxRetries\": expected a whole number";

  portRanges = filter (r: r.from != 0) (
    map (
      key:
      let
        from = toPort key sparkSettings.${key};
      in
      {
        inherit from;
        to = if from + maxRetries > 65535 then 65535 else from + maxRetries;
        setting = key;
      }
    ) (filter (k: sparkSettings ? ${k}) portSettings)
  );

  # Target "hosts" (docs/targets.md): the existing machines the program
  # listed, each { name, address, role, sshUser, module, cores, memoryMiB }
  # (cores and memoryMiB null for "auto": Spark's own default). Their Spark
  # ports open to the block from the lowest to the highest machine address;
  # there is no libvirt gateway.
  hosts =
    let
      list = json.hosts or [ ];
      check =
        h:
        if
          !(
            isAttrs h
            && isString (h.name or null)
            && match "[a-z]([a-z0-9-]*[a-z0-9])?" h.name != null
            && isString (h.address or null)
            && match ipv4 h.address != null
            && elem (h.role or null) [
              "master"
              "worker"
            ]
            && isString (h.sshUser or null)
            && isString (h.module or null)
            && match "[^/].*" h.module != null
            && (h.cores or null == null || isInt h.cores)
            && (h.memoryMiB or null == null || isInt h.memoryMiB)
          )
        then
          fail "hosts: each machine needs name, address (IPv4), role (master or worker), sshUser, module (a path inside the flake), cores and memoryMiB (numbers or null)"
        else
          {
            inherit (h) name address role sshUser module;
            cores = h.cores or null;
            memoryMiB = h.memoryMiB or null;
          };
    in
    if !isList list then fail "hosts: expected a list of machines" else map check list;
  hostInts = map (h: ipToInt h.address) hosts;
  hostRange = {
    from = intToIp (foldl' (a: b: if b < a then b else a) (builtins.head hostInts) hostInts);
    to = intToIp (foldl' max 0 hostInts);
  };

  packageNames =
    if !(isList pythonPackages && all (p: isString p && match "[A-Za-z0-9_.-]+" p != null) pythonPackages) then
      fail "pythonPackages: expected a list of python3Packages attribute names such as \"numpy\""
    else if elem "pyspark" pythonPackages then
      # A second Spark on every node, whose bin/spark-submit could shadow
      # the real one: jobs get PySpark from the Spark package that runs them.
      fail "pythonPackages: remove \"pyspark\": every job already gets PySpark from the cluster's own Spark package"
    else
      sort (a: b: a < b) (uniq pythonPackages);
in
if version != 1 then
  fail "version ${toString version} is not understood by this flake (expected 1); update the flake or the program"
else if badKeys != [ ] then
  fail "sparkSettings: ${concatStringsSep ", " badKeys}: Spark setting names start with \"spark.\""
else if securityOverrides != [ ] then
  fail "sparkSettings: ${concatStringsSep ", " securityOverrides}: set by nixspark:security (authentication and encryption), not by Spark settings"
else
  {
    inherit
      stack
      ports
      daemonMemoryMiB
      sparkSettings
      security
      data
      ;
    deployUser = sshUser;
    sshKeys = [ sshPublicKey ];
    network = {
      inherit cidr prefix;
      mode = networkMode;
    };
    master = {
      ip = masterIp;
      hostname = masterHostname;
      inherit (master) vcpus memoryMiB;
      url = "spark://${masterIp}:${toString ports.master}";
      webUiUrl = "http://${masterIp}:${toString ports.masterWebUi}";
    };
    worker = {
      cores = workerSize.vcpus;
      vmMemoryMiB = workerSize.memoryMiB;
      osReserveMiB = osReserveMiB workerSize.memoryMiB;
      sparkMemoryMiB = sparkMemoryMiB workerSize.memoryMiB;
    };
    pythonPackages = packageNames;
    firewall = {
      # Open to the node block only, never the DHCP pool (see modules/spark.nix).
      sourceCidr = cidr;
      tcpPorts = [
        ports.master
        ports.masterWebUi
        ports.worker
        ports.workerWebUi
      ];
      tcpPortRanges = map (r: { inherit (r) from to; }) portRanges;
      nodeRange = if hosts == [ ] then nodeRange else hostRange;
      gateway = if hosts == [ ] then gateway else null;
    };
    inherit hosts;
  }
