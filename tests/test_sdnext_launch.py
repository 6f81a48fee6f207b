"""sdnext-launch's command line and environment (the real start is in test_sdnext_real.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .runtime_harness import free_port, listening

LAUNCHER = Path(__file__).resolve().parent.parent / "nix" / "sdnext" / "sdnext_launch.py"
spec = importlib.util.spec_from_file_location("sdnext_launch", LAUNCHER)
sdnext_launch = importlib.util.module_from_spec(spec)
sys.modules["sdnext_launch"] = sdnext_launch  # dataclasses look their module up
spec.loader.exec_module(sdnext_launch)


def build(
    env: dict, argv: list[str] | None = None, accelerate: bool = True, cpus: int = 16, gpu: bool = True
):
    return sdnext_launch.build(
        sdnext_launch.parse_args(argv or []),
        env,
        python="/env/bin/python",
        accelerate_available=accelerate,
        cpu_count=cpus,
        gpu_present=gpu,
    )


BASE = {"WORKSPACE": "/ws", "SDNEXT_SRC": "/nix/store/x-sdnext"}


def test_default_launch_is_offline_loopback_with_workspace_paths():
    launch = build(BASE, accelerate=False)
    assert launch.cwd == Path("/nix/store/x-sdnext")
    assert launch.argv == [
        "/env/bin/python",
        "/nix/store/x-sdnext/launch.py",
        "--skip-all",
        "--skip-torch",
        "--server-name",
        "127.0.0.1",
        "--port",
        "18010",
        "--data-dir",
        "/ws/sdnext",
        "--models-dir",
        "/ws/sdnext/models",
        "--log",
        "/ws/logs/sdnext.log",
    ]
    assert launch.env["PIP_NO_INDEX"] == "1"
    assert launch.env["PYTHONPYCACHEPREFIX"] == "/ws/.cache/sdnext-pycache"  # not the read-only source
    assert launch.env["GIT_PYTHON_REFRESH"] == "quiet"  # GitPython loads without a git binary
    assert "LD_PRELOAD" not in launch.env


def test_port_from_arguments_then_environment():
    launch = build(BASE, ["--host", "127.0.0.2", "--port", "9000"], accelerate=False)
    assert launch.argv[4:8] == ["--server-name", "127.0.0.2", "--port", "9000"]
    launch = build({**BASE, "SDNEXT_INTERNAL_PORT": "18111"}, accelerate=False)
    assert launch.argv[6:8] == ["--port", "18111"]


def test_sdnext_args_are_split_like_a_shell_and_never_evaluated():
    launch = build(
        {**BASE, "SDNEXT_ARGS": "--use-cpu all --theme 'my theme' $(touch /tmp/pwned) ;ls"}, accelerate=False
    )
    assert launch.argv[-7:] == ["--use-cpu", "all", "--theme", "my theme", "$(touch", "/tmp/pwned)", ";ls"]


def test_accelerate_launch_with_at_most_six_threads_unless_disabled():
    assert build(BASE, cpus=32).argv[:4] == [
        "/env/bin/python",
        "-m",
        "accelerate.commands.launch",
        "--num_cpu_threads_per_process=6",
    ]
    assert build(BASE, cpus=2).argv[3] == "--num_cpu_threads_per_process=2"
    assert build({**BASE, "NO_ACCELERATE": "1"}).argv[1] == "/nix/store/x-sdnext/launch.py"
    assert build(BASE, accelerate=False).argv[1] == "/nix/store/x-sdnext/launch.py"


def test_tcmalloc_is_preloaded_for_sdnext_only_when_present(tmp_path):
    lib = tmp_path / "libtcmalloc_minimal.so"
    lib.write_bytes(b"")
    assert build({**BASE, "TCMALLOC_LIB": str(lib)}).env["LD_PRELOAD"] == str(lib)
    assert (
        build({**BASE, "TCMALLOC_LIB": str(lib), "LD_PRELOAD": "/x.so"}).env["LD_PRELOAD"] == f"{lib}:/x.so"
    )
    assert "LD_PRELOAD" not in build({**BASE, "TCMALLOC_LIB": str(lib), "NO_TCMALLOC": "1"}).env
    assert "LD_PRELOAD" not in build({**BASE, "TCMALLOC_LIB": str(tmp_path / "missing.so")}).env


def test_a_new_config_starts_offline_and_a_users_choice_is_kept(tmp_path):
    sdnext_launch.prepare_data_dir(tmp_path)
    config = tmp_path / "sdnext" / "config.json"
    assert json.loads(config.read_text()) == {"offline_mode": True}
    assert (tmp_path / "sdnext" / "models").is_dir() and (tmp_path / "logs").is_dir()
    config.write_text(json.dumps({"offline_mode": False, "sd_model_checkpoint": "x"}))
    sdnext_launch.prepare_data_dir(tmp_path)
    assert json.loads(config.read_text()) == {"offline_mode": False, "sd_model_checkpoint": "x"}
    config.write_text(json.dumps({"theme": "dark"}))
    sdnext_launch.prepare_data_dir(tmp_path)
    assert json.loads(config.read_text()) == {"theme": "dark", "offline_mode": True}


@pytest.mark.parametrize("secret_args", ["--auth admin:hunter2-secret"])
def test_the_launcher_runs_launch_py_and_does_not_print_sdnext_args(tmp_path, secret_args):
    source = tmp_path / "src"
    source.mkdir()
    (source / "launch.py").write_text(
        "import os, sys, json\nprint(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(), "
        "'pip': os.environ.get('PIP_NO_INDEX')}))\n"
    )
    source.chmod(0o555)  # read-only, as in the Nix store
    env = {
        "PATH": "/usr/bin:/bin",
        "WORKSPACE": str(tmp_path / "ws"),
        "SDNEXT_SRC": str(source),
        "NO_ACCELERATE": "1",
        "SDNEXT_ARGS": secret_args,
    }
    result = subprocess.run(
        [sys.executable, str(LAUNCHER), "--port", "18099"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    announced, child = result.stdout.splitlines()
    assert "hunter2-secret" not in announced and "(+2 from SDNEXT_ARGS)" in announced
    data = json.loads(child)
    assert data["cwd"] == str(source) and data["pip"] == "1"
    assert data["argv"][-2:] == ["--auth", "admin:hunter2-secret"]
    assert sorted(p.name for p in source.iterdir()) == ["launch.py"]  # nothing written into the source


def test_a_missing_source_folder_is_a_clear_error(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "WORKSPACE": str(tmp_path / "ws"), "SDNEXT_SRC": str(tmp_path / "nope")}
    result = subprocess.run(
        [sys.executable, str(LAUNCHER)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "set SDNEXT_SRC" in result.stderr


def test_sigterm_stops_sdnext_even_behind_a_launcher_that_does_not_forward_it(tmp_path):
    # Like `accelerate launch`: it starts launch.py as a child and, on SIGTERM, exits without
    # passing the signal on. SD.Next (here a server on a port) must stop all the same.
    fake = tmp_path / "fake-site" / "accelerate" / "commands"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "launch.py").write_text(
        "import signal, subprocess, sys\n"
        "args = [a for a in sys.argv[1:] if not a.startswith('--num_cpu_threads')]\n"
        "child = subprocess.Popen([sys.executable, *args])\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exits, the child stays\n"
        "child.wait()\n"
    )
    source = tmp_path / "src"
    source.mkdir()
    pid_file = tmp_path / "sdnext.pid"
    (source / "launch.py").write_text(
        "import os, socket, sys, time\n"
        "port = int(sys.argv[sys.argv.index('--port') + 1])\n"
        "server = socket.create_server(('127.0.0.1', port))\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "while True:\n    time.sleep(1)\n"
    )
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "WORKSPACE": str(tmp_path / "ws"),
        "SDNEXT_SRC": str(source),
        "PYTHONPATH": str(tmp_path / "fake-site"),
    }
    launcher = subprocess.Popen([sys.executable, str(LAUNCHER), "--port", str(port)], env=env)
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        assert launcher.poll() is None
        time.sleep(0.05)
    sdnext_pid = int(pid_file.read_text())
    assert listening(port) == {"127.0.0.1"}
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(timeout=30)
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{sdnext_pid}") and time.monotonic() < deadline:
        with open(f"/proc/{sdnext_pid}/stat") as stat:
            if stat.read().split(") ")[1].startswith("Z"):  # a zombie no longer holds the port
                break
        time.sleep(0.05)
    assert listening(port) == set(), "SD.Next outlived its launcher"


def test_compile_caches_and_temporary_files_go_to_the_workspace():
    env = build(BASE).env
    assert env["TMPDIR"] == "/ws/.cache/tmp"  # torch's precompiled headers follow TMPDIR only
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/ws/.cache/torchinductor"
    assert env["TRITON_CACHE_DIR"] == "/ws/.cache/triton"
    assert env["XDG_CACHE_HOME"] == "/ws/.cache"  # matplotlib, torch hub: not under $HOME


@pytest.mark.parametrize(
    ("gpu", "args", "disabled"),
    [(False, "", "1"), (True, "--use-cpu all", "1"), (True, "", None)],
)
def test_torch_compile_is_off_without_a_gpu_and_on_with_one(gpu, args, disabled):
    env = build({**BASE, "SDNEXT_ARGS": args}, gpu=gpu).env
    assert env.get("TORCH_COMPILE_DISABLE") == disabled


def test_a_users_own_torch_compile_setting_wins():
    env = build({**BASE, "TORCH_COMPILE_DISABLE": "0"}, gpu=False).env
    assert env["TORCH_COMPILE_DISABLE"] == "0"


def test_the_extensions_packages_come_after_the_images_own(tmp_path):
    """A real interpreter started with the launcher's environment: a package only the overlay
    has is found there, and one the image has too (numpy) is the image's, however the overlay's
    copy claims to be newer."""
    python = Path(os.environ.get("SDNEXT_VENV", Path(sys.prefix) / "sdnext")) / "bin" / "python"
    if not python.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{python} is missing: tests/run.sh makes it")
        pytest.skip(f"{python} is missing: run tests/run.sh once")
    overlay = tmp_path / "ws" / "sdnext" / "extension-packages"
    (overlay / "numpy").mkdir(parents=True)
    (overlay / "numpy" / "__init__.py").write_text("__version__ = '99.0'\n")
    (overlay / "tinydep.py").write_text("WHERE = 'overlay'\n")
    launch = build({**BASE, "WORKSPACE": str(tmp_path / "ws")})
    code = "import numpy, tinydep; print(numpy.__version__, tinydep.WHERE)"
    env = {k: v for k, v in launch.env.items() if k not in ("LD_PRELOAD",)}

    shown = subprocess.run([str(python), "-c", code], env=env, capture_output=True, text=True, check=True)

    image_numpy = subprocess.run(
        [str(python), "-c", "import numpy; print(numpy.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    assert shown.stdout.split() == [image_numpy, "overlay"]
    assert launch.env["SDNEXT_EXTENSION_PACKAGES"] == str(overlay)
