# Fixes for SD.Next's environment, as an overlay on the uv2nix package set, read from
# build-fixes.toml: the same data nix/sdnext/buildcheck.py checks against uv.lock and the wheels
# in the test run (that file says what each kind of fix is for).
#
# resolveBuildSystem: pyproject.nix build/packages.nix (a spec { setuptools = [ ]; } -> derivations).
# autoPatchelfHook: pkgs/build-support/setup-hooks/auto-patchelf.sh (addAutoPatchelfSearchPath,
# autoPatchelfIgnoreMissingDeps, appendRunpaths); uv2nix adds the hook to every wheel on Linux.
{
  lib,
  pkgs,
}:
final: prev:
let
  fixes = builtins.fromTOML (builtins.readFile ./build-fixes.toml);
  inherit (final.python) sitePackages;

  nixpkgsLibrary = attribute: lib.getLib (lib.getAttrFromPath (lib.splitString "." attribute) pkgs);

  withBuildSystem =
    name: backends:
    prev.${name}.overrideAttrs (old: {
      nativeBuildInputs =
        (old.nativeBuildInputs or [ ]) ++ final.resolveBuildSystem (lib.genAttrs backends (_: [ ]));
    });

  withLibraryFixes =
    name: fix:
    prev.${name}.overrideAttrs (old: {
      buildInputs = (old.buildInputs or [ ]) ++ map nixpkgsLibrary (fix.libraries or [ ]);
      autoPatchelfIgnoreMissingDeps =
        (old.autoPatchelfIgnoreMissingDeps or [ ]) ++ builtins.attrNames (fix.ignore or { });
      appendRunpaths = (old.appendRunpaths or [ ]) ++ lib.optional (fix ? keep-origin) "$ORIGIN";
      # preFixup runs before the postFixup hook in which autoPatchelf patches.
      preFixup =
        (old.preFixup or "")
        + lib.concatStrings (
          lib.mapAttrsToList (
            wheel: folders:
            lib.concatMapStrings (folder: ''
              addAutoPatchelfSearchPath ${final.${wheel}}/${sitePackages}/${folder}
            '') folders
          ) (fix.search or { })
        );
    });
in
lib.mapAttrs withBuildSystem fixes.build-system // lib.mapAttrs withLibraryFixes fixes.wheel
