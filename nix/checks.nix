# `nix flake check`: the pytest suite (runtime tests under real s6 and Caddy, in the sandbox,
# loopback only), ruff, shellcheck over nix/runtime, and the settings staying pure data.
# runCommand: pkgs/build-support/trivial-builders/default.nix
{
  lib,
  runCommand,
  python3,
  s6,
  execline,
  caddy,
  shellcheck,
  tinyproxy,
  git,
  ruff,
  bashInteractive,
  coreutils,
  util-linux, # unshare, nsenter, mount: the full-disk test's own small filesystem
  provision, # init runs `provision --list-folders`; the provision service runs it for real
}:
let
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../provision
      ../tests
      ../examples
      ../nix
      ../bench
      ../.github # tests/test_workflow.py reads the workflow
      ../schema
      ../deploy # tests/test_kubernetes.py and test_skypilot.py read it
    ];
  };
  python = python3.withPackages (import ./test-python.nix);
in
{
  pytest =
    runCommand "sdnext-pytest"
      {
        nativeBuildInputs = [
          python
          s6
          execline
          caddy
          shellcheck
          tinyproxy
          git
          bashInteractive
          coreutils
          util-linux
          provision
        ];
      }
      ''
        cp -r ${src} source && chmod -R u+w source && cd source
        patchShebangs nix/runtime tests/standins
        export HOME=$TMPDIR PYTHONPATH=$PWD
        # uv and PyPI are out of reach in the sandbox: the lock check skips itself here
        python -m pytest -q -p no:cacheprovider tests
        touch $out
      '';

  # --no-cache: the source is read-only in the store.
  ruff = runCommand "sdnext-ruff" { nativeBuildInputs = [ ruff ]; } ''
    cd ${src} && ruff check --no-cache . && ruff format --no-cache --check . && touch $out
  '';

  shellcheck = runCommand "sdnext-shellcheck" { nativeBuildInputs = [ shellcheck ]; } ''
    cd ${src}/nix/runtime
    shellcheck -x init bin/* services/*/run services/*/finish services/*/log/run
    touch $out
  '';

  settings =
    let
      settings = import ./settings.nix;
    in
    assert builtins.length settings.ports == 4;
    assert settings.env.WORKSPACE == "/workspace";
    runCommand "sdnext-settings" { } "touch $out";
}
