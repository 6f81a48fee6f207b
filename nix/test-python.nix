# The Python packages the provisioning tool and its tests use, for `python3.withPackages`: one
# list, so `nix develop` can run every test `nix flake check` runs (nix/checks.nix).
ps: [
  ps.requests
  ps.huggingface-hub
  ps.gdown
  ps.packaging # requirements and versions of extensions (provision/overlay.py)
  ps.pytest
  ps.pyelftools # reads the ELF files of a test wheel like nix/sdnext/wheel_manifest.py
  ps.pyte # renders provision's terminal output in tests/test_terminal.py
  ps.jsonschema # checks the examples against schema/models.schema.json
  ps.pyyaml # reads the rendered Kubernetes manifests in tests/test_kubernetes.py
]
