# The spark-worker role: nixpkgs' services.spark.worker, registered with the
# master's fixed address. All workers share this one configuration: a
# worker's own address and host name come from DHCP.
{ config, lib, ... }:
let
  cfg = config.nixspark;
in
{
  imports = [ ./spark.nix ];

  services.spark.worker = {
    enable = true;
    master = "${cfg.master.address}:${toString cfg.master.port}";
    extraEnvironment = {
      SPARK_WORKER_PORT = toString cfg.worker.port;
      SPARK_WORKER_WEBUI_PORT = toString cfg.worker.webUiPort;
      SPARK_DAEMON_MEMORY = "${toString cfg.daemonMemoryMiB}m";
      SPARK_WORKER_OPTS = lib.concatStringsSep " " [
        # Heartbeats every timeout/4: the same value as the master's.
        "-Dspark.worker.timeout=${toString cfg.worker.timeoutSeconds}"
        # Finished applications' directories are removed after a day.
        "-Dspark.worker.cleanup.enabled=true"
        "-Dspark.worker.cleanup.appDataTtl=86400"
      ];
    }
    # What the worker offers Spark; null ("auto" on target hosts) leaves it to
    # Spark (deploy/worker/WorkerArguments.scala: every core; the memory less
    # 1 GiB, inferDefaultMemory).
    // lib.optionalAttrs (cfg.worker.cores != null) { SPARK_WORKER_CORES = toString cfg.worker.cores; }
    // lib.optionalAttrs (cfg.worker.memoryMiB != null) { SPARK_WORKER_MEMORY = "${toString cfg.worker.memoryMiB}m"; };
  };

  # After losing the master, Spark's worker retries registration by itself
  # (6 quick attempts, then 10 slower ones: Spark 3.5 has no settings for
  # these); when it gives up it exits and systemd starts it again.
  systemd.services.spark-worker = {
    wants = [ "network-online.target" ];
    after = [ "network-online.target" ];
    # nixpkgs' unit already restarts always; wait a little between tries
    # so systemd's start limit does not give up while the network comes up.
    serviceConfig.RestartSec = 5;
  };
}
