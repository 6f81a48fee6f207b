# The provisioning tool, built from the top-level pyproject.toml with nixpkgs' Python packages.
# buildPythonApplication: pkgs/development/interpreters/python/python-packages-base.nix
# (mk-python-derivation.nix; `pyproject`, `build-system`, `dependencies` as documented there).
{
  lib,
  python3Packages,
}:
python3Packages.buildPythonApplication {
  pname = "provision";
  version = "0.1.0";
  pyproject = true;

  # Only what the package needs, so a change to the tests or Nix files does not rebuild it.
  # lib.fileset: lib/fileset/default.nix
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../provision
    ];
  };

  build-system = [ python3Packages.setuptools ];
  dependencies = with python3Packages; [
    requests
    huggingface-hub
    gdown
    packaging
  ];
  # The version floors in pyproject.toml follow PyPI; whatever nixpkgs ships is tested by checks.
  pythonRelaxDeps = true;
  pythonImportsCheck = [ "provision" ];
  doCheck = false; # the suite runs in checks.pytest, with the runtime tools it needs

  meta = {
    description = "Download the models listed in a TOML file into the folders SD.Next reads";
    mainProgram = "provision";
  };
}
