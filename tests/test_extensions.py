"""SD.Next extensions declared in the config: fetched as GitHub's archive of a commit (or an
archive with its sha256), unpacked into sdnext/extensions/NAME, their Python packages into the
overlay with hashes the lock keeps; through the CLI in child processes, against a fake GitHub
(real `git archive` output) and a fake package index serving a real wheel from PyPI."""

from __future__ import annotations

import io
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from .conftest import INFLECTION, WHEELS, run_module, sha256, tree
from .fakes.github import FakeGitHub, commit_files
from .fakes.pypi import FakePyPI

EXTENSION_FILES = {
    "scripts/tiny.py": "import inflection\n\nNAME = inflection.camelize('tiny_extension')\n",
    "requirements.txt": "# what install.py would pip-install\ninflection==0.5.1\n",
    "install.py": "raise SystemExit('provision never runs install.py')\n",
    "javascript/tiny.js": "console.log('tiny');\n",
}


def sdnext_python() -> str:
    """The real SD.Next environment's interpreter (tests/run.sh makes it): the image's packages."""
    python = Path(os.environ.get("SDNEXT_VENV", Path(sys.prefix) / "sdnext")) / "bin" / "python"
    if not python.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{python} is missing: tests/run.sh makes it (CI must skip nothing)")
        pytest.skip(f"{python} is missing: run tests/run.sh once")
    return str(python)


@pytest.fixture
def github(monkeypatch):
    server = FakeGitHub().start()
    monkeypatch.setenv("GITHUB_ENDPOINT", server.url)
    yield server
    server.stop()


@pytest.fixture
def pypi():
    if not (WHEELS / INFLECTION).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{WHEELS / INFLECTION} is missing: tests/run.sh downloads it")
        pytest.skip(f"{WHEELS / INFLECTION} is missing: run tests/run.sh once")
    server = FakePyPI(wheels=WHEELS).start()
    yield server
    server.stop()


@pytest.fixture
def extension_repo(tmp_path, github):
    repo = tmp_path / "repo-tiny"
    commit = commit_files(repo, EXTENSION_FILES)
    github.add("someone/sd-tiny", repo)
    return repo, commit


def env_for(pypi: FakePyPI | None, tmp_path: Path) -> dict[str, str]:
    env = {"UV_NO_CONFIG": "1", "UV_CACHE_DIR": str(tmp_path / "uv-cache"), "SDNEXT_PYTHON": sdnext_python()}
    if pypi is not None:
        env["UV_DEFAULT_INDEX"] = pypi.index_url
    else:
        env["UV_DEFAULT_INDEX"] = "http://127.0.0.1:9/simple"
    return env


def config(commit: str, extra: str = "") -> str:
    return f'[extensions.tiny]\nurl = "https://github.com/someone/sd-tiny"\ncommit = "{commit}"\n{extra}'


def files_of(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in tree(folder)}


def test_a_github_extension_is_installed_with_its_packages_and_locked(
    tmp_path, workspace, write_config, extension_repo, github, pypi
):
    _repo, commit = extension_repo
    path = write_config(config(commit))
    env = env_for(pypi, tmp_path)

    locked = run_module("lock", str(path), "--workspace", str(workspace), env=env)
    assert locked.returncode == 0, locked.stderr
    first = run_module(str(path), "--workspace", str(workspace), env=env)

    assert first.returncode == 0, first.stderr
    folder = workspace / "sdnext" / "extensions" / "tiny"
    assert files_of(folder) == {name: text.encode() for name, text in EXTENSION_FILES.items()}
    overlay = workspace / "sdnext" / "extension-packages"
    assert (overlay / "inflection.py").is_file()
    assert not (overlay / "numpy").exists(), "a package the image has went into the overlay"
    lock = (tmp_path / "models.lock").read_text()
    wheel_hash = sha256((WHEELS / INFLECTION).read_bytes())
    assert f'commit = "{commit}"' in lock
    assert f"inflection==0.5.1 --hash=sha256:{wheel_hash}" in lock
    assert "tree_sha256 = " in lock and "archive_sha256 = " in lock
    # install.py never ran: it would have failed the run.
    archive_requests = [r for r in github.requests if "/codeload/" in r.path]
    assert len(archive_requests) == 1, "the run after `provision lock` fetched the archive again"

    # The next start, with GitHub and the index gone: nothing is asked, all is in place.
    github.stop()
    pypi.stop()
    again = run_module(str(path), "--workspace", str(workspace), env=env)
    assert again.returncode == 0, again.stderr
    assert "extensions.tiny" in again.stderr and "skipped" in again.stderr
    planned = run_module(str(path), "--dry-run", "--offline", "--workspace", str(workspace), env=env)
    assert "extensions.tiny  github  ?     in place  extensions/tiny" in planned.stdout + planned.stderr
    assert files_of(folder) == {name: text.encode() for name, text in EXTENSION_FILES.items()}


def test_a_run_on_one_extension_keeps_the_packages_of_the_others(
    tmp_path, workspace, write_config, extension_repo, github, pypi
):
    _repo, commit = extension_repo
    plain = commit_files(tmp_path / "plain", {"scripts/p.py": "P = 1\n"})
    github.add("someone/plain", tmp_path / "plain")
    path = write_config(
        config(commit) + f'[extensions.plain]\nurl = "https://github.com/someone/plain"\ncommit = "{plain}"\n'
    )
    env = env_for(pypi, tmp_path)
    assert run_module(str(path), "--workspace", str(workspace), env=env).returncode == 0
    plain_v2 = commit_files(tmp_path / "plain", {"scripts/p.py": "P = 2\n"})
    path.write_text(path.read_text().replace(plain, plain_v2))

    only = run_module(str(path), "--only", "extensions/plain", "--workspace", str(workspace), env=env)

    assert only.returncode == 0, only.stderr
    assert (workspace / "sdnext" / "extensions" / "plain" / "scripts" / "p.py").read_text() == "P = 2\n"
    assert (workspace / "sdnext" / "extension-packages" / "inflection.py").is_file()

    # Removed from the config and from disk: its packages go at the next run.
    shutil.rmtree(workspace / "sdnext" / "extensions" / "tiny")
    path.write_text(f'[extensions.plain]\nurl = "https://github.com/someone/plain"\ncommit = "{plain_v2}"\n')
    assert run_module(str(path), "--workspace", str(workspace), env=env).returncode == 0
    assert not (workspace / "sdnext" / "extension-packages").exists()
    assert (workspace / "sdnext" / "extensions" / "plain").is_dir()


def test_another_host_installs_the_locked_packages_or_nothing(
    tmp_path, workspace, write_config, extension_repo, pypi
):
    """The lock pins the wheel's hash: an index that serves other bytes is refused, and the
    extension is not put in place without its packages."""
    _repo, commit = extension_repo
    path = write_config(config(commit))
    env = env_for(pypi, tmp_path)
    assert run_module("lock", str(path), "--workspace", str(tmp_path / "first"), env=env).returncode == 0

    pypi.tamper(INFLECTION)
    other = run_module(
        str(path),
        "--locked",
        "--workspace",
        str(workspace),
        env={**env, "UV_CACHE_DIR": str(tmp_path / "cold")},
    )

    assert other.returncode == 1
    assert "extensions.tiny" in other.stderr and "hash" in other.stderr.lower()
    assert not (workspace / "sdnext" / "extensions" / "tiny").exists()
    assert not (workspace / "sdnext" / "extension-packages").exists()
    assert tree(workspace / ".provision" / "staging") == []


def test_a_requirement_the_image_cannot_meet_is_refused_naming_both_versions(
    tmp_path, workspace, write_config, extension_repo, pypi
):
    _repo, commit = extension_repo
    image_numpy = run_module_python(sdnext_python(), "import numpy; print(numpy.__version__)")
    path = write_config(config(commit, 'requirements = ["inflection==0.5.1", "numpy<1"]\n'))

    result = run_module(str(path), "--workspace", str(workspace), env=env_for(pypi, tmp_path))

    assert result.returncode == 1
    assert f"requires numpy<1, but the image has numpy {image_numpy}" in result.stderr
    assert not (workspace / "sdnext" / "extensions" / "tiny").exists()
    assert not (workspace / "sdnext" / "extension-packages").exists()


def run_module_python(python: str, code: str) -> str:
    import subprocess

    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_an_archive_of_another_commit_is_refused(tmp_path, workspace, write_config, extension_repo, github):
    repo, commit = extension_repo
    newer = commit_files(repo, {"scripts/tiny.py": "NAME = 'changed'\n"})
    from .fakes.github import git_archive

    github.replaced[("someone/sd-tiny", commit)] = git_archive(repo, newer, "sd-tiny")
    path = write_config(config(commit, "requirements = []\n"))

    result = run_module(str(path), "--workspace", str(workspace), env=env_for(None, tmp_path))

    assert result.returncode == 1
    assert f"the archive is of commit {newer}, not {commit}" in result.stderr
    assert (
        not (workspace / "sdnext" / "extensions").exists() or tree(workspace / "sdnext" / "extensions") == []
    )


def test_an_archive_url_must_match_its_sha256_and_stay_inside_its_folder(
    tmp_path, workspace, write_config, cdn
):
    good = tar_gz({"ext-1.0/scripts/a.py": b"A = 1\n", "ext-1.0/README.md": b"hi\n"})
    evil = tar_gz({"ext-1.0/scripts/a.py": b"A = 1\n", "ext-1.0/../../../../escaped.py": b"bad\n"})
    cdn.add("/good.tar.gz", good)
    cdn.add("/evil.tar.gz", evil)
    wrong = "0" * 64
    path = write_config(
        f'[extensions.good]\nurl = "{cdn.url}/good.tar.gz"\nsha256 = "{sha256(good)}"\n'
        f'[extensions.wrong]\nurl = "{cdn.url}/good.tar.gz"\nsha256 = "{wrong}"\n'
        f'[extensions.evil]\nurl = "{cdn.url}/evil.tar.gz"\nsha256 = "{sha256(evil)}"\n'
    )

    result = run_module(str(path), "--workspace", str(workspace), env=env_for(None, tmp_path))

    assert result.returncode == 1
    extensions = workspace / "sdnext" / "extensions"
    assert files_of(extensions / "good") == {"README.md": b"hi\n", "scripts/a.py": b"A = 1\n"}
    assert f"the archive's sha256 is {sha256(good)}, the config says {wrong}" in result.stderr
    assert "a path outside its folder" in result.stderr
    assert sorted(p.name for p in extensions.iterdir()) == ["good"]
    assert not list(tmp_path.rglob("escaped.py"))
    assert tree(workspace / ".provision" / "staging") == []


def test_a_new_commit_replaces_the_files_keeping_what_the_extension_wrote_and_a_folder_made_by_hand_is_left_alone(
    tmp_path, workspace, write_config, extension_repo
):
    repo, commit = extension_repo
    env = env_for(None, tmp_path)
    path = write_config(config(commit, "requirements = []\n"))
    assert run_module(str(path), "--workspace", str(workspace), env=env).returncode == 0
    folder = workspace / "sdnext" / "extensions" / "tiny"
    # What the extension writes into its own folder (its settings) is not a change of its files.
    (folder / "settings.json").write_text('{"mine": 1}')
    again = run_module(str(path), "--workspace", str(workspace), env=env)
    assert again.returncode == 0 and "skipped" in again.stderr, again.stderr
    newer = commit_files(repo, {"scripts/tiny.py": "NAME = 'v2'\n", "scripts/new.py": "X = 2\n"})

    path.write_text(
        config(newer, "requirements = []\n")
        + '\n[extensions.mine]\nurl = "https://github.com/someone/sd-tiny"\n'
        f'commit = "{newer}"\nrequirements = []\n'
    )
    by_hand = workspace / "sdnext" / "extensions" / "mine"
    by_hand.mkdir(parents=True)
    (by_hand / "notes.txt").write_text("mine")
    result = run_module(str(path), "--workspace", str(workspace), env=env)

    assert result.returncode == 1
    assert (folder / "scripts" / "tiny.py").read_text() == "NAME = 'v2'\n"
    assert (folder / "scripts" / "new.py").is_file()
    assert (folder / "settings.json").read_text() == '{"mine": 1}', "the extension's own settings were lost"
    assert "provision did not put it there: move it away" in result.stderr
    assert files_of(by_hand) == {"notes.txt": b"mine"}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            'url = "https://github.com/a/b"\ncommit = "main"',
            "extensions.x.commit: 'main' is not a commit: give all 40 hex digits",
        ),
        ('url = "https://github.com/a/b"', 'extensions.x: missing "commit": a branch moves'),
        ('url = "https://example.com/x.tar.gz"', 'extensions.x: missing "sha256" of the archive'),
        (
            'url = "https://gitlab.com/a/b"\ncommit = "' + "a" * 40 + '"',
            "only GitHub repositories are fetched by commit",
        ),
        (
            'url = "https://github.com/a/b"\ncommit = "' + "a" * 40 + '"\nrequirements = ["not a req!"]',
            "extensions.x.requirements: 'not a req!' is not a requirement",
        ),
    ],
)
def test_config_errors_name_the_key_and_the_fix(tmp_path, workspace, write_config, entry, message):
    path = write_config(f"[extensions.x]\n{entry}\n")
    check_refused(path, workspace, message)


def test_a_built_in_extensions_name_is_refused(workspace, write_config):
    """SD.Next skips a user extension named like a built-in one ("Skipping conflicting extension"):
    it would be installed and never load."""
    path = write_config(
        f'[extensions.sdnext-kanvas]\nurl = "https://github.com/a/b"\ncommit = "{"a" * 40}"\n'
    )
    check_refused(path, workspace, "has a built-in extension of that name")


def check_refused(path: Path, workspace: Path, message: str) -> None:
    result = run_module(str(path), "--workspace", str(workspace), env={"UV_NO_CONFIG": "1"})
    assert result.returncode == 2
    assert message in result.stderr
    assert not (workspace / "sdnext" / "extensions").exists()


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_the_tree_hash_ignores_how_the_archive_was_packed(tmp_path):
    from provision.extensions import manifest, tree_hash

    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        (folder / "a").mkdir(parents=True)
        (folder / "a" / "x.py").write_text("x")
    assert tree_hash(manifest(one)) == tree_hash(manifest(two))
    (two / "a" / "x.py").chmod(0o755)
    assert tree_hash(manifest(one)) != tree_hash(manifest(two))


def test_status_says_whether_each_extension_is_as_it_came(tmp_path, workspace, write_config, extension_repo):
    _repo, commit = extension_repo
    path = write_config(config(commit, "requirements = []\n"))
    env = env_for(None, tmp_path)
    before = run_module("status", str(path), "--workspace", str(workspace), env=env)
    assert before.returncode == 1 and "tiny       missing" in before.stdout, before.stdout
    assert run_module(str(path), "--workspace", str(workspace), env=env).returncode == 0
    folder = workspace / "sdnext" / "extensions" / "tiny"
    (folder / "settings.json").write_text("{}")  # what the extension writes is not a change

    status = run_module("status", str(path), "--workspace", str(workspace), env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"tiny       verified  {commit[:12]}  0" in status.stdout

    (folder / "scripts" / "tiny.py").write_text("edited by hand\n")
    changed = run_module("status", str(path), "--workspace", str(workspace), env=env)
    assert changed.returncode == 1
    assert "tiny       changed" in changed.stdout


def test_a_private_repository_takes_github_token_which_goes_to_github_only(
    tmp_path, workspace, write_config, github, monkeypatch
):
    token = "github_pat_private_5555"
    codeload = FakeGitHub(repos=github.repos, private=github.private).start()  # another host
    github.codeload = codeload.url
    try:
        commit = commit_files(tmp_path / "secret-ext", {"scripts/s.py": "S = 1\n"})
        github.add("someone/secret-ext", tmp_path / "secret-ext", token=token)
        path = write_config(
            f'[extensions.secret]\nurl = "https://github.com/someone/secret-ext"\ncommit = "{commit}"\n'
            "requirements = []\n"
        )
        without = run_module(str(path), "--workspace", str(workspace), env=env_for(None, tmp_path))
        assert without.returncode == 1
        assert (
            "answered 404" in without.stderr and "a private repository needs GITHUB_TOKEN" in without.stderr
        )

        with_token = run_module(
            str(path), "--workspace", str(workspace), env={**env_for(None, tmp_path), "GITHUB_TOKEN": token}
        )

        assert with_token.returncode == 0, with_token.stderr
        assert (workspace / "sdnext" / "extensions" / "secret" / "scripts" / "s.py").read_text() == "S = 1\n"
        assert [r.headers.get("authorization") for r in github.seen("/someone/")][-1] == f"Bearer {token}"
        assert all("authorization" not in r.headers for r in codeload.requests), "the token left GitHub"
        written = with_token.stdout + with_token.stderr
        written += (workspace / ".provision" / "extensions.json").read_text()
        written += (workspace / "logs" / "provision.log").read_text()
        assert token not in written and "CODELOADGRANT" not in written
    finally:
        codeload.stop()
