# A Spark cluster of one master and two workers built from the same role
# modules the VMs get, on the NixOS test network instead of libvirt's. The
# second worker is built as a machine of a "hosts" stack is (its own
# configuration with its hardware module, plus the role: machines/worker2/)
# and passes the same Spark checks.
# Run with `nix flake check ./nix` or
# `nix build ./nix#checks.x86_64-linux.spark-cluster -L`.
{
  pkgs,
  roles,
  stackJson,
}:
let
  inherit (pkgs) lib;

  # The example stack's settings with the test network in place of the
  # libvirt one. `nodes.master` gives the master's address in the test.
  paramsFor =
    nodes:
    import ../lib/params.nix (
      stackJson
      // {
        cidr = "192.168.1.0/24";
        masterIp = nodes.master.networking.primaryIPAddress;
        masterHostname = "master";
        # Authentication and encryption on, as the program deploys them.
        security.authenticate = true;
        # Small workers: 2 vCPUs and 2 GiB, so each offers 1 GiB to executors.
        worker = {
          vcpus = 2;
          memoryMiB = 2048;
        };
      }
    );

  # Each node gets its host name the way a libvirt VM does (modules/guest.nix):
  # no configured name, and the systemd credential `system.hostname` as an
  # SMBIOS OEM string, which libvirt's <sysinfo> passes to QEMU as this.
  # With no host name, system.name would be "unnamed" for every node, and the
  # test driver names its machines after system.name (nixos/lib/testing/
  # driver.nix): each node's is set to its name in the test script.
  #
  # A `machine` of a "hosts" stack (docs/targets.md) is built as nix/flake.nix
  # builds one (hostSystem): its own configuration module, which imports its
  # hardware module and names the machine, plus common.nix and the role; no
  # guest.nix and no host name credential. (In the test VM, qemu-vm.nix puts
  # its own disk and boot loader over the hardware module's with
  # mkVMOverride, as for any configuration.)
  node =
    role: name:
    { nodes, ... }:
    let
      params = paramsFor nodes;
      machine = ./machines + "/${name}/configuration.nix";
      isMachine = builtins.pathExists machine;
    in
    {
      imports = lib.optional isMachine machine ++ [
        ../modules/common.nix
        roles.${role}
        (import ../lib/params-module.nix params)
      ];
      networking.hostName = lib.mkIf (!isMachine) (lib.mkForce "");
      system.name = name;
      # A user who is no deployer but may submit jobs (nixspark.security.sparkUsers).
      users.users.analyst = {
        isNormalUser = true;
        description = "a Spark user";
      };
      nixspark.security.sparkUsers = [ "analyst" ];
      # The test network has no DHCP pool: the node block is the three Spark
      # nodes (.1 to .3; the test framework numbers nodes in name order), and
      # `zoutsider` (.4) stands for an address outside it.
      nixspark.firewall.nodeRange = lib.mkForce {
        from = "192.168.1.1";
        to = "192.168.1.3";
      };
      # What the deployment does before the first switch: the cluster secret
      # in a root-only file outside the store (here from the store: a test).
      systemd.services.test-cluster-secret = {
        wantedBy = [ "multi-user.target" ];
        before = [ "nixspark-spark-conf.service" ];
        requiredBy = [ "nixspark-spark-conf.service" ];
        serviceConfig.Type = "oneshot";
        # In the format the deployment writes (providers/clusterSecret.ts).
        script = "install -D -m 0400 ${pkgs.writeText "test-secret" "spark.authenticate.secret not-a-real-secret\n"} ${params.security.secretFile or "/var/lib/nixspark/spark-secret"}";
      };
      virtualisation.qemu.options = lib.optionals (!isMachine) [
        "-smbios"
        "type=11,value=io.systemd.credential:system.hostname=${name}"
      ];
      virtualisation.cores = if role == "spark-worker" then params.worker.cores else 2;
      virtualisation.memorySize = if role == "spark-worker" then params.worker.vmMemoryMiB else 2048;
    };

  # A machine on the cluster network that is not a node.
  outsider = {
    virtualisation.memorySize = 512;
  };

  aliveWorkers = ./alive_workers.py;
  historyApps = ./history_apps.py;
  job = ./sum_of_squares.py;
  nc = "${pkgs.netcat}/bin/nc";
in
pkgs.testers.runNixOSTest {
  name = "nixspark-spark-cluster";

  nodes = {
    master = node "spark-master" "master";
    worker1 = node "spark-worker" "worker1";
    # A machine of a "hosts" stack: machines/worker2/configuration.nix.
    worker2 = node "spark-worker" "worker2";
    zoutsider = outsider;
  };

  testScript =
    { nodes, ... }:
    let
      params = paramsFor nodes;
      webUi = params.master.webUiUrl;
      iptables = "${pkgs.iptables}/bin/iptables";
      spark = nodes.master.services.spark.package;
      history = nodes.master.nixspark.history;
      # The history server binds to the master's cluster address (spark-env.sh).
      historyUrl = "http://${params.master.ip}:${toString history.port}";
    in
    ''
      import json

      start_all()

      with subtest("the master and both workers start"):
          master.wait_for_unit("spark-master.service")
          master.wait_until_succeeds("${nc} -z ${params.master.ip} ${toString params.ports.master}")
          for worker in (worker1, worker2):
              worker.wait_for_unit("spark-worker.service")

      with subtest("each VM node has the host name its VM was given, not one from a configuration"):
          for machine, name in ((master, "master"), (worker1, "worker1")):
              machine.wait_for_unit("multi-user.target")
              machine.fail("test -e /etc/hostname")
              actual = machine.succeed("hostname").strip()
              assert actual == name, f"{name} is called {actual!r}"

      with subtest("the hosts-style machine keeps the name its own configuration gives it"):
          worker2.wait_for_unit("multi-user.target")
          worker2.succeed("grep -qx worker2 /etc/hostname")
          assert worker2.succeed("hostname").strip() == "worker2"

      with subtest("spark-submit on PATH is the Spark package's, not a Python package's"):
          for machine in (master, worker1):
              found = machine.succeed("readlink -f $(command -v spark-submit)").strip()
              assert found == "${spark}/bin/spark-submit", f"spark-submit is {found}"
              machine.succeed("test $(readlink -f /run/current-system/sw/bin/spark-submit) = ${spark}/bin/spark-submit")

      with subtest("both workers register with the master"):
          master.wait_until_succeeds("test $(python3 ${aliveWorkers} ${webUi}) -eq 2", timeout=300)

      with subtest("the sum-of-squares job runs on both workers"):
          master.copy_from_host("${job}", "/tmp/sum_of_squares.py")
          # spark.master comes from spark-defaults.conf; cores.max and the
          # registered-resources ratio make the job wait for both workers'
          # executors before it schedules tasks.
          status, out = master.execute(
              "spark-submit --executor-memory 512m --executor-cores 2"
              " --conf spark.cores.max=4"
              " --conf spark.scheduler.minRegisteredResourcesRatio=1.0"
              " --conf spark.scheduler.maxRegisteredResourcesWaitingTime=120s"
              " /tmp/sum_of_squares.py 2>/tmp/spark-submit.log"
          )
          if status != 0:
              print(master.succeed("tail -n 100 /tmp/spark-submit.log"))
              raise Exception(f"spark-submit failed with exit code {status}")
          report = json.loads(out.strip().splitlines()[-1])
          print(f"job report: {report}")
          assert report["result"] == 333338333350000, f"wrong sum: {report['result']}"
          assert report["hosts"] == ["worker1", "worker2"], f"tasks ran on {report['hosts']}"

      with subtest("a user in the Spark users' group submits a job with the cluster's configuration"):
          master.succeed("cp /tmp/sum_of_squares.py /tmp/analyst-job.py && chmod 0644 /tmp/analyst-job.py")
          out = master.succeed(
              "su -l analyst -c 'spark-submit --executor-memory 512m --conf spark.cores.max=2"
              " /tmp/analyst-job.py 2>/tmp/analyst.log'"
          )
          report = json.loads(out.strip().splitlines()[-1])
          assert report["result"] == 333338333350000, f"wrong sum: {report['result']}"
          # The deploy user is a member too; nobody else can read the secret.
          master.succeed("id -nG deploy | grep -qw spark-users")
          master.fail("su -s /bin/sh nobody -c 'cat /run/nixspark/spark-conf/spark-defaults.conf'")

      with subtest("the history server on the master lists the smoke job and the analyst's job as completed"):
          master.wait_for_unit("spark-history.service")
          # Event logs go to a directory of the Spark users' group, on every node
          # (a cluster-mode driver on a worker writes there).
          for machine in (master, worker1):
              mode = machine.succeed("stat -c '%a %U %G' ${history.logDirectory}").strip()
              assert mode == "3770 spark spark-users", mode
          # Each log gets the directory's group (setgid), whoever wrote it.
          groups = master.succeed("stat -c '%U %G' ${history.logDirectory}/*").split("\n")
          assert "analyst spark-users" in groups, groups
          # The server scans every 10 s.
          master.wait_until_succeeds("python3 ${historyApps} ${historyUrl} | grep -qx 'sum-of-squares analyst'", timeout=120)
          listed = master.succeed("python3 ${historyApps} ${historyUrl}").strip().splitlines()
          print(f"history server: {listed}")
          assert "sum-of-squares root" in listed, listed
          assert "sum-of-squares analyst" in listed, listed
          # A worker reaches it (the node block); the outsider does not (below).
          worker1.succeed("${nc} -z -w 5 ${params.master.ip} ${toString history.port}")

      with subtest("workers register again after the master restarts"):
          master.systemctl("restart spark-master.service")
          master.wait_for_unit("spark-master.service")
          master.wait_until_succeeds("test $(python3 ${aliveWorkers} ${webUi}) -eq 2", timeout=300)

      with subtest("the Spark ports are open to the node block only"):
          worker1.succeed("${nc} -z -w 5 ${params.master.ip} ${toString params.ports.master}")
          zoutsider.wait_for_unit("multi-user.target")
          zoutsider.fail("${nc} -z -w 5 ${params.master.ip} ${toString params.ports.master}")
          zoutsider.fail("${nc} -z -w 5 ${params.master.ip} ${toString history.port}")
          zoutsider.fail("${nc} -z -w 5 ${nodes.worker1.networking.primaryIPAddress} ${toString params.ports.worker}")
          zoutsider.succeed("${nc} -z -w 5 ${params.master.ip} 22")
          rules = master.succeed("${iptables} -S nixos-fw")
          assert "--src-range 192.168.1.1-192.168.1.3" in rules, rules
          assert "-s ${params.network.cidr}" not in rules, rules

      with subtest("the secret is outside the store, readable by root and the Spark users only; without it Spark refuses"):
          for machine in (master, worker1):
              mode = machine.succeed("stat -c '%a %U %G' /run/nixspark/spark-conf/spark-defaults.conf").strip()
              assert mode == "440 root spark-users", mode
              # The cluster-mode driver's java argument file (nixspark submit --deploy-mode cluster).
              mode = machine.succeed("stat -c '%a %U %G' /run/nixspark/spark-conf/driver-secret.args").strip()
              assert mode == "440 root spark-users", mode
              machine.succeed("grep -qx -- '-Dspark.authenticate.secret=not-a-real-secret' /run/nixspark/spark-conf/driver-secret.args")
              # The daemons read the secret as the deployment wrote it, once.
              machine.succeed("grep -qx 'spark.authenticate.secret not-a-real-secret' /run/nixspark/spark-conf/spark-defaults.conf")
              machine.fail("grep -q 'spark.authenticate.secret spark.authenticate.secret' /run/nixspark/spark-conf/spark-defaults.conf")
              machine.succeed("test $(stat -c '%a %U' /var/lib/nixspark/spark-secret) = '400 root'")
              machine.fail("grep -Rqs not-a-real-secret /etc/")
          # The same configuration with another secret: the master refuses the driver.
          master.succeed("mkdir -p /tmp/wrong && cp /run/nixspark/spark-conf/spark-env.sh /tmp/wrong/")
          master.succeed("sed 's/^spark.authenticate.secret .*/spark.authenticate.secret wrong/' /run/nixspark/spark-conf/spark-defaults.conf > /tmp/wrong/spark-defaults.conf")
          master.fail(
              "SPARK_CONF_DIR=/tmp/wrong timeout 300 spark-submit"
              " --conf spark.cores.max=1 /tmp/sum_of_squares.py"
          )
    '';
}
