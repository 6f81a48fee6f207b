# SD.Next: the source pin, its Python environment from uv.lock (uv2nix), and `sdnext-launch`.
#
# uv2nix glue as in its hello-world template: loadWorkspace -> mkPyprojectOverlay ->
# pyproject-nix.build.packages + pyproject-build-systems.overlays.wheel -> mkVirtualEnv.
{
  lib,
  pkgs,
  python312,
  makeWrapper,
  runCommand,
  uv2nix,
  pyproject-nix,
  pyproject-build-systems,
}:
let
  source = pkgs.callPackage ./source.nix { };
  pin = builtins.fromTOML (builtins.readFile ../../provision/sdnext_pin.toml);

  workspace = uv2nix.lib.workspace.loadWorkspace { workspaceRoot = ./.; };
  lockOverlay = workspace.mkPyprojectOverlay { sourcePreference = "wheel"; };

  pythonSet =
    (pkgs.callPackage pyproject-nix.build.packages { python = python312; }).overrideScope
      (
        lib.composeManyExtensions [
          pyproject-build-systems.overlays.wheel
          lockOverlay
          (import ./wheel-fixes.nix { inherit lib pkgs; })
        ]
      );

  # The project is virtual (tool.uv.package = false): its dependencies are the environment.
  env = pythonSet.mkVirtualEnv "sdnext-env" workspace.deps.default;

  # Wheels built for manylinux expect libstdc++ and zlib from the system; the image has none.
  runtimeLibs = lib.makeLibraryPath [
    pkgs.stdenv.cc.cc.lib
    pkgs.zlib
  ];

  # On a GPU, triton builds a small C launcher before its first kernel (CC, else gcc on PATH:
  # triton/runtime/build.py), and SD.Next's SDNQ compiles its dequantization with it; the
  # README's "Kernels compiled at run time" says why and what it costs. gcc is nixpkgs' wrapped
  # compiler (pkgs/build-support/cc-wrapper); binutils gives it `as` and `ld` on PATH.
  compilerPath = lib.makeBinPath [
    pkgs.gcc
    pkgs.binutils
  ];
in
runCommand "sdnext-${pin.tag}"
  {
    nativeBuildInputs = [ makeWrapper ];
    passthru = { inherit env source pythonSet; };
    meta.mainProgram = "sdnext-launch"; # and `selftest`
  }
  ''
    mkdir -p $out/bin $out/share/sdnext
    cp ${./sdnext_launch.py} $out/share/sdnext/sdnext_launch.py
    # What puts the extensions' packages after the image's on sys.path (sdnext_launch.py).
    cp -r ${./overlay_site} $out/share/sdnext/overlay_site
    # selftest reads the ignored libraries (and why) from the build's own fixes.
    cp ${./selftest.py} $out/share/sdnext/selftest.py
    cp ${./build-fixes.toml} $out/share/sdnext/build-fixes.toml
    # makeWrapper: pkgs/build-support/setup-hooks/make-wrapper.sh
    makeWrapper ${env}/bin/python $out/bin/sdnext-launch \
      --add-flags $out/share/sdnext/sdnext_launch.py \
      --set-default SDNEXT_SRC ${source} \
      --suffix LD_LIBRARY_PATH : ${runtimeLibs} \
      --suffix PATH : ${compilerPath} \
      --set-default CC ${pkgs.gcc}/bin/gcc
    # SD.Next's own interpreter: provision checks extensions' requirements against its packages
    # (provision/overlay.py), and a user in the terminal can import what SD.Next imports.
    makeWrapper ${env}/bin/python $out/bin/sdnext-python \
      --suffix LD_LIBRARY_PATH : ${runtimeLibs}
    makeWrapper ${env}/bin/python $out/bin/selftest \
      --add-flags $out/share/sdnext/selftest.py \
      --suffix LD_LIBRARY_PATH : ${runtimeLibs} \
      --suffix PATH : ${compilerPath} \
      --set-default CC ${pkgs.gcc}/bin/gcc
  ''
