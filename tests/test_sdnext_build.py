"""The Nix build of SD.Next's environment, emulated offline (nix/sdnext/buildcheck.py): every
source build has a backend, every library a wheel needs is found or ignored with a reason, no two
wheels install one path with different bytes, and libraries that load siblings by name keep
$ORIGIN. Then the negative cases, so none of those checks can pass by not looking, and the Nix
overlay evaluated over the same data."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO, which
from .test_nix import evaluate

SDNEXT = REPO / "nix" / "sdnext"
sys.path.insert(0, str(SDNEXT))

import buildcheck  # noqa: E402
import lockwheels  # noqa: E402


@pytest.fixture(scope="module")
def locked():
    return lockwheels.read_lock()


@pytest.fixture(scope="module")
def manifest():
    return buildcheck.read_manifest()


def test_the_emulated_build_finds_nothing():
    report = buildcheck.check()
    assert report.problems == []
    # The scan really ran over the CUDA wheels: torch's own needs went through the search paths.
    assert report.elf_files > 550 and report.wheels > 240
    assert report.rules["search path into nvidia-cudnn-cu12"] >= 1
    assert report.rules["nixpkgs zlib"] >= 10


def test_the_command_line_prints_totals_and_exits_0():
    result = subprocess.run(
        [sys.executable, str(SDNEXT / "buildcheck.py")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout
    assert re.search(r"^\d+ wheels, \d+ ELF files patched by autoPatchelf$", result.stdout, re.M)
    assert result.stdout.rstrip().endswith("0 problems")


def test_exactly_the_source_builds_have_a_build_system(locked):
    from_source = sorted(p.name for p in locked if p.built_from_source)
    assert from_source == ["antlr4-python3-runtime", "noise"]  # diffusers: a PyPI wheel now
    assert sorted(buildcheck.read_fixes().build_systems) == from_source


def write_fixes(tmp_path: Path, edit) -> Path:
    text = edit((SDNEXT / "build-fixes.toml").read_text())
    path = tmp_path / "build-fixes.toml"
    path.write_text(text)
    return path


def test_a_source_build_without_a_backend_is_named(tmp_path):
    fixes = write_fixes(tmp_path, lambda t: t.replace('noise = ["setuptools", "wheel"]', ""))
    report = buildcheck.check(fixes_path=fixes)
    assert len(report.problems) == 1
    assert report.problems[0].startswith("noise is built from source")
    assert '`noise = ["setuptools", "wheel"]`' in report.problems[0]


def test_a_library_nobody_provides_fails_and_names_file_library_and_fix(tmp_path):
    fixes = write_fixes(
        tmp_path,
        lambda t: t.replace(
            '[wheel.torchvision.search]\ntorch = ["torch/lib"]\n', "[wheel.torchvision.search]\n"
        ),
    )
    problems = buildcheck.check(fixes_path=fixes).problems
    assert problems and all(p.startswith("torchvision: torchvision/") for p in problems)
    assert any("torchvision/_C.so needs libc10.so" in p and "[wheel.torchvision]" in p for p in problems)


def test_the_cuda_11_library_of_bitsandbytes_needs_its_ignore_entries(tmp_path):
    fixes = write_fixes(tmp_path, lambda t: t.replace('"libcublas.so.11" = ', '"libcublas.so.11.x" = '))
    problems = buildcheck.check(fixes_path=fixes).problems
    assert problems == [
        "bitsandbytes: bitsandbytes/libbitsandbytes_cuda118.so needs libcublas.so.11, which autoPatchelf "
        "cannot find: give [wheel.bitsandbytes] in build-fixes.toml a `search` folder of the wheel that has "
        "it, a nixpkgs library, or an `ignore` entry with the reason"
    ]


@pytest.mark.parametrize(
    ("package", "library"),
    [
        ("nvidia-cudnn-cu12", "nvidia/cudnn/lib/libcudnn.so.9 loads libcudnn_graph.so.9"),
        ("onnxruntime", "loads libonnxruntime_providers_shared.so"),
        ("nvidia-cufile-cu12", "libcufile.so.0 loads libcufile_rdma.so.1"),
        ("nvidia-nvshmem-cu12", "libnvshmem_host.so.3 loads nvshmem_bootstrap_uid.so.3"),
    ],
)
def test_libraries_that_load_siblings_by_name_keep_origin(tmp_path, package, library):
    def drop_keep_origin(text: str) -> str:
        start = text.index(f"[wheel.{package}]")
        end = text.index("\n[", start + 1)
        section = re.sub(r"^keep-origin = .*$", "", text[start:end], flags=re.M)
        return text[:start] + section + text[end:]

    problems = buildcheck.check(fixes_path=write_fixes(tmp_path, drop_keep_origin)).problems
    assert any(library in p and "keep-origin" in p for p in problems), problems
    assert all(p.startswith(f"{package}: ") for p in problems)


def test_a_relock_without_a_new_manifest_names_the_command(tmp_path, locked):
    lock = (SDNEXT / "uv.lock").read_text()
    torch = next(p for p in locked if p.name == "torch")
    stale = tmp_path / "uv.lock"
    stale.write_text(lock.replace(torch.wheel.sha256, "0" * 64))
    problems = buildcheck.check(lock=stale).problems
    assert (
        f"wheel-manifest.json lacks {torch.wheel.filename} (uv.lock changed): run `python nix/sdnext/wheel_manifest.py`"
        in problems
    )
    assert any(
        p.startswith(f"wheel-manifest.json has {torch.wheel.filename}, which uv.lock") for p in problems
    )


def test_the_manifest_holds_exactly_the_locked_wheels(locked, manifest):
    assert sorted(manifest) == sorted(p.wheel.sha256 for p in locked if p.wheel)
    torch = manifest[next(p.wheel.sha256 for p in locked if p.name == "torch")]
    assert "libcudnn.so.9" in torch["elf"]["site-packages/torch/lib/libtorch_cuda.so"]["needed"]
    assert torch["files"]["bin/torchrun"].startswith("entry-point=")


def test_two_wheels_installing_one_path_with_other_bytes_collide(manifest):
    fake = {k: copy.deepcopy(v) for k, v in list(manifest.items())[:2]}
    first, second = fake.values()
    first["files"]["site-packages/cv2/__init__.py"] = "sha256=AAAA"
    second["files"]["site-packages/cv2/__init__.py"] = "sha256=BBBB"
    first["files"]["site-packages/nvidia/__init__.py"] = "sha256=same"
    second["files"]["site-packages/nvidia/__init__.py"] = "sha256=same"
    first["files"]["site-packages/x/__pycache__/y.cpython-312.pyc"] = "sha256=1"
    second["files"]["site-packages/x/__pycache__/y.cpython-312.pyc"] = "sha256=2"
    report = buildcheck.Report()
    buildcheck.check_collisions(fake, report)
    assert report.problems == [
        f"{first['package']} and {second['package']} both install site-packages/cv2/__init__.py with "
        "different bytes (FileCollisionError in the venv): keep one of them out of uv.lock"
    ]


def test_one_opencv_and_it_is_the_contrib_headless_build(locked, manifest):
    names = {p.name for p in locked}
    opencv = sorted(n for n in names if n.startswith("opencv"))
    assert opencv == ["opencv-contrib-python-headless"]
    owners = {w["package"] for w in manifest.values() if "site-packages/cv2/__init__.py" in w["files"]}
    assert owners == {"opencv-contrib-python-headless"}


@pytest.mark.parametrize(
    ("files", "chosen"),
    [
        # Ties keep the lock's order (Nix's sort is stable): the first manylinux tag listed.
        (["a-1-cp37-abi3-manylinux2014_x86_64.whl", "a-1-cp37-abi3-manylinux_2_28_x86_64.whl"], 0),
        (["a-1-cp37-abi3-manylinux_2_17_x86_64.whl", "a-1-cp312-cp312-manylinux_2_17_x86_64.whl"], 1),
        (["a-1-py3-none-any.whl", "a-1-cp312-cp312-manylinux_2_17_x86_64.whl"], 1),
        (["a-1-cp313-cp313-manylinux_2_17_x86_64.whl", "a-1-cp312-cp312-musllinux_1_2_x86_64.whl"], None),
        (["a-1-cp312-cp312-manylinux_2_17_aarch64.whl", "a-1-cp312-cp312-manylinux_2_99_x86_64.whl"], None),
        (["a-1-cp311-cp311-manylinux_2_17_x86_64.whl"], None),
    ],
)
def test_the_wheel_chosen_is_the_one_pyproject_nix_chooses(files, chosen):
    wheels = [
        {"url": f"https://files.example/{name}", "hash": f"sha256:{i}", "size": 1}
        for i, name in enumerate(files)
    ]
    selected = lockwheels.select_wheel(wheels)
    assert (None if selected is None else files.index(selected.filename)) == chosen


def test_the_manifest_generator_reads_a_real_wheel(tmp_path):
    # A wheel made here from a real ELF file of this machine's Python, with a RECORD, a script
    # in .data and an entry point, read by the same code that wrote wheel-manifest.json.
    pytest.importorskip("elftools", reason="pyelftools comes with the test extras")
    import wheel_manifest

    extension = next(
        Path(sys.base_prefix, "lib").glob(f"python3.{sys.version_info.minor}/lib-dynload/_ssl*.so")
    )
    wheel = tmp_path / "demo-1.0-cp312-cp312-manylinux_2_17_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(extension, "demo/_ssl.so")
        archive.writestr("demo/__init__.py", "")
        archive.writestr("demo-1.0.data/scripts/demo-tool", "#!python\n")
        archive.writestr("demo-1.0.dist-info/entry_points.txt", "[console_scripts]\ndemo = demo:main\n")
        archive.writestr(
            "demo-1.0.dist-info/RECORD",
            "demo/_ssl.so,sha256=elf,1\ndemo/__init__.py,sha256=init,0\n"
            "demo-1.0.data/scripts/demo-tool,sha256=tool,9\ndemo-1.0.dist-info/RECORD,,\n",
        )
    package = lockwheels.Locked("demo", "1.0", "registry", lockwheels.Wheel(wheel.name, "", "0", 0))
    entry = wheel_manifest.inspect_wheel(package, wheel)
    assert entry["files"]["site-packages/demo/_ssl.so"] == "sha256=elf"
    assert entry["files"]["bin/demo-tool"] == "sha256=tool"
    assert entry["files"]["bin/demo"] == "entry-point=demo:main"
    assert entry["files"]["site-packages/demo-1.0.dist-info/RECORD"].startswith("sha256=")
    needed = entry["elf"]["site-packages/demo/_ssl.so"]["needed"]
    if shutil.which("readelf"):  # binutils, where present (not in the Nix sandbox)
        dynamic = subprocess.run(["readelf", "-d", str(extension)], capture_output=True, text=True).stdout
        assert needed == re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
    assert any(name.startswith("libssl") for name in needed)


STUB_LIB = """
  lib = rec {
    getLib = drv: "${drv}-lib";
    getAttrFromPath = path: set: builtins.foldl' (s: n: s.${n}) set path;
    splitString = sep: s: builtins.filter builtins.isString (builtins.split "\\\\." s);
    genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
    optional = cond: x: if cond then [ x ] else [ ];
    concatStrings = builtins.concatStringsSep "";
    concatMapStrings = f: list: concatStrings (map f list);
    mapAttrsToList = f: set: map (n: f n set.${n}) (builtins.attrNames set);
    mapAttrs = builtins.mapAttrs;
  };
"""


def test_the_nix_overlay_applies_exactly_the_data(tmp_path):
    if which("nix-instantiate") is None:
        pytest.skip("Nix is not installed (tests/run.sh installs nix-bin)")
    # nixpkgs cannot be had here: lib and the package set are stubbed; what is evaluated is the
    # overlay's own reading of build-fixes.toml.
    fixes = buildcheck.read_fixes()
    names = sorted(set(fixes.wheels) | set(fixes.build_systems))
    searched_wheels = {wheel for fix in fixes.wheels.values() for wheel in fix.search}
    expression = tmp_path / "overlay.nix"
    expression.write_text(
        f"""
        let
          {STUB_LIB}
          pkgs = {{ zlib = "zlib"; rdma-core = "rdma-core"; stdenv.cc.cc.lib = "gcc-lib"; }};
          package = name: {{
            overrideAttrs = f: f {{ nativeBuildInputs = [ "hook" ]; preFixup = ""; }};
            outPath = "/store/${{name}}";
          }};
          prev = builtins.listToAttrs (map (n: {{ name = n; value = package n; }}) [ {" ".join(json.dumps(n) for n in sorted(set(names) | searched_wheels))} ]);
          final = prev // {{
            python.sitePackages = "lib/python3.12/site-packages";
            resolveBuildSystem = spec: map (n: "backend-${{n}}") (builtins.attrNames spec);
          }};
          overlay = import {SDNEXT / "wheel-fixes.nix"} {{ inherit lib pkgs; }} final prev;
        in builtins.mapAttrs (_: attrs: builtins.removeAttrs attrs [ "overrideAttrs" ]) overlay
        """
    )
    overlay = evaluate({**os.environ, "NIX_CONFIG": "experimental-features = nix-command flakes"}, expression)
    assert sorted(overlay) == names
    for name, backends in fixes.build_systems.items():
        assert overlay[name]["nativeBuildInputs"] == ["hook", *sorted(f"backend-{b}" for b in backends)]
    attribute_paths = {"zlib": "zlib", "rdma-core": "rdma-core", "stdenv.cc.cc.lib": "gcc-lib"}
    for name, fix in fixes.wheels.items():
        attrs = overlay[name]
        assert attrs["buildInputs"] == [f"{attribute_paths[a]}-lib" for a in fix.libraries]
        assert sorted(attrs["autoPatchelfIgnoreMissingDeps"]) == sorted(fix.ignore)
        assert attrs["appendRunpaths"] == (["$ORIGIN"] if fix.keep_origin else [])
        searched = re.findall(r"addAutoPatchelfSearchPath (\S+)", attrs["preFixup"])
        assert sorted(searched) == sorted(
            f"/store/{wheel}/lib/python3.12/site-packages/{folder}"
            for wheel, folders in fix.search.items()
            for folder in folders
        )


def test_every_ignored_library_and_kept_origin_says_why():
    fixes = buildcheck.read_fixes()
    for name, fix in fixes.wheels.items():
        for pattern, reason in fix.ignore.items():
            assert len(reason) > 20, f"[wheel.{name}] ignore {pattern}: say why"
            assert fix.keep_origin == "" or len(fix.keep_origin) > 20, name
