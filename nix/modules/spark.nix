# What master and worker share: nixpkgs' services.spark package and one
# configuration directory, the Python that runs jobs, and the firewall that
# lets the cluster's Spark traffic in from the cluster subnet only.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.nixspark;
  spark = config.services.spark.package;
  sparkHome = "${spark}/lib/${spark.untarDir}";

  # The Python that runs PySpark drivers and executors on every node. The
  # store path is the same on every node (same configuration inputs), which
  # matters: the driver tells executors which interpreter to start.
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
    # The package's own environment: JAVA_HOME, SPARK_HOME and Hadoop's
    # classpath (nixpkgs ships Spark without Hadoop).
    . ${sparkHome}/conf/spark-env.sh

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

  # The package's conf/ (log4j2.properties, ...) with our spark-env.sh and
  # spark-defaults.conf in place of its own.
  confDir = pkgs.runCommand "nixspark-spark-conf" { } ''
    mkdir -p $out
    for f in ${sparkHome}/conf/*; do
      ln -s "$f" "$out/$(basename "$f")"
    done
    rm -f $out/spark-env.sh $out/spark-defaults.conf
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
  environment.systemPackages = [ python ];

  networking.hosts = lib.mkIf (cfg.master.hostname != null) { ${cfg.master.address} = [ cfg.master.hostname ]; };

  networking.firewall.extraCommands = firewallRules;
}
