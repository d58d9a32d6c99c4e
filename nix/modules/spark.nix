# What master and worker share: nixpkgs' services.spark package and one
# configuration directory, the Python that runs jobs, and the firewall that
# lets the cluster's Spark traffic in from the cluster subnet only.
#
# The Spark package (nixos-24.11: pkgs/applications/networking/cluster/spark,
# Spark 3.5) installs the distribution at the top of its output: bin/, sbin/,
# jars/, python/ and conf/ (templates only, no spark-env.sh). Every bin/
# program is a wrapper that sets JAVA_HOME to the package's JDK and
# SPARK_DIST_CLASSPATH to `hadoop classpath` of the package's Hadoop, and
# the daemons' sbin/ scripts start Spark through those wrappers. So our
# spark-env.sh adds only what is ours.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.nixspark;
  spark = config.services.spark.package;

  # The Python that runs PySpark drivers and executors on every node. The
  # store path is the same on every node (same configuration inputs), which
  # matters: the driver tells executors which interpreter to start. PySpark
  # itself is not in it: spark-submit puts the Spark package's own
  # python/lib/pyspark.zip and py4j on the path of drivers and executors, so
  # the job always talks to the Spark that runs it.
  python = pkgs.python3.withPackages (
    ps:
    map (
      name:
      ps.${name}
        or (throw "nixspark: python3Packages has no attribute \"${name}\" (from nixspark:spark.pythonPackages)")
    ) cfg.pythonPackages
  );

  sparkDefaults = pkgs.writeText "spark-defaults.conf" (
    lib.concatStrings (lib.mapAttrsToList (key: value: "${key} ${value}\n") cfg.sparkSettings)
  );

  sparkEnv = pkgs.writeText "spark-env.sh" ''
    export PYSPARK_PYTHON=${python}/bin/python3
    export PYSPARK_DRIVER_PYTHON=${python}/bin/python3

    # Advertise the address on the cluster network: the source address of
    # the route to the master (on the master itself, its own address).
    # Spark would otherwise pick whatever the host name resolves to.
    if [ -z "''${SPARK_LOCAL_IP:-}" ]; then
      SPARK_LOCAL_IP=$(${pkgs.iproute2}/bin/ip -4 -o route get ${cfg.master.address} 2>/dev/null \
        | ${pkgs.gnused}/bin/sed -n 's/.* src \([0-9.]*\).*/\1/p')
      if [ -n "$SPARK_LOCAL_IP" ]; then export SPARK_LOCAL_IP; else unset SPARK_LOCAL_IP; fi
    fi
  '';

  # SPARK_CONF_DIR of the daemons and of spark-submit: our two files. Spark
  # falls back to its built-in log4j2 defaults, as the package's conf/ has
  # templates only.
  confDir = pkgs.runCommand "nixspark-spark-conf" { } ''
    mkdir -p $out
    cp ${sparkEnv} $out/spark-env.sh
    cp ${sparkDefaults} $out/spark-defaults.conf
  '';

  # One iptables rule per port or range, for sources inside the cluster
  # subnet. Run by the NixOS firewall just before its final reject rule, and
  # rebuilt with the nixos-fw chain on every reload.
  accept = ports: "iptables -A nixos-fw -p tcp -s ${cfg.clusterCidr} --dport ${ports} -j nixos-fw-accept";
  firewallRules = lib.concatStringsSep "\n" (
    map (p: accept (toString p)) cfg.firewall.tcpPorts
    ++ map (r: accept "${toString r.from}:${toString r.to}") cfg.firewall.tcpPortRanges
  );
in
{
  imports = [ ./options.nix ];

  services.spark.confDir = confDir;

  # spark-submit, pyspark and spark-shell in a login shell read the same
  # configuration as the daemons.
  environment.variables = {
    SPARK_CONF_DIR = "${confDir}";
    PYSPARK_PYTHON = "${python}/bin/python3";
  };
  # nixpkgs' Spark module puts the package on PATH too; hiPrio makes its
  # spark-submit win over any program of the same name that a Python
  # package might bring, so `spark-submit` is always the Spark that runs
  # the daemons.
  environment.systemPackages = [
    (lib.hiPrio spark)
    python
  ];

  networking.hosts = lib.mkIf (cfg.master.hostname != null) { ${cfg.master.address} = [ cfg.master.hostname ]; };

  networking.firewall.extraCommands = firewallRules;
}
