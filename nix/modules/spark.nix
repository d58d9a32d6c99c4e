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

  # Event logs (nixspark.history): every driver, on whichever node it runs,
  # writes its application's log into the node's logDirectory; the history
  # server on the master reads the master's. A stack's own setting wins.
  history = cfg.history;
  historyOnMaster = history.enable && config.services.spark.master.enable;
  eventLogSettings = lib.optionalAttrs history.enable {
    "spark.eventLog.enabled" = "true";
    "spark.eventLog.dir" = "file:${history.logDirectory}";
  };

  # The Hadoop AWS connector (s3a://) on the classpath of every driver and
  # executor. The Spark package is Spark "without hadoop" and puts
  # `hadoop classpath` of its own Hadoop (spark.hadoop) on
  # SPARK_DIST_CLASSPATH; that classpath leaves out share/hadoop/tools/lib,
  # where the Hadoop package (nixos-24.11:
  # pkgs/applications/networking/cluster/hadoop/default.nix, hadoop_3_4
  # 3.4.0, the full distribution) has hadoop-aws and the AWS SDK bundle it
  # was built with. Those two jars, taken from Spark's own Hadoop, match it
  # by construction and cost no download. The bundle's name is pinned per
  # Hadoop version: another Hadoop stops the evaluation here, to be checked.
  # A stack's own extraClassPath comes after ours.
  hadoop = spark.hadoop;
  hadoopTools = "${hadoop}/share/hadoop/tools/lib";
  awsSdkBundle =
    {
      "3.4.0" = "bundle-2.23.19.jar";
    }
    .${hadoop.version} or (throw
      "nixspark: no AWS SDK bundle known for Spark's Hadoop ${hadoop.version} (nix/modules/spark.nix, awsSdkBundle): add the bundle jar of its share/hadoop/tools/lib"
    );
  s3aClassPath = "${hadoopTools}/hadoop-aws-${hadoop.version}.jar:${hadoopTools}/${awsSdkBundle}";
  classPath =
    key: s3aClassPath + lib.optionalString (cfg.sparkSettings ? ${key}) ":${cfg.sparkSettings.${key}}";
  classPathSettings = {
    "spark.driver.extraClassPath" = classPath "spark.driver.extraClassPath";
    "spark.executor.extraClassPath" = classPath "spark.executor.extraClassPath";
  };

  sparkDefaults = pkgs.writeText "spark-defaults.conf" (
    lib.concatStrings (
      lib.mapAttrsToList (key: value: "${key} ${value}\n") (eventLogSettings // cfg.sparkSettings // classPathSettings)
    )
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

  # Our two files. Spark falls back to its built-in log4j2 defaults, as the
  # package's conf/ has templates only.
  storeConfDir = pkgs.runCommand "nixspark-spark-conf" { } ''
    mkdir -p $out
    cp ${sparkEnv} $out/spark-env.sh
    cp ${sparkDefaults} $out/spark-defaults.conf
  '';

  # SPARK_CONF_DIR of the daemons and of spark-submit. With authentication the
  # secret must be in spark-defaults.conf (a standalone driver accepts it from
  # spark.authenticate.secret only), and nothing secret may enter the
  # world-readable store: the files are assembled at boot under /run, readable
  # by root and the Spark users' group only (the daemons' user and whoever
  # may submit jobs: the deploy user and nixspark.security.sparkUsers).
  auth = cfg.security.authenticate;
  usersGroup = cfg.security.usersGroup;
  confDir = if auth then cfg.security.confDir else storeConfDir;
  daemonUnits =
    lib.optional config.services.spark.master.enable "spark-master.service"
    ++ lib.optional config.services.spark.worker.enable "spark-worker.service";

  # One iptables rule per port or range, for sources in the node block (or
  # the cluster subnet when there is none); the host's gateway address gets
  # the master's submission port and the UIs, and only with authentication.
  # Run by the NixOS firewall just before its final reject rule, and rebuilt
  # with the nixos-fw chain on every reload.
  source =
    if cfg.firewall.nodeRange != null then
      "-m iprange --src-range ${cfg.firewall.nodeRange.from}-${cfg.firewall.nodeRange.to}"
    else
      "-s ${cfg.clusterCidr}";
  accept = ports: "iptables -A nixos-fw -p tcp ${source} --dport ${ports} -j nixos-fw-accept";
  acceptGateway = port: "iptables -A nixos-fw -p tcp -s ${cfg.firewall.gateway} --dport ${toString port} -j nixos-fw-accept";
  firewallRules = lib.concatStringsSep "\n" (
    map (p: accept (toString p)) cfg.firewall.tcpPorts
    ++ map (r: accept "${toString r.from}:${toString r.to}") cfg.firewall.tcpPortRanges
    # The history server's UI, on the master only: a UI like the master's.
    ++ lib.optional historyOnMaster (accept (toString history.port))
    ++ lib.optionals (auth && cfg.firewall.gateway != null) (
      map acceptGateway (
        [
          cfg.master.port
          cfg.master.webUiPort
          cfg.worker.webUiPort
        ]
        ++ lib.optional historyOnMaster history.port
      )
    )
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

  # Who may run spark-submit with the cluster's configuration (and secret):
  # the daemons' user, the deploy user and the users named in
  # nixspark.security.sparkUsers. Everyone else gets Spark without the
  # cluster's settings.
  users.groups.${usersGroup}.members = [
    "spark"
    cfg.deployUser
  ] ++ cfg.security.sparkUsers;

  networking.hosts = lib.mkIf (cfg.master.hostname != null) { ${cfg.master.address} = [ cfg.master.hostname ]; };

  networking.firewall.extraCommands = firewallRules;

  # The daemons read their configuration from /run when authentication is on,
  # so a changed Spark setting no longer changes their units: restart them
  # when the files in the store change (as the store path in SPARK_CONF_DIR
  # does without authentication).
  systemd.services.spark-master = lib.mkIf config.services.spark.master.enable { restartTriggers = [ storeConfDir ]; };
  systemd.services.spark-worker = lib.mkIf config.services.spark.worker.enable { restartTriggers = [ storeConfDir ]; };
  systemd.services.spark-history = lib.mkIf historyOnMaster { restartTriggers = [ storeConfDir ]; };

  # The event-log directory, on every node: a driver refuses to start when
  # spark.eventLog.dir does not exist, and cluster-mode drivers run on
  # workers (their logs stay there: docs/nix.md). Owner spark (the history
  # server and its cleaner), group the Spark users; 3770: setgid, so every
  # log gets that group whatever the writer's primary group, and Spark's own
  # file mode (660 in 3.5) lets the group, and so the history server, read
  # it; sticky, so a user can remove only their own logs (spark, the
  # directory's owner, may remove any).
  systemd.tmpfiles.rules = lib.mkIf history.enable [
    "d ${history.logDirectory} 3770 spark ${usersGroup} - -"
  ];

  # The configuration with the secret, before the daemons start (and again
  # whenever the deployment restarts this unit after delivering a new secret).
  systemd.services.nixspark-spark-conf = lib.mkIf auth {
    description = "Spark configuration with the cluster secret";
    wantedBy = [ "multi-user.target" ];
    before = daemonUnits;
    requiredBy = daemonUnits;
    path = [ pkgs.coreutils ];
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
      UMask = "0077";
    };
    # The secret file is a fragment of spark-defaults.conf, appended as it
    # is (its format: nixspark.security.secretFile in options.nix).
    script = ''
      set -eu
      secret=${cfg.security.secretFile}
      if [ ! -s "$secret" ]; then
        echo "no cluster secret in $secret; \`pulumi up\` delivers it" >&2
        exit 1
      fi
      if grep -qvE '^(spark\.[A-Za-z0-9._-]+ [^[:space:]].*)?$' "$secret" || ! grep -q '^spark\.authenticate\.secret ' "$secret"; then
        echo "$secret is not a Spark properties fragment with spark.authenticate.secret (one 'spark.<key> <value>' line each); \`pulumi up\` writes it again" >&2
        exit 1
      fi
      tmp=$(mktemp -d)
      cp ${storeConfDir}/spark-env.sh "$tmp/spark-env.sh"
      cat ${storeConfDir}/spark-defaults.conf "$secret" > "$tmp/spark-defaults.conf"
      # A driver in cluster deploy mode gets no spark.authenticate.secret
      # from Spark's standalone Client (the worker drops it from the
      # driver's java options), and a standalone driver takes it from that
      # property only: `nixspark submit --deploy-mode cluster` passes this
      # file as a java argument file (spark.driver.extraJavaOptions=@file),
      # so the secret reaches the driver's JVM but not its command line.
      sed -n 's|^spark\.authenticate\.secret \([A-Za-z0-9._~+/=-]*\)$|-Dspark.authenticate.secret=\1|p' "$secret" > "$tmp/driver-secret.args"
      install -d -m 0750 -o root -g ${usersGroup} ${cfg.security.confDir}
      install -m 0440 -o root -g ${usersGroup} "$tmp/spark-env.sh" "$tmp/spark-defaults.conf" "$tmp/driver-secret.args" ${cfg.security.confDir}/
      rm -rf "$tmp"
    '';
  };
}
