# SD.Next's source at tag 2026-01-22 with the built-in extensions the tag records as submodules,
# each at the commit the tag pins. (The wiki submodule is left out: documentation only.)
#
# The hashes are NAR hashes of GitHub's tarballs, which fetchFromGitHub unpacks. To recompute
# after a bump, with network: `nix flake prefetch github:OWNER/REPO/REV` for each source. Without
# network, from a git snapshot (how these were made, checked against a public flake.lock hash):
#   git -C REPO archive REV | tar -x -C DIR
#   nix hash to-sri --type sha256 "$(nix-hash --type sha256 --base32 DIR)"
# The submodule commits of a tag: `git ls-tree -r TAG | grep ^160000`.
#
# fetchFromGitHub: pkgs/build-support/fetchgithub/default.nix; runCommand: pkgs/build-support/trivial-builders
{
  fetchFromGitHub,
  runCommand,
}:
let
  sdnext = fetchFromGitHub {
    owner = "vladmandic";
    repo = "sdnext";
    rev = "2026-01-22";
    hash = "sha256-N8l6PMTyRFC8kaJXoFn7fzz7Wb2fc8GSdraLY6588L0=";
  };
  extensions = {
    sd-extension-system-info = fetchFromGitHub {
      owner = "vladmandic";
      repo = "sd-extension-system-info";
      rev = "9942ea11aa7f23e8ad70ab81a4b411aae333081f";
      hash = "sha256-+6iDvHBP5J0LuzQcb4c90U25xqoD5cxzpvqvckZoNRs=";
    };
    sd-extension-chainner = fetchFromGitHub {
      owner = "vladmandic";
      repo = "sd-extension-chainner";
      rev = "2a7005fbcf8985644b66121365fa7228a65f34b0";
      hash = "sha256-43JXeWuZrYeuHH56sLEECKTwMDoIA8c6gT92d8tgZys=";
    };
    stable-diffusion-webui-rembg = fetchFromGitHub {
      owner = "vladmandic";
      repo = "sd-extension-rembg";
      rev = "3ec8f9eb796be519a98de985bac03645d0040ede";
      hash = "sha256-KLJRFRVWcCR+X2I8L8hjpUFxAvkqxjRfOZJPk3/2Qk0=";
    };
    sdnext-modernui = fetchFromGitHub {
      owner = "BinaryQuantumSoul";
      repo = "sdnext-modernui";
      rev = "f8cb233f39e406befe70f2130f626bfa413e641a";
      hash = "sha256-DGR+srnj8nbZSibcbtcVDf4PcBYG/0BkQwvPFQ6KsV0=";
    };
    sdnext-kanvas = fetchFromGitHub {
      owner = "vladmandic";
      repo = "sdnext-kanvas";
      rev = "79cae1944646e57cfbfb126a971a04e44e45d776";
      hash = "sha256-yXZnKWmIP5oCgtFLQ7O9XRUEAaZn6MLBHMEL5mYCm7Q=";
    };
  };
in
runCommand "sdnext-source-2026-01-22" { passthru = { inherit sdnext extensions; }; } ''
  cp -r ${sdnext} $out
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
