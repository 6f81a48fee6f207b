# The OCI image: `nix build .#image && ./result | docker load` (a stream: nothing big is written
# to the store). streamLayeredImage: pkgs/build-support/docker/default.nix. Its default layering
# (pkgs/build-support/docker/auto-layer.py) gives the largest store paths layers of their own:
# torch and each nvidia-* wheel are store paths of their own under uv2nix, so a new SD.Next pin
# reuses those layers on pull.
{
  lib,
  dockerTools,
  buildEnv,
  runCommand,
  bashInteractive,
  coreutils,
  s6,
  execline,
  caddy,
  filebrowser,
  ttyd,
  logdy,
  gperftools,
  python3,
  provision,
  uv,
  sdnext,
  # The terminal's tools (web terminal and SSH): README "The container" lists them.
  gnugrep,
  gnused,
  gawk,
  findutils,
  diffutils,
  gnutar,
  gzip,
  which,
  gitMinimal,
  curl,
  wget,
  nano,
  vim,
  procps,
  htop,
  less,
  tmux,
  rsync,
  unzip,
  zip,
  jq,
  file,
  openssh,
  nvtopPackages,
}:
let
  settings = import ./settings.nix;

  # nvtop reads NVIDIA GPUs through the driver's libnvidia-ml.so.1, which it dlopens at run time
  # (src/extract_gpuinfo_nvidia.c at 3.2.0; the NVIDIA runtime mounts the library). nixpkgs'
  # build (pkgs/tools/system/nvtop/build-nvtop.nix) still lists cudatoolkit as a build input of
  # the nvidia flavour, which nothing of nvtop's build uses: dropped, so building the image
  # fetches no CUDA toolkit and the closure holds none. (.override: callPackage's; a null build
  # input is accepted by checkDependencyList in pkgs/stdenv/generic/make-derivation.nix.)
  nvtop = nvtopPackages.nvidia.override { cudatoolkit = null; };

  # The terminal's tools. gitMinimal: git without Perl, Python, PCRE2 or the manual
  # (pkgs/top-level/all-packages.nix); clone, commit, push and add -p all work.
  tools = [
    # The basics beside coreutils; the runtime's scripts use find (provision-once) and grep
    # (init's message for an invalid gateway config) too.
    gnugrep
    gnused
    gawk
    findutils
    diffutils
    gnutar
    gzip
    which
    gitMinimal
    curl
    wget
    nano
    vim
    procps
    htop
    less
    tmux
    rsync
    unzip
    zip
    jq
    file
    openssh # ssh, scp, ssh-keygen; sshd for the sshd service
    nvtop
  ];

  # sshd drops privileges to the "sshd" user while it talks to a client that has not logged in
  # yet; fakeNss has only root and nobody. fakeNss.override: pkgs/build-support/fake-nss.
  nss = dockerTools.fakeNss.override {
    extraPasswdLines = [ "sshd:x:74:74:sshd privilege separation:/var/empty:/bin/false" ];
    extraGroupLines = [ "sshd:x:74:" ];
  };

  # nix/runtime as plain files: init, the s6 service dirs, the helper scripts.
  runtime = runCommand "sdnext-runtime" { } ''
    cp -r ${./runtime} $out
    chmod -R u+w $out
    patchShebangs --host $out/init $out/bin
  '';

  # Everything on PATH, merged into /bin. lib.getBin: the binaries of multi-output packages.
  # buildEnv: pkgs/build-support/buildenv/default.nix
  root = buildEnv {
    name = "sdnext-image-root";
    paths =
      map lib.getBin (
        [
          bashInteractive
          coreutils
          s6
          execline
          caddy
          filebrowser
          ttyd
          logdy
          # bin/login-guard runs lib/gateway_server.py (the login guard, its pages and status.json:
          # lib/login_guard.py, gateway_*.py), for the gateway and for init, which hashes the login
          # with it; also the terminal's python3. provision is built with the same interpreter.
          python3
          provision
          uv # provision installs the extensions' packages with it (provision/overlay.py)
          sdnext
        ]
        ++ tools
      )
      ++ [ runtime ];
    pathsToLink = [ "/bin" ];
  };
in
dockerTools.streamLayeredImage {
  name = "sdnext";
  tag = "2026-07-14"; # SD.Next's tag (provision/sdnext_pin.toml)
  contents = [
    root
    dockerTools.binSh # /bin/sh for the s6 run scripts
    dockerTools.usrBinEnv # /usr/bin/env for the #!/usr/bin/env bash scripts
    dockerTools.caCertificates # /etc/ssl/certs/ca-bundle.crt
    nss # /etc/passwd and /etc/group (root, nobody, sshd), /var/empty (sshd's privilege separation)
  ];
  maxLayers = 120;
  # Relative paths: the image root. /tmp world-writable, /run for the runtime dir, root's home.
  extraCommands = ''
    mkdir -p -m 1777 tmp
    mkdir -p run root workspace
  '';
  config = {
    Entrypoint = [ "${runtime}/init" ];
    WorkingDir = settings.env.WORKSPACE;
    ExposedPorts = settings.exposedPorts;
    Volumes = {
      ${settings.env.WORKSPACE} = { };
    };
    Env = [
      # /usr/bin last: the NVIDIA runtime mounts nvidia-smi there.
      "PATH=/bin:${runtime}/bin:/usr/bin"
      "HOME=/root" # fakeNss gives root /var/empty
      "WORKSPACE=${settings.env.WORKSPACE}"
      "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt"
      "TCMALLOC_LIB=${lib.getLib gperftools}/lib/libtcmalloc_minimal.so"
      "HF_HOME=${settings.env.WORKSPACE}/.cache/huggingface"
      # Nix's glibc ignores ld.so.cache: point it at where the NVIDIA runtime mounts the host's
      # driver libraries (libcuda.so.1 and friends) for non-Debian and Debian-style images.
      "LD_LIBRARY_PATH=/usr/lib64:/usr/lib/x86_64-linux-gnu:/usr/local/nvidia/lib64"
      "NVIDIA_VISIBLE_DEVICES=all"
      "NVIDIA_DRIVER_CAPABILITIES=compute,utility"
    ];
  };
}
