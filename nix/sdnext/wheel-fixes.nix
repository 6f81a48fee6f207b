# Fixes for the CUDA wheels in a Nix-built virtualenv (an overlay on the uv2nix package set).
#
# torch's libraries find the nvidia-* wheels through RPATHs relative to a shared site-packages
# ($ORIGIN/../../nvidia/...). uv2nix builds each wheel into its own store path and the venv only
# links them, so those RPATHs point nowhere: autoPatchelf rewrites them to the real lib dirs.
# libcuda.so.1 comes from the host driver at run time (the NVIDIA runtime mounts it; the image's
# LD_LIBRARY_PATH covers where), so it must not be looked for at build time.
{
  lib,
  pkgs,
}:
final: prev:
let
  # The lib/ folders of the nvidia-* wheels a package links against.
  nvidiaLibDirs =
    names:
    lib.concatMapStringsSep "\n" (name: ''
      for dir in ${final.${name}}/${final.python.sitePackages}/nvidia/*/lib; do
        addAutoPatchelfSearchPath "$dir"
      done
    '') (lib.filter (name: final ? ${name}) names);

  nvidia = [
    "nvidia-cublas-cu12"
    "nvidia-cuda-cupti-cu12"
    "nvidia-cuda-nvrtc-cu12"
    "nvidia-cuda-runtime-cu12"
    "nvidia-cudnn-cu12"
    "nvidia-cufft-cu12"
    "nvidia-cufile-cu12"
    "nvidia-curand-cu12"
    "nvidia-cusolver-cu12"
    "nvidia-cusparse-cu12"
    "nvidia-cusparselt-cu12"
    "nvidia-nccl-cu12"
    "nvidia-nvjitlink-cu12"
    "nvidia-nvshmem-cu12"
    "nvidia-nvtx-cu12"
  ];

  # autoPatchelfHook: pkgs/build-support/setup-hooks/auto-patchelf.sh (addAutoPatchelfSearchPath,
  # autoPatchelfIgnoreMissingDeps).
  patchWith =
    deps: extra: old:
    {
      nativeBuildInputs = (old.nativeBuildInputs or [ ]) ++ [ pkgs.autoPatchelfHook ];
      buildInputs = (old.buildInputs or [ ]) ++ [ pkgs.stdenv.cc.cc.lib ] ++ (extra.buildInputs or [ ]);
      autoPatchelfIgnoreMissingDeps = [ "libcuda.so.1" ] ++ (extra.ignore or [ ]);
      preFixup = (old.preFixup or "") + nvidiaLibDirs deps;
    };
in
lib.optionalAttrs (prev ? torch) {
  torch = prev.torch.overrideAttrs (patchWith nvidia { });
}
// lib.optionalAttrs (prev ? nvidia-cusolver-cu12) {
  nvidia-cusolver-cu12 = prev.nvidia-cusolver-cu12.overrideAttrs (
    patchWith [ "nvidia-cublas-cu12" "nvidia-cusparse-cu12" "nvidia-nvjitlink-cu12" ] { }
  );
}
// lib.optionalAttrs (prev ? nvidia-cusparse-cu12) {
  nvidia-cusparse-cu12 = prev.nvidia-cusparse-cu12.overrideAttrs (
    patchWith [ "nvidia-nvjitlink-cu12" ] { }
  );
}
// lib.optionalAttrs (prev ? nvidia-cufile-cu12) {
  nvidia-cufile-cu12 = prev.nvidia-cufile-cu12.overrideAttrs (
    patchWith [ ] { buildInputs = [ pkgs.rdma-core ]; }
  );
}
// lib.optionalAttrs (prev ? nvidia-nvshmem-cu12) {
  nvidia-nvshmem-cu12 = prev.nvidia-nvshmem-cu12.overrideAttrs (
    patchWith [ ] {
      buildInputs = [ pkgs.rdma-core ];
      # Optional transports of NVSHMEM (MPI, PMIx, UCX) that torch does not load.
      ignore = [
        "libmpi.so.40"
        "libpmix.so.2"
        "libucp.so.0"
        "libucs.so.0"
        "libfabric.so.1"
      ];
    }
  );
}
