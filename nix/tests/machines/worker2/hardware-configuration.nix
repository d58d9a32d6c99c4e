# A stand-in for what nixos-generate-config writes on a real machine: its
# disk, boot loader and the initrd's disk drivers. (In the NixOS test VM,
# qemu-vm.nix replaces the disk and boot loader with mkVMOverride.)
{ ... }:
{
  boot.initrd.availableKernelModules = [
    "ahci"
    "sd_mod"
  ];
  boot.loader.grub.device = "/dev/sda";
  fileSystems."/" = {
    device = "/dev/disk/by-uuid/0b5e2d1a-7c44-4f0e-9a57-3d2f6c1e8b90";
    fsType = "ext4";
  };
}
