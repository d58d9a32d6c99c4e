# A stack's parameters (lib/params.nix) as a NixOS module that sets the
# `nixspark.*` options (modules/options.nix). Pure: a plain attribute set,
# so the test suite checks it with nix-instantiate as well.
params: {
  nixspark = {
    inherit (params) stack deployUser sshKeys daemonMemoryMiB sparkSettings pythonPackages;
    clusterCidr = params.network.cidr;
    network.mode = params.network.mode;
    master = {
      address = params.master.ip;
      inherit (params.master) hostname;
      port = params.ports.master;
      webUiPort = params.ports.masterWebUi;
    };
    worker = {
      inherit (params.worker) cores;
      memoryMiB = params.worker.sparkMemoryMiB;
      port = params.ports.worker;
      webUiPort = params.ports.workerWebUi;
    };
    firewall = {
      inherit (params.firewall) tcpPorts tcpPortRanges nodeRange gateway;
    };
    security = {
      inherit (params.security) authenticate ioEncryption;
    };
  } // (if params.data == null then { } else { data = { inherit (params.data) tag mountPoint readOnly; }; });
}
