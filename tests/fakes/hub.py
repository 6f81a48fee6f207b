"""A Hugging Face Hub as FACTS.md describes it (resolve HEAD/GET with X-Repo-Commit,
X-Linked-Etag, X-Linked-Size; LFS files 302 to a CDN on another host, small files a relative
307 to /api/resolve-cache; errors in X-Error-Code; whoami-v2; model info; the tree API)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from .cdn import FakeCDN
from .server import FakeServer, Handler

LFS_THRESHOLD = 10 * 1024


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    branches: tuple[str, ...] = ("main",)
    gated: bool = False
    accepted_tokens: set[str] = field(default_factory=set)  # tokens whose account accepted terms
    older: dict[str, dict[str, bytes]] = field(default_factory=dict)  # earlier commits' files

    def files_at(self, revision: str) -> dict[str, bytes]:
        return self.older.get(revision, self.files)


@dataclass
class FakeHub(FakeServer):
    cdn: FakeCDN | None = None
    repos: dict[str, Repo] = field(default_factory=dict)
    valid_tokens: set[str] = field(default_factory=set)
    whoami_status: int | None = None  # answer the token check with this (a mirror's 504)
    # As olah (a real Hub mirror) does: a missing file of an existing repository is answered
    # 401 RepoNotFound, where the Hub answers 404 EntryNotFound.
    missing_file_as_repo: bool = False

    def add_repo(self, repo_id: str, files: dict[str, bytes], **options) -> Repo:
        repo = Repo(files, **options)
        self.repos[repo_id] = repo
        for data in files.values():
            if len(data) >= LFS_THRESHOLD and self.cdn is not None:
                self.cdn.add(f"/lfs/{hashlib.sha256(data).hexdigest()}", data)
        return repo

    def push(self, repo_id: str, files: dict[str, bytes], commit: str) -> None:
        """A new commit on main: the old one stays reachable by its sha, as on the Hub."""
        repo = self.repos[repo_id]
        repo.older[repo.commit] = repo.files
        repo.files, repo.commit = files, commit
        for data in files.values():
            if len(data) >= LFS_THRESHOLD and self.cdn is not None:
                self.cdn.add(f"/lfs/{hashlib.sha256(data).hexdigest()}", data)

    # -- helpers -------------------------------------------------------------------------------

    def _token(self, h: Handler) -> str | None:
        auth = h.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def _error(self, h: Handler, status: int, code: str, message: str) -> None:
        h.reply(
            status,
            json.dumps({"error": message}).encode(),
            {"X-Error-Code": code, "X-Error-Message": message},
            content_type="application/json",
        )

    def _find(self, h: Handler, repo_id: str, revision: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        token = self._token(h)
        if token is not None and token not in self.valid_tokens:
            self._error(h, 401, "", "Invalid credentials in Authorization header")
            return None
        if repo is None:
            self._error(h, 401, "RepoNotFound", "Repository not found")
            return None
        if repo.gated and token not in repo.accepted_tokens:
            status = 401 if token is None else 403
            self._error(
                h,
                status,
                "GatedRepo",
                "Access to model is restricted. You must have access to it and be authenticated to access it. Please log in.",
            )
            return None
        if revision not in repo.branches and revision != repo.commit and revision not in repo.older:
            self._error(h, 404, "RevisionNotFound", "Invalid rev id")
            return None
        return repo

    # -- routes --------------------------------------------------------------------------------

    def handle(self, h: Handler, path: str, query: dict) -> None:
        if path == "/api/whoami-v2" and self.whoami_status:
            h.reply(self.whoami_status, b"<html>gateway timeout</html>")
            return
        if path == "/api/whoami-v2":
            token = self._token(h)
            if token in self.valid_tokens:
                h.reply(
                    200,
                    json.dumps({"type": "user", "name": "tester"}).encode(),
                    content_type="application/json",
                )
            else:
                self._error(h, 401, "", "Invalid credentials in Authorization header")
            return
        if path.startswith("/api/resolve-cache/models/"):
            self._resolve_cache(h, path)
            return
        if path.startswith("/api/models/"):
            self._api(h, path)
            return
        parts = path.lstrip("/").split("/", 4)
        if len(parts) == 5 and parts[2] == "resolve":
            self._resolve(h, f"{parts[0]}/{parts[1]}", unquote(parts[3]), unquote(parts[4]))
            return
        h.reply(404, b"not found")

    def _resolve(self, h: Handler, repo_id: str, revision: str, file: str) -> None:
        repo = self._find(h, repo_id, revision)
        if repo is None:
            return
        data = repo.files_at(revision).get(file)
        if data is None and self.missing_file_as_repo:
            self._error(h, 401, "RepoNotFound", "Repository not found")
            return
        if data is None:
            self._error(h, 404, "EntryNotFound", f'{file} does not exist on "{revision}"')
            return
        commit = revision if revision in repo.older else repo.commit
        headers = {"X-Repo-Commit": commit}
        if len(data) >= LFS_THRESHOLD and self.cdn is not None:
            sha = hashlib.sha256(data).hexdigest()
            headers.update(
                {
                    "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(len(data)),
                    "ETag": f'"{sha}"',
                    "Location": f"{self.cdn.url}/lfs/{sha}?X-Amz-Signature=cdnsig123",
                }
            )
            h.reply(302, b"", headers)
            return
        headers.update(
            {
                "ETag": f'"{git_blob_sha1(data)}"',
                "Location": f"/api/resolve-cache/models/{repo_id}/{commit}/{quote(file)}",
            }
        )
        h.send_response(307)
        for key, value in {**headers, "Content-Length": "0"}.items():
            h.send_header(key, value)
        h.end_headers()

    def _resolve_cache(self, h: Handler, path: str) -> None:
        rest = path[len("/api/resolve-cache/models/") :].split("/", 3)
        repo = self.repos.get(f"{rest[0]}/{rest[1]}")
        data = repo.files_at(rest[2]).get(unquote(rest[3])) if repo else None
        if data is None:
            h.reply(404, b"not found")
            return
        etag = f'"{git_blob_sha1(data)}"'
        wanted = h.headers.get("Range")
        if wanted and wanted.startswith("bytes="):
            start_text, _, end_text = wanted[6:].partition("-")
            start = int(start_text)
            end = min(int(end_text) if end_text else len(data) - 1, len(data) - 1)
            h.reply(
                206,
                data[start : end + 1],
                {"Content-Range": f"bytes {start}-{end}/{len(data)}", "ETag": etag},
            )
            return
        h.reply(200, data, {"ETag": etag, "X-Repo-Commit": rest[2]})

    def _api(self, h: Handler, path: str) -> None:
        parts = path[len("/api/models/") :].split("/")
        repo_id = "/".join(parts[:2])
        if len(parts) >= 4 and parts[2] == "revision":
            repo = self._find(h, repo_id, unquote(parts[3]))
            if repo:
                body = {"id": repo_id, "sha": repo.commit, "siblings": [{"rfilename": f} for f in repo.files]}
                h.reply(200, json.dumps(body).encode(), content_type="application/json")
            return
        if len(parts) >= 4 and parts[2] == "tree":
            repo = self._find(h, repo_id, unquote(parts[3]))
            if repo:
                h.reply(200, json.dumps(self._tree(repo)).encode(), content_type="application/json")
            return
        h.reply(404, b"not found")

    @staticmethod
    def _tree(repo: Repo) -> list[dict]:
        entries, folders = [], set()
        for name, data in sorted(repo.files.items()):
            parents = name.split("/")[:-1]
            for i in range(1, len(parents) + 1):
                folders.add("/".join(parents[:i]))
            entry = {"type": "file", "path": name, "size": len(data), "oid": git_blob_sha1(data)}
            if len(data) >= LFS_THRESHOLD:
                entry["lfs"] = {
                    "oid": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": 134,
                }
            entries.append(entry)
        entries += [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders)]
        return entries
