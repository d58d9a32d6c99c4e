# The base image: one qcow2 that every node of a stack boots. Role-agnostic
# on purpose (no Spark): master and worker are applied afterwards by
# nixos-rebuild, so a Spark or package change never rebuilds the image and
# never replaces a VM. It carries only the VM layout (guest.nix) and the
# deploy user with the stack's key (common.nix).
{
  config,
  lib,
  pkgs,
  modulesPath,
  ...
}:
{
  imports = [
    ./guest.nix
    ./common.nix
  ];

  system.build.qcow2 = import (modulesPath + "/../lib/make-disk-image.nix") {
    inherit lib config pkgs;
    name = "nixspark-${config.nixspark.stack}-base-image";
    format = "qcow2";
    # MBR with one ext4 partition labelled "nixos": what guest.nix mounts
    # and what boot.growPartition knows how to grow.
    partitionTableType = "legacy";
    diskSize = "auto";
    additionalSpace = "1024M";
    # No channel: the nodes are managed from the flake, and a channel would
    # change the image whenever nixpkgs' sources change.
    copyChannel = false;
  };
}
