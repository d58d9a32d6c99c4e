{
  description = "nixspark: NixOS roles, base image and a multi-VM test for Apache Spark standalone clusters";

  # A stable NixOS release; the exact revision is in flake.lock.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs =
    { self, nixpkgs }:
    let
      system = "x86_64-linux";
      inherit (nixpkgs) lib;
      pkgs = nixpkgs.legacyPackages.${system};

      # Every stack the Pulumi program wrote settings for (stacks/<stack>.json;
      # the program references this flake as `path:./nix` so that these
      # untracked files are seen), as parameters from lib/params.nix.
      stacks = import ./lib/stacks.nix { stacksDir = ./stacks; };
      paramsModule = import ./lib/params-module.nix;

      roles = {
        spark-master = ./modules/master.nix;
        spark-worker = ./modules/worker.nix;
      };

      # A node of a libvirt stack: the VM layout, the deploy user, one role.
      nodeSystem =
        params: role:
        lib.nixosSystem {
          inherit system;
          modules = [
            ./modules/guest.nix
            ./modules/common.nix
            role
            (paramsModule params)
          ];
        };

      # A machine of a "hosts" stack (docs/targets.md): the machine's own
      # configuration module (a path inside this flake; it says how the
      # machine boots: its hardware-configuration.nix, boot loader, disks)
      # plus the deploy user and one role. Never guest.nix or image.nix: a
      # switch must not change how the machine boots.
      machineModule = host: ./. + "/${host.module}";
      hostSystem =
        params: host:
        lib.nixosSystem {
          inherit system;
          modules = [
            (machineModule host)
            ./modules/common.nix
            (if host.role == "master" then roles.spark-master else roles.spark-worker)
            (paramsModule (
              params
              // {
                deployUser = host.sshUser;
                # What this worker offers Spark; null: Spark's own default ("auto").
                worker = params.worker // {
                  inherit (host) cores;
                  sparkMemoryMiB = host.memoryMiB;
                };
              }
            ))
          ];
        };
      # The machine without the role: its own module alone, what it is
      # switched to when it leaves the stack's list.
      releasedSystem =
        host:
        lib.nixosSystem {
          inherit system;
          modules = [ (machineModule host) ];
        };
      hostsOf = params: lib.listToAttrs (map (h: lib.nameValuePair h.name h) params.hosts);

      imageSystem =
        params:
        lib.nixosSystem {
          inherit system;
          modules = [
            ./modules/image.nix
            (paramsModule params)
          ];
        };

      perStack = f: lib.concatMapAttrs f stacks;

      # Versions of what a node runs (Spark, its JDK, the job Python and each
      # of its packages, the kernel), read from the evaluated system.
      packageSummary =
        params: node:
        let
          spark = node.config.services.spark.package;
          python = node.pkgs.python3;
        in
        {
          spark = spark.version;
          jdk = spark.jdk.version;
          python = python.version;
          pythonPackages = lib.genAttrs params.pythonPackages (name: python.pkgs.${name}.version);
          kernel = node.config.boot.kernelPackages.kernel.version;
        };
    in
    {
      lib = {
        params = import ./lib/params.nix;
        inherit stacks;

        # Everything the Pulumi program needs from one stack, so that one
        # `nix eval --json <flake>#lib.stackEvaluations.<stack>` evaluates it
        # all at once (NixOS evaluation takes seconds; one process shares the
        # work of nixpkgs and the module system between image and roles).
        stackEvaluations = perStack (
          name: params: {
            "${name}" = {
              baseImage.drvPath = self.packages.${system}."${name}-base-image".drvPath;
              systems = {
                master = self.nixosConfigurations."${name}-master".config.system.build.toplevel.outPath;
                worker = self.nixosConfigurations."${name}-worker".config.system.build.toplevel.outPath;
              };
              # What each role runs, by version: what `pulumi preview` shows
              # moving before anything is built.
              packages = {
                master = packageSummary params self.nixosConfigurations."${name}-master";
                worker = packageSummary params self.nixosConfigurations."${name}-worker";
              };
              # The store copy of this flake that this evaluation read.
              # Deployments switch from it, so what is applied is what was
              # evaluated: an edit under nix/ after the program ran moves nothing.
              source = builtins.unsafeDiscardStringContext self.outPath;
              # The roles alone (a stack whose image is not built from here).
              roles = {
                inherit (self.lib.stackEvaluations.${name}) systems packages source;
              };
              # Target "hosts": per machine, its role system, its system
              # without the role, and what the role system runs.
              hosts = {
                machines = lib.mapAttrs (hostName: host: {
                  system = self.nixosConfigurations."${name}-host-${hostName}".config.system.build.toplevel.outPath;
                  released = self.nixosConfigurations."${name}-host-${hostName}-released".config.system.build.toplevel.outPath;
                  packages = packageSummary params self.nixosConfigurations."${name}-host-${hostName}";
                }) (hostsOf params);
                inherit (self.lib.stackEvaluations.${name}) source;
              };
            };
          }
        );
      };

      nixosModules = roles // {
        # For the machine that runs the VMs: libvirtd, firewall, Nix (modules/host.nix).
        host = ./modules/host.nix;
        options = ./modules/options.nix;
        guest = ./modules/guest.nix;
        common = ./modules/common.nix;
        image = ./modules/image.nix;
        spark = ./modules/spark.nix;
      };

      # "<stack>-master" and "<stack>-worker" (one configuration for all
      # workers of a stack) are what NixosDeployment switches the VMs to;
      # "<stack>-base" is the image's system. spark-master / spark-worker are
      # the example stack's, for trying the roles out.
      nixosConfigurations =
        perStack (
          name: params: {
            "${name}-master" = nodeSystem params roles.spark-master;
            "${name}-worker" = nodeSystem params roles.spark-worker;
            "${name}-base" = imageSystem params;
          }
          # Target "hosts": "<stack>-host-<machine>" (machine module + role) and
          # "<stack>-host-<machine>-released" (the machine module alone).
          // lib.concatMapAttrs (hostName: host: {
            "${name}-host-${hostName}" = hostSystem params host;
            "${name}-host-${hostName}-released" = releasedSystem host;
          }) (hostsOf params)
        )
        // lib.optionalAttrs (stacks ? example) {
          spark-master = self.nixosConfigurations.example-master;
          spark-worker = self.nixosConfigurations.example-worker;
        };

      packages.${system} =
        perStack (
          name: _: { "${name}-base-image" = self.nixosConfigurations."${name}-base".config.system.build.qcow2; }
        )
        // lib.optionalAttrs (stacks ? example) { base-image = self.packages.${system}.example-base-image; };

      checks.${system}.spark-cluster = import ./tests/spark-cluster.nix {
        inherit pkgs roles;
        stackJson = builtins.fromJSON (builtins.readFile ./stacks/example.json);
      };

      devShells.${system}.default = pkgs.mkShell {
        packages = [
          pkgs.nodejs
          pkgs.pulumi-bin
          pkgs.libvirt
          pkgs.qemu-utils
        ];
      };
    };
}
