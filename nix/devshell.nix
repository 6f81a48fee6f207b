# `nix develop`: Python with the project's and the tests' dependencies, the tools the tests
# run (s6, execline, Caddy, shellcheck, uv), and `provision` / `sdnext-refresh` running the
# source tree. mkShell: pkgs/build-support/mkshell/default.nix; writeShellScriptBin:
# pkgs/build-support/trivial-builders/default.nix
{
  mkShell,
  writeShellScriptBin,
  python3,
  s6,
  execline,
  caddy,
  shellcheck,
  uv,
  ruff,
}:
let
  python = python3.withPackages (import ./test-python.nix);
in
mkShell {
  packages = [
    python
    # The commands the package installs, from the working tree (PYTHONPATH below): edits apply at once.
    (writeShellScriptBin "provision" ''exec ${python}/bin/python -m provision "$@"'')
    (writeShellScriptBin "sdnext-refresh" ''exec ${python}/bin/python -m provision.sdnext "$@"'')
    ruff
    uv
    s6
    execline
    caddy
    shellcheck
  ];
  # The package itself comes from the source tree; nothing printed on entry.
  shellHook = ''
    export PYTHONPATH="$PWD''${PYTHONPATH:+:$PYTHONPATH}"
  '';
}
