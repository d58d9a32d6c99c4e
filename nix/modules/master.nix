# The spark-master role: nixpkgs' services.spark.master, bound to the
# master's fixed address on the cluster network.
{ config, lib, ... }:
let
  cfg = config.nixspark;
  spark = config.services.spark;
  history = cfg.history;
in
{
  imports = [ ./spark.nix ];

  services.spark.master = {
    enable = true;
    bind = cfg.master.address;
    extraEnvironment = {
      SPARK_MASTER_PORT = toString cfg.master.port;
      SPARK_MASTER_WEBUI_PORT = toString cfg.master.webUiPort;
      SPARK_DAEMON_MEMORY = "${toString cfg.daemonMemoryMiB}m";
      SPARK_MASTER_OPTS = lib.concatStringsSep " " [
        # A restarted master recovers its applications and workers from
        # disk; workers reconnect to it by themselves.
        "-Dspark.deploy.recoveryMode=FILESYSTEM"
        "-Dspark.deploy.recoveryDirectory=/var/lib/spark/recovery"
        # A silent worker is lost after this (Spark's default: 60 s).
        "-Dspark.worker.timeout=${toString cfg.worker.timeoutSeconds}"
      ];
    };
  };

  # The master binds to its DHCP-reserved address: wait until it is there.
  systemd.services.spark-master = {
    wants = [ "network-online.target" ];
    after = [ "network-online.target" ];
    # nixpkgs' unit already restarts always; wait a little between tries
    # so systemd's start limit does not give up while the network comes up.
    serviceConfig.RestartSec = 5;
  };

  systemd.tmpfiles.rules = [ "d /var/lib/spark/recovery 0750 spark spark - -" ];

  # The Spark History Server (nixpkgs 24.11 has no option for it): Spark's
  # own launcher from the package, in the foreground (SPARK_NO_DAEMONIZE, so
  # systemd watches the JVM and the journal gets its log), as spark with the
  # daemons' configuration directory. spark is in the Spark users' group, the
  # group of every event log (spark.nix). It binds to SPARK_LOCAL_IP, the
  # master's cluster address (spark-env.sh); the firewall opens its port like
  # the master's UI. http://<master address>:<port>/api/v1/applications
  systemd.services.spark-history = lib.mkIf history.enable {
    description = "Spark History Server";
    wantedBy = [ "multi-user.target" ];
    wants = [ "network-online.target" ];
    # After the event-log directory: switch-to-configuration starts
    # systemd-tmpfiles-resetup (which makes it on a running node) in the
    # same batch as a new unit; at boot tmpfiles runs before sysinit.target.
    after = [
      "network-online.target"
      "systemd-tmpfiles-resetup.service"
    ] ++ lib.optional cfg.security.authenticate "nixspark-spark-conf.service";
    # With authentication the configuration directory is assembled at boot.
    requires = lib.optional cfg.security.authenticate "nixspark-spark-conf.service";
    environment = {
      SPARK_CONF_DIR = spark.confDir;
      SPARK_LOG_DIR = spark.logDir;
      SPARK_NO_DAEMONIZE = "1";
      SPARK_DAEMON_MEMORY = "${toString cfg.daemonMemoryMiB}m";
      SPARK_HISTORY_OPTS = lib.concatStringsSep " " [
        "-Dspark.history.fs.logDirectory=file:${history.logDirectory}"
        "-Dspark.history.ui.port=${toString history.port}"
        # Logs older than Spark's default (7 days) are removed.
        "-Dspark.history.fs.cleaner.enabled=true"
      ];
    };
    serviceConfig = {
      Type = "simple";
      User = "spark";
      Group = "spark";
      WorkingDirectory = "${spark.package}/";
      ExecStart = "${spark.package}/sbin/start-history-server.sh";
      # It exits when its directory is missing or its port is taken: try again.
      Restart = "on-failure";
      RestartSec = 5;
    };
  };
}
