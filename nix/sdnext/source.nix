# SD.Next's source at the pinned tag with the built-in extensions the tag records as submodules,
# each at the commit the tag pins; all of it from provision/sdnext_pin.toml, the one file a new
# pin changes (it also holds the tag's model folders and rescans, which provision reads).
#
# The hashes are NAR hashes of GitHub's tarballs, which fetchFromGitHub unpacks. To recompute
# after a bump, with network: `nix flake prefetch github:OWNER/REPO/REV` for each source. Without
# network, from a git snapshot (how these were made, checked against a public flake.lock hash):
#   git -C REPO archive REV | tar -x -C DIR
#   nix hash to-sri --type sha256 "$(nix-hash --type sha256 --base32 DIR)"
# The submodule commits of a tag: `git ls-tree -r TAG | grep ^160000`.
#
# The image's changes to SD.Next's own files are the unified diffs in ./patches, applied in name
# order with `patch -p1` (applyPatches' patchPhase); a patch that no longer applies fails the
# build naming it. The tests (tests/test_sdnext_real.py) and bump.py apply the same files.
#
# fetchFromGitHub: pkgs/build-support/fetchgithub/default.nix; runCommand and applyPatches:
# pkgs/build-support/trivial-builders/default.nix
{
  fetchFromGitHub,
  runCommand,
  applyPatches,
}:
let
  pin = builtins.fromTOML (builtins.readFile ../../provision/sdnext_pin.toml);
  patches = map (name: ./patches + "/${name}") (
    builtins.filter (name: builtins.match ".*\\.patch" name != null) (
      builtins.attrNames (builtins.readDir ./patches)
    )
  );
  sdnext = fetchFromGitHub pin.source;
  patched = applyPatches {
    name = "sdnext-${pin.tag}-patched";
    src = sdnext;
    inherit patches;
  };
  # Only fetchFromGitHub's own arguments: an extension kept at another commit than the tag's
  # also records `tag-rev` and `deviation` (bump.py --nearest), which are for people.
  fetchPinned =
    _: entry:
    fetchFromGitHub {
      inherit (entry)
        owner
        repo
        rev
        hash
        ;
    };
  extensions = builtins.mapAttrs fetchPinned pin.extensions;
in
runCommand "sdnext-source-${pin.tag}" { passthru = { inherit sdnext patched extensions; }; } ''
  cp -r ${patched} $out
  chmod -R u+w $out
  ${builtins.concatStringsSep "\n" (
    builtins.attrValues (
      builtins.mapAttrs (name: src: ''
        rm -rf $out/extensions-builtin/${name}
        cp -r ${src} $out/extensions-builtin/${name}
      '') extensions
    )
  )}
  chmod -R a-w $out
''
