# What every node has whatever its role, the base image included: the deploy
# user that Pulumi reaches with the stack's SSH key, and what nixos-rebuild
# --target-host needs from it (copying closures in, switching with sudo).
{ config, lib, ... }:
let
  cfg = config.nixspark;
  asRoot = cfg.deployUser == "root";
in
{
  imports = [ ./options.nix ];

  services.openssh = {
    enable = true;
    openFirewall = true;
    settings = {
      PasswordAuthentication = false;
      KbdInteractiveAuthentication = false;
      # Keys only; root only when it is the deploy user.
      PermitRootLogin = if asRoot then "prohibit-password" else "no";
    };
  };

  # Users come from this configuration only; nobody has a password.
  # Deploying as root (nixspark:ssh.user root) only lets the key in: root is
  # nixpkgs' own account, and 24.11 refuses a normal user with uid 0
  # (config/users-groups.nix: exactly one of isSystemUser, isNormalUser).
  users.mutableUsers = false;
  users.users.${cfg.deployUser} =
    if asRoot then
      { openssh.authorizedKeys.keys = cfg.sshKeys; }
    else
      {
        isNormalUser = true;
        description = "nixspark deployments (stack ${cfg.stack})";
        extraGroups = [ "wheel" ];
        openssh.authorizedKeys.keys = cfg.sshKeys;
      };

  # nixos-rebuild --use-remote-sudo (--sudo) runs switch-to-configuration
  # through sudo, without a terminal to type a password into.
  security.sudo.enable = true;
  security.sudo.extraRules = lib.optionals (!asRoot) [
    {
      users = [ cfg.deployUser ];
      commands = [
        {
          command = "ALL";
          options = [ "NOPASSWD" ];
        }
      ];
    }
  ];

  # Closures built on the deploying host are copied in as the deploy user:
  # only trusted users may add unsigned store paths.
  nix.settings = {
    trusted-users = [
      "root"
      cfg.deployUser
    ];
    experimental-features = [
      "nix-command"
      "flakes"
    ];
  };

  networking.firewall.enable = true;

  environment.etc."nixspark-stack".text = "${cfg.stack}\n";

  assertions = [
    {
      assertion = cfg.sshKeys != [ ];
      message = "nixspark: no SSH public key for ${cfg.deployUser}; set nixspark:ssh.publicKey in the stack config";
    }
  ];
}
