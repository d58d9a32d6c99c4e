# An existing machine's own configuration, as a user of nixspark:target
# "hosts" keeps it (docs/targets.md): it imports the machine's hardware module
# and names the machine; the stack adds common.nix and the role.
{ ... }:
{
  imports = [ ./hardware-configuration.nix ];
  networking.hostName = "worker2";
  system.stateVersion = "24.11";
}
