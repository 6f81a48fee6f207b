# `nix develop`: Python with the project's and the tests' dependencies, and the tools the tests
# run (s6, execline, Caddy, shellcheck, uv). mkShell: pkgs/build-support/mkshell/default.nix
{
  mkShell,
  python3,
  s6,
  execline,
  caddy,
  shellcheck,
  uv,
  ruff,
}:
mkShell {
  packages = [
    (python3.withPackages (ps: [
      ps.requests
      ps.tqdm
      ps.huggingface-hub
      ps.gdown
      ps.pytest
    ]))
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
