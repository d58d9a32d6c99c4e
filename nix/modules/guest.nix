# The libvirt/KVM virtual machine every node is: what the base image boots
# and what every role configuration keeps, so that `nixos-rebuild switch`
# onto a running VM never changes how it boots.
{
  config,
  lib,
  pkgs,
  modulesPath,
  ...
}:
let
  data = config.nixspark.data;
  bridgeMode = config.nixspark.network.mode == "bridge";
in
{
  imports = [ (modulesPath + "/profiles/qemu-guest.nix") ];

  # virtio disk and network in the initrd (the profile adds virtio_pci,
  # virtio_blk, virtio_net, virtio_scsi; listed here too so that the image
  # does not depend on what the profile happens to hold).
  boot.initrd.availableKernelModules = [
    "virtio_pci"
    "virtio_blk"
    "virtio_net"
    "virtio_scsi"
  ];

  # BIOS boot from the first virtio disk; make-disk-image's "legacy" layout
  # (MBR, one ext4 partition labelled "nixos").
  boot.loader.grub.enable = true;
  boot.loader.grub.device = "/dev/vda";
  boot.loader.timeout = 1;
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
    # The overlay volume is larger than the image: grow partition and
    # filesystem to the volume's size on first boot.
    autoResize = true;
  };
  boot.growPartition = true;

  # The shared data directory (nixspark:data): the VM's virtiofs device,
  # mounted by its tag (nixos-24.11 nixos/modules/tasks/filesystems.nix: an
  # fstab line; `mount -t virtiofs` loads the virtiofs module on demand, and
  # no module of 24.11 handles fsType virtiofs beyond that). nofail: a VM
  # restarted without the device (data removed: the restart comes before
  # the switch) still boots and stays reachable. Mounted before tmpfiles
  # runs, which makes the event-log directory under it (spark.nix).
  fileSystems.${data.mountPoint} = lib.mkIf (data.tag != null) {
    device = data.tag;
    fsType = "virtiofs";
    options = [
      (if data.readOnly then "ro" else "rw")
      "nofail"
      "x-systemd.before=systemd-tmpfiles-setup.service"
      "x-systemd.before=systemd-tmpfiles-resetup.service"
    ];
    # Nothing to check: no block device behind it.
    noCheck = true;
  };

  # Serial console: libvirt logs it, `virsh console` attaches to it. The last
  # console= is /dev/console, so boot messages reach the serial port.
  boot.kernelParams = [
    "console=tty0"
    "console=ttyS0,115200n8"
  ];
  boot.loader.grub.extraConfig = ''
    serial --unit=0 --speed=115200
    terminal_input serial console
    terminal_output serial console
  '';

  # In nat mode the address comes from libvirt's DHCP (a reservation per
  # node), so that every worker can share one configuration. The host name
  # does not: on nixos-24.11 dhcpcd runs unprivileged (ProtectHostname) and
  # cannot set it. Instead libvirt hands each VM its name as the systemd
  # credential `system.hostname` (an SMBIOS OEM string in the domain XML, see
  # providers/libvirtXml.ts), which systemd (>= 254) sets at boot when there
  # is no /etc/hostname, and an empty hostName writes none.
  networking.hostName = "";
  # In bridge mode (nixspark.network.mode) there is no DHCP server on the
  # segment we may rely on, and a LAN's own would add a second address: no
  # DHCP client at all (nixos-24.11 services/networking/dhcpcd.nix runs
  # dhcpcd only when networking.useDHCP or an interface's useDHCP is set).
  networking.useDHCP = !bridgeMode;

  # Bridge mode: the node's address arrives like its host name, as a system
  # credential from the domain's SMBIOS OEM strings
  # (`io.systemd.credential:nixspark.network=MAC ADDRESS/PREFIX[ GATEWAY]`,
  # providers/libvirtXml.ts networkCredential). systemd (PID 1, since 252)
  # imports such strings into the system credentials at boot;
  # ImportCredential= (systemd.exec(5), since 254; 24.11 has 256) copies
  # this one into the unit's $CREDENTIALS_DIRECTORY. The unit waits for the
  # interface with that MAC (bounded: NIXSPARK_INTERFACE_WAIT_SECONDS) and
  # for udev to have named it, brings it up, sets the address and,
  # when given, the default route, before network.target and
  # network-online.target (which the Spark daemons wait for). Oneshot with
  # RemainAfterExit: a switch that leaves the unit alone does not run it again.
  systemd.services.nixspark-address = lib.mkIf bridgeMode {
    description = "Static address from the nixspark.network credential";
    wantedBy = [
      "multi-user.target"
      "network-online.target"
    ];
    wants = [ "network.target" ];
    before = [
      "network.target"
      "network-online.target"
    ];
    path = [ pkgs.iproute2 ];
    environment.NIXSPARK_INTERFACE_WAIT_SECONDS = "60";
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
      ImportCredential = "nixspark.network";
    };
    script = ''
      say() { echo "nixspark-address: $*" >&2; }
      cred="''${CREDENTIALS_DIRECTORY:-/nonexistent}/nixspark.network"
      if [ ! -r "$cred" ]; then
        say "no credential nixspark.network: the domain must carry the SMBIOS OEM string io.systemd.credential:nixspark.network=MAC ADDRESS/PREFIX[ GATEWAY] (nixspark:network.mode bridge); this node has no address"
        exit 1
      fi
      text=$(cat "$cred")
      read -r mac address gateway rest <<< "$text" || true
      octet='(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])'
      ip4="$octet\.$octet\.$octet\.$octet"
      if ! [[ "$mac" =~ ^([0-9a-f]{2}:){5}[0-9a-f]{2}$ && "$address" =~ ^$ip4/([8-9]|[12][0-9]|30)$ && ( -z "$gateway" || "$gateway" =~ ^$ip4$ ) && -z "$rest" ]]; then
        say "credential nixspark.network is \"$text\", not \"MAC ADDRESS/PREFIX[ GATEWAY]\" (e.g. 52:54:00:12:34:56 10.77.0.11/24 10.77.0.1)"
        exit 1
      fi
      # The interface with that MAC, once udev has processed it (and so
      # given it its final name: udev cannot rename an interface that is up).
      # udev's database entry for a network interface is
      # /run/udev/data/n<ifindex>, and it is written for every interface once
      # its event is processed: what sd-device calls "initialized".
      dev=""
      pending=""
      deadline=$(( $(date +%s) + NIXSPARK_INTERFACE_WAIT_SECONDS ))
      while [ -z "$dev" ]; do
        for f in /sys/class/net/*/address; do
          if [ -r "$f" ] && [ "$(cat "$f")" = "$mac" ]; then
            d=$(basename "$(dirname "$f")")
            if [ -e "/run/udev/data/n$(cat "/sys/class/net/$d/ifindex")" ]; then
              dev=$d
              break
            fi
            pending=$d
          fi
        done
        if [ -z "$dev" ]; then
          if [ "$(date +%s)" -ge "$deadline" ]; then
            if [ -n "$pending" ]; then
              say "interface $pending has MAC $mac but udev has not processed it after $NIXSPARK_INTERFACE_WAIT_SECONDS s"
            else
              say "no interface with MAC $mac after $NIXSPARK_INTERFACE_WAIT_SECONDS s (interfaces: $(ls /sys/class/net | tr '\n' ' '))"
            fi
            exit 1
          fi
          sleep 0.5
        fi
      done
      ip link set dev "$dev" up
      ip address replace "$address" dev "$dev"
      if [ -n "$gateway" ]; then
        ip route replace default via "$gateway" dev "$dev"
      fi
      say "$dev ($mac): $address''${gateway:+, default route via $gateway}"
    '';
  };

  # Every domain has an i6300esb watchdog with action "reset" and a pvpanic
  # device with on_crash "restart" (providers/libvirtXml.ts). systemd, PID 1,
  # pets the watchdog (RuntimeWatchdogSec in system.conf): a guest whose PID 1
  # hangs for a minute is reset by the device. The driver is loaded early, by
  # name; pvpanic's driver loads by its ACPI id, and a panic then reaches
  # libvirt, which restarts the VM.
  boot.kernelModules = [ "i6300esb" ];
  systemd.watchdog.runtimeTime = "60s";

  # The SSH host key fingerprints on the serial console at every boot: the
  # deployment reads them from the console log libvirt writes on the host
  # (no machine on the network can write there) and pins the key that
  # answers at the node's address only if it is one of these
  # (providers/sshContact.ts, verifiedFirstContact). sshd makes its host keys before
  # it starts.
  systemd.services.nixspark-host-keys = {
    description = "Print the SSH host key fingerprints to the serial console";
    wantedBy = [ "multi-user.target" ];
    after = [ "sshd.service" ];
    wants = [ "sshd.service" ];
    path = [ pkgs.openssh ];
    serviceConfig.Type = "oneshot";
    script = ''
      fps=""
      for f in /etc/ssh/ssh_host_*_key.pub; do
        set -- $(ssh-keygen -l -E sha256 -f "$f")
        fps="$fps $2"
      done
      echo "nixspark-host-keys:$fps" > /dev/ttyS0
    '';
  };

  services.qemuGuest.enable = true;

  # No documentation or channel on cluster nodes: smaller closures to copy.
  documentation.enable = lib.mkDefault false;
  nix.channel.enable = false;

  system.stateVersion = "24.11";
}
