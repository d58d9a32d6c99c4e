# The machine that runs a nixspark stack's VMs, as a NixOS module: add
# `nixspark.nixosModules.host` to its configuration, set
# `nixspark.host.users`, and `nixos-rebuild switch`. It gives:
#   - libvirtd with QEMU/KVM (qemu:///system, where the program defines its
#     pools, networks and domains);
#   - the firewall letting the stacks' VMs reach libvirt's dnsmasq on their
#     bridges (DHCP and DNS) with either NixOS firewall: on nftables hosts
#     libvirt's own accept rules live in another table and do not override
#     NixOS' input chain, so they are not enough;
#   - Nix with flakes and the system features the image build and the NixOS
#     test need (kvm, nixos-test);
#   - the listed users in the libvirtd group, and the tools the program runs;
#   - the VMs' host key lines from libvirt's root-only console logs, copied
#     where an unprivileged deployer can read them;
#   - optionally (nixspark.host.heal), a timer running `nixspark heal` for a
#     stack: it starts the stack's VMs that are not running and restarts
#     failed Spark units (docs/operations.md).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.nixspark.host;
  inherit (lib) mkOption types;

  # Every stack's default bridge is "nxs-<stack>" (cluster/topology.ts).
  udp = lib.concatMapStringsSep ", " toString [
    53
    67
  ];
  # The default bridges by prefix, and bridges a stack names itself
  # (nixspark:network.bridge) one by one.
  nftIfaces = [ "${cfg.bridgePrefix}*" ] ++ cfg.bridges;
  iptIfaces = [ "${cfg.bridgePrefix}+" ] ++ cfg.bridges;
  nftablesRules = lib.concatMapStrings (i: ''
    iifname "${i}" udp dport { ${udp} } accept
    iifname "${i}" tcp dport 53 accept
  '') nftIfaces;
  iptablesRules = lib.concatMapStrings (i: ''
    iptables -A nixos-fw -i ${i} -p udp -m multiport --dports ${toString 53},${toString 67} -j nixos-fw-accept
    iptables -A nixos-fw -i ${i} -p tcp --dport 53 -j nixos-fw-accept
  '') iptIfaces;
in
{
  options.nixspark.host = {
    heal = {
      enable = lib.mkEnableOption "a timer that runs `nixspark heal` for one stack";
      projectDir = mkOption {
        type = types.str;
        example = "/srv/spark";
        description = "The nixspark project directory (Pulumi.yaml, cli/nixspark.js, node_modules) of the stack.";
      };
      stack = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "prod";
        description = "The Pulumi stack; null: the project's selected stack.";
      };
      passphraseFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/keys/pulumi-passphrase";
        description = "A file holding the stack's Pulumi passphrase (PULUMI_CONFIG_PASSPHRASE_FILE); read at run time, never copied to the Nix store.";
      };
      interval = mkOption {
        type = types.str;
        default = "5min";
        description = "How often heal runs (a systemd time span such as 5min or 30s: the timer's OnBootSec and OnUnitActiveSec).";
      };
      user = mkOption {
        type = types.str;
        default = "root";
        description = "Who runs heal: a user who may use libvirt (nixspark.host.users) and read the project's .nixspark/ (the stack's deploy key).";
      };
    };
    users = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "alice" ];
      description = "Users who run `pulumi up` for nixspark stacks: added to the libvirtd group.";
    };
    consoleLogDir = mkOption {
      type = types.str;
      default = "/var/log/libvirt/qemu";
      description = "Where libvirt writes the VMs' console logs (nixspark:consoleLogDir).";
    };
    bridgePrefix = mkOption {
      type = types.strMatching "[A-Za-z0-9_-]{1,14}";
      default = "nxs-";
      description = "Name prefix of the stacks' default bridges (nxs-<stack>).";
    };
    bridges = mkOption {
      type = types.listOf (types.strMatching "[A-Za-z0-9_-]{1,15}");
      default = [ ];
      example = [ "sparkbr0" ];
      description = "Bridges that stacks name themselves (nixspark:network.bridge) without the prefix: they get the same DHCP and DNS openings.";
    };
  };

  config = {
    virtualisation.libvirtd = {
      enable = true;
      # QEMU for this machine's architecture only, with KVM.
      qemu.package = lib.mkDefault pkgs.qemu_kvm;
      # Domains with autostart come back after a reboot; shut them down
      # cleanly instead of suspending them to disk.
      onShutdown = lib.mkDefault "shutdown";
    };

    networking.firewall.extraInputRules = lib.mkIf config.networking.nftables.enable nftablesRules;
    networking.firewall.extraCommands = lib.mkIf (!config.networking.nftables.enable) iptablesRules;

    nix.settings = {
      experimental-features = [
        "nix-command"
        "flakes"
      ];
      # make-disk-image runs in a VM (kvm); the NixOS test needs nixos-test.
      system-features = [
        "nixos-test"
        "benchmark"
        "big-parallel"
        "kvm"
      ];
    };

    users.users = lib.genAttrs cfg.users (_: {
      extraGroups = [ "libvirtd" ];
    });
    # This module only adds them to libvirtd: the accounts are the machine's.
    assertions = map (u: {
      assertion = config.users.users.${u}.isNormalUser || config.users.users.${u}.isSystemUser;
      message = "nixspark.host.users names ${u}, who is not a user of this machine: define users.users.${u} (isNormalUser = true) in its configuration";
    }) cfg.users;

    environment.systemPackages = [
      pkgs.nodejs_20
      pkgs.pulumi-bin
      pkgs.qemu-utils
    ];

    # `nixspark heal` on a timer (cli/verbs/heal.ts): non-interactive, one run
    # at a time (its lock), and it leaves a stack stopped with `nixspark stop`
    # alone. A oneshot: a run that finds something it cannot start fails the
    # unit (visible in `systemctl --failed`) and the timer tries again later.
    systemd.services.nixspark-heal = lib.mkIf cfg.heal.enable {
      description = "nixspark heal: start the stack's VMs and Spark units that should run";
      after = [ "libvirtd.service" ];
      wants = [ "libvirtd.service" ];
      path = [
        pkgs.nodejs_20
        pkgs.pulumi-bin
        pkgs.libvirt
        pkgs.openssh
      ];
      environment = lib.mkIf (cfg.heal.passphraseFile != null) { PULUMI_CONFIG_PASSPHRASE_FILE = cfg.heal.passphraseFile; };
      serviceConfig = {
        Type = "oneshot";
        User = cfg.heal.user;
        WorkingDirectory = cfg.heal.projectDir;
      };
      script = ''
        exec node ${lib.escapeShellArg "${cfg.heal.projectDir}/cli/nixspark.js"} --cwd ${lib.escapeShellArg cfg.heal.projectDir} ${
          lib.optionalString (cfg.heal.stack != null) "--stack ${lib.escapeShellArg cfg.heal.stack}"
        } heal
      '';
    };
    systemd.timers.nixspark-heal = lib.mkIf cfg.heal.enable {
      description = "Run nixspark heal every ${cfg.heal.interval}";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnBootSec = cfg.heal.interval;
        OnUnitActiveSec = cfg.heal.interval;
        Unit = "nixspark-heal.service";
      };
    };

    # Deployments check a new VM's SSH host key against the fingerprints it
    # prints on its serial console. libvirt's console logs are root's (0600);
    # the fingerprints are public, so their latest line per VM is copied to a
    # world-readable place (providers/sshContact.ts reads it when the log is not
    # readable). A loop, not a path unit: a path unit watching the log
    # directory fires on every console write, and its oneshot service then
    # hits systemd's start limit and the path unit gives up for good. The
    # loop only reads a log that changed since its line was published, reads
    # at most its last 8 MiB, and keeps the published line when no newer one
    # is found.
    systemd.services.nixspark-host-keys = {
      description = "Publish the nixspark host key lines of the VMs' console logs";
      wantedBy = [ "multi-user.target" ];
      after = [ "libvirtd.service" ];
      path = [
        pkgs.coreutils
        pkgs.gnugrep
      ];
      serviceConfig = {
        Restart = "always";
        RestartSec = 5;
      };
      script = ''
        out=/run/nixspark/host-keys
        install -d -m 0755 "$out"
        while true; do
          for f in ${cfg.consoleLogDir}/*-console.log; do
            [ -e "$f" ] || continue
            pub="$out/$(basename "$f")"
            [ -e "$pub" ] && [ ! "$f" -nt "$pub" ] && continue
            line=$(tail -c 8388608 "$f" | grep -a 'nixspark-host-keys:' | tail -n 1 || true)
            if [ -n "$line" ]; then
              printf '%s\n' "$line" > "$pub.tmp"
              chmod 0644 "$pub.tmp"
              mv "$pub.tmp" "$pub"
            else
              touch "$pub"
            fi
          done
          sleep ''${NIXSPARK_HOST_KEYS_INTERVAL:-2}
        done
      '';
    };
  };
}
