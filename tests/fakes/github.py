"""GitHub's archive of a commit, as provision asks for it: `GET /OWNER/REPO/archive/COMMIT.tar.gz`
answers 302 to `/codeload/OWNER/REPO/tar.gz/COMMIT` (codeload.github.com on the real site), which
serves what `git archive` makes of the commit: a tar.gz whose pax header names the commit and
whose files sit under `REPO-COMMIT/`. An unknown repository or commit is a 404, as on GitHub.
The archives come from a real git repository (`commit_files`). A private repository answers
404 unless `Authorization: Bearer TOKEN` comes with the request; its redirect then carries a
token of its own, as GitHub's does. `codeload`: another server (another host) for the archives."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .server import FakeServer, Handler


def git(repo: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(repo),
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], env={**os.environ, **env}, capture_output=True, text=True, check=True
    ).stdout.strip()


def commit_files(repo: Path, files: dict[str, str | bytes], message: str = "change") -> str:
    """Write the files into a git repository (made if new), commit them, return the commit."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "-q", "-b", "main")
    for name, content in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def git_archive(repo: Path, commit: str, name: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar.gz", f"--prefix={name}-{commit}/", commit],
        capture_output=True,
        check=True,
    ).stdout


@dataclass
class FakeGitHub(FakeServer):
    repos: dict[str, Path] = field(default_factory=dict)  # "owner/name" -> git repository
    # (owner/name, commit) -> other bytes to serve instead of the commit's archive
    replaced: dict[tuple[str, str], bytes] = field(default_factory=dict)
    private: dict[str, str] = field(default_factory=dict)  # "owner/name" -> the token it takes
    codeload: str | None = None  # the archives' server; None: this one

    def add(self, slug: str, repo: Path, token: str | None = None) -> None:
        self.repos[slug] = repo
        if token:
            self.private[slug] = token

    def handle(self, h: Handler, path: str, query: dict) -> None:
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[2] == "archive" and parts[3].endswith(".tar.gz"):
            owner, name, _, ref = parts
            token = self.private.get(f"{owner}/{name}")
            if token is not None and h.headers.get("Authorization") != f"Bearer {token}":
                h.reply(404, b"Not Found")
                return
            grant = "?token=CODELOADGRANT" if token else ""
            where = (
                f"{self.codeload or ''}/codeload/{owner}/{name}/tar.gz/{ref.removesuffix('.tar.gz')}{grant}"
            )
            h.reply(302, headers={"Location": where})
            return
        if len(parts) == 5 and parts[0] == "codeload" and parts[3] == "tar.gz":
            _, owner, name, _, commit = parts
            slug = f"{owner}/{name}"
            repo = self.repos.get(slug)
            if slug in self.private and query.get("token") != "CODELOADGRANT":
                h.reply(404, b"Not Found")
                return
            if (slug, commit) in self.replaced:
                h.reply(200, self.replaced[(slug, commit)], content_type="application/x-gzip")
                return
            if repo is None:
                h.reply(404, b"Not Found")
                return
            try:
                body = git_archive(repo, commit, name)
            except subprocess.CalledProcessError:
                h.reply(404, b"Not Found")
                return
            h.reply(200, body, content_type="application/x-gzip")
            return
        h.reply(404, b"Not Found")
