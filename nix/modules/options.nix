# The settings every nixspark module reads. The flake sets them from a
# stack's parameters (lib/params.nix, via lib/params-module.nix); the NixOS
# test sets them from the test network's addresses. Defaults match
# lib/params.nix, so a module can be tried on its own.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  data = config.nixspark.data;
  portRange = types.submodule {
    options = {
      from = mkOption { type = types.port; };
      to = mkOption { type = types.port; };
    };
  };
in
{
  options.nixspark = {
    stack = mkOption {
      type = types.str;
      default = "example";
      description = "The Pulumi stack this node belongs to (informational: /etc/nixspark-stack).";
    };

    deployUser = mkOption {
      type = types.str;
      default = "deploy";
      description = "The user Pulumi deploys as over SSH (nixos-rebuild --target-host).";
    };

    sshKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Public keys allowed to log in as the deploy user: the stack's key.";
    };

    clusterCidr = mkOption {
      type = types.str;
      example = "10.77.0.0/24";
      description = "The cluster network; Spark's ports are opened to this subnet only.";
    };

    network.mode = mkOption {
      type = types.enum [
        "nat"
        "bridge"
      ];
      default = "nat";
      description = ''
        How the node gets its address (nixspark:network.mode). "nat": from
        DHCP (the libvirt network's reservation for the node's MAC). "bridge":
        the VM sits on a host bridge onto a shared L2 segment with no DHCP
        server, so no DHCP client runs; the nixspark-address unit puts the
        static address from the systemd credential `nixspark.network` (an
        SMBIOS OEM string in the domain XML: "MAC ADDRESS/PREFIX [GATEWAY]")
        on the interface with that MAC (modules/guest.nix).
      '';
    };

    master = {
      address = mkOption {
        type = types.str;
        example = "10.77.0.10";
        description = "The Spark master's address on the cluster network (its DHCP reservation, or its static address in bridge mode).";
      };
      hostname = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "The master's host name; added to /etc/hosts on every node.";
      };
      port = mkOption {
        type = types.port;
        default = 7077;
      };
      webUiPort = mkOption {
        type = types.port;
        default = 8080;
      };
    };

    worker = {
      timeoutSeconds = mkOption {
        type = types.ints.positive;
        default = 30;
        description = ''
          spark.worker.timeout on the master and on every worker: the master
          drops a worker silent this long, and a worker sends heartbeats every
          quarter of its own value, so both sides must agree.
        '';
      };
      port = mkOption {
        type = types.port;
        default = 7078;
      };
      webUiPort = mkOption {
        type = types.port;
        default = 8081;
      };
      cores = mkOption {
        type = types.nullOr types.ints.positive;
        default = 1;
        description = "Cores a worker offers to executors (SPARK_WORKER_CORES): the VM's vCPUs; null for Spark's own default, every core of the machine (target hosts, \"auto\").";
      };
      memoryMiB = mkOption {
        type = types.nullOr types.ints.positive;
        default = 1024;
        description = "Memory a worker offers to executors (SPARK_WORKER_MEMORY): the VM's memory minus OS headroom; null for Spark's own default, the machine's memory less 1 GiB (target hosts, \"auto\").";
      };
    };

    daemonMemoryMiB = mkOption {
      type = types.ints.positive;
      default = 512;
      description = "Heap of the master and worker daemons (SPARK_DAEMON_MEMORY).";
    };

    sparkSettings = mkOption {
      type = types.attrsOf types.str;
      default = { };
      description = "spark-defaults.conf on every node (spark-submit, pyspark, spark-shell read it).";
    };

    firewall = {
      tcpPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
        description = "Ports opened to the cluster subnet.";
      };
      tcpPortRanges = mkOption {
        type = types.listOf portRange;
        default = [ ];
        description = "Port ranges opened to the cluster subnet (driver, block manager, application UI and their retries).";
      };
      nodeRange = mkOption {
        type = types.nullOr (
          types.submodule {
            options = {
              from = mkOption { type = types.str; };
              to = mkOption { type = types.str; };
            };
          }
        );
        default = null;
        example = {
          from = "10.77.0.10";
          to = "10.77.0.191";
        };
        description = ''
          The block of node addresses that may reach the Spark ports (the
          master and every worker, now and after scaling; the DHCP pool above
          it is left out). Null: the whole cluster subnet (clusterCidr).
        '';
      };
      gateway = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "The host's address on the cluster network: it may reach the master's submission port and the web UIs when security.authenticate is on.";
      };
    };

    security = {
      authenticate = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Spark authentication (spark.authenticate) and RPC encryption
          (spark.network.crypto.enabled) with the cluster secret in
          security.secretFile, which the deployment writes outside /nix/store.
        '';
      };
      ioEncryption = mkOption {
        type = types.bool;
        default = false;
        description = "Encrypt shuffle and spill files on local disks (spark.io.encryption.enabled).";
      };
      secretFile = mkOption {
        type = types.str;
        default = "/var/lib/nixspark/spark-secret";
        description = ''
          The cluster secret on the node (root only, mode 0400); never in
          /nix/store. Its format, the one place it is written down: a
          fragment of spark-defaults.conf, one `spark.<key> <value>` line
          per property and a newline after each, with
          `spark.authenticate.secret <secret>` among them (the secret Spark
          settings follow it, the S3 keys among them as
          `spark.hadoop.fs.s3a.access.key` and `spark.hadoop.fs.s3a.secret.key`
          lines). The deployment writes it
          (providers/clusterSecret.ts, secretProperties); the
          nixspark-spark-conf unit appends it unchanged to the configuration.
        '';
      };
      confDir = mkOption {
        type = types.str;
        default = "/run/nixspark/spark-conf";
        description = "Where the Spark configuration with the secret is assembled at boot (root:<usersGroup>, 0750; files 0440).";
      };
      usersGroup = mkOption {
        type = types.str;
        default = "spark-users";
        description = "The group that may read the cluster's Spark configuration (and so submit jobs): the daemons' user, the deploy user and sparkUsers.";
      };
      sparkUsers = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "alice" ];
        description = "Further users (defined elsewhere) who may run spark-submit with the cluster's configuration: members of usersGroup.";
      };
    };

    history = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Event logs and the Spark History Server: every node's
          spark-defaults.conf turns spark.eventLog on into logDirectory
          (created on every node, so a driver finds it wherever it runs), and
          the master runs the history server (unit spark-history) on port,
          opened like the master's web UI.
        '';
      };
      port = mkOption {
        type = types.port;
        default = 18080;
        description = "The history server's web UI and REST API (spark.history.ui.port), on the master.";
      };
      logDirectory = mkOption {
        type = types.strMatching "/[^[:space:]]*";
        # Derived from the shared data directory, as nixpkgs derives defaults:
        # cluster-mode drivers run on workers, so a master-local directory
        # would miss their logs; a read-write share holds every node's.
        default = if data.tag != null && !data.readOnly then "${data.mountPoint}/spark-events" else "/var/lib/spark/event-logs";
        defaultText = lib.literalExpression ''if data.tag != null && !data.readOnly then "''${data.mountPoint}/spark-events" else "/var/lib/spark/event-logs"'';
        description = ''
          Where drivers write their applications' event logs (spark.eventLog.dir
          file:<dir>) and the history server reads them
          (spark.history.fs.logDirectory). Owned by spark, group
          security.usersGroup, mode 3770: members of the group write their own
          logs (setgid: each file gets the group, which Spark's 660 file mode
          then lets the history server read; sticky: only the owner, or spark,
          removes a log).
        '';
      };
    };

    # The shared data directory (nixspark:data): a host directory that the
    # VM's virtiofs device exports under `tag` (providers/libvirtXml.ts),
    # mounted by guest.nix on every node.
    data = {
      tag = mkOption {
        type = types.nullOr (types.strMatching "[A-Za-z0-9._-]{1,36}");
        default = null;
        description = "The virtiofs tag of the shared data directory (at most 36 bytes); null: no shared directory.";
      };
      mountPoint = mkOption {
        type = types.strMatching "(/[A-Za-z0-9._-]+)+";
        default = "/data";
        description = "Where every node mounts the shared data directory.";
      };
      readOnly = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Mount it read-only. The nodes enforce it (the mount's `ro`); the
          host's virtiofsd does not (libvirt 9.0 refuses <readonly/> for
          virtiofs). Read-write also moves history.logDirectory under it.
        '';
      };
    };

    pythonPackages = mkOption {
      type = types.listOf types.str;
      default = [
        "numpy"
        "pandas"
      ];
      description = "python3Packages attribute names in the Python that runs jobs (PYSPARK_PYTHON) on every node; PySpark itself comes from the Spark package.";
    };
  };
}
