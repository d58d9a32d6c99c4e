# The spark-master role: nixpkgs' services.spark.master, bound to the
# master's fixed address on the cluster network.
{ config, lib, ... }:
let
  cfg = config.nixspark;
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
}
