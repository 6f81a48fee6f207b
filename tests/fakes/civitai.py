"""CivitAI as FACTS.md describes it: version metadata, newest-first model versions, /api/v1/me,
and a download that needs a token (401 JSON without), refuses browser-like and default library
User-Agents, answers HEAD with 401, and 307s to presigned storage whose URL carries the name.
Storage (the CDN fake) answers 400 when an Authorization header reaches it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from urllib.parse import quote

from .cdn import FakeCDN
from .server import FakeServer, Handler


@dataclass
class VersionFile:
    name: str
    data: bytes
    type: str = "Model"
    format: str = "SafeTensor"
    primary: bool = True
    file_id: int = 1


@dataclass
class Version:
    version_id: int
    model_id: int
    files: list[VersionFile]
    needs_token: bool = True
    error: int | None = None  # 403 early access, 404, 410 archived ...
    model_type: str = "LORA"  # the model's type, as the API's model.type names it


@dataclass
class FakeCivitai(FakeServer):
    cdn: FakeCDN | None = None
    versions: dict[int, Version] = field(default_factory=dict)
    models: dict[int, list[int]] = field(default_factory=dict)  # model -> versions, newest first
    valid_tokens: set[str] = field(default_factory=set)
    download_faults: list[int] = field(default_factory=list)  # statuses for the next downloads
    # The signed-in account's file preferences (civitai issue 3861): without fileId, a download
    # serves the version's file of this format when it has one, not the primary file.
    preferred_format: str | None = None

    def add_version(self, version_id: int, model_id: int, files: list[VersionFile], **options) -> Version:
        version = Version(version_id, model_id, files, **options)
        self.versions[version_id] = version
        self.models.setdefault(model_id, []).insert(0, version_id)
        for file in files:
            self.cdn.add(f"/r2/{version_id}/{file.file_id}", file.data)
        return version

    def _json(self, h: Handler, status: int, body) -> None:
        h.reply(status, json.dumps(body).encode(), content_type="application/json")

    def _token(self, h: Handler) -> str | None:
        auth = h.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def handle(self, h: Handler, path: str, query: dict) -> None:
        agent = h.headers.get("User-Agent", "")
        if "Mozilla" in agent:
            h.reply(302, b"", {"Location": "/login?returnUrl=" + quote(path)})
            return
        if agent.startswith("python-requests/"):
            h.reply(403, b"<html>blocked by the WAF</html>", content_type="text/html")
            return
        token = self._token(h)
        if path == "/api/v1/me":
            if token in self.valid_tokens:
                self._json(h, 200, {"id": 7, "username": "tester"})
            else:
                self._json(h, 401, {"error": "Unauthorized"})
            return
        if path.startswith("/api/v1/model-versions/"):
            version = self.versions.get(int(path.rsplit("/", 1)[1]))
            if version is None:
                self._json(h, 404, {"error": "No version with id"})
                return
            self._json(h, 200, self._version_json(version))
            return
        if path.startswith("/api/v1/models/"):
            ids = self.models.get(int(path.rsplit("/", 1)[1]))
            if ids is None:
                self._json(h, 404, {"error": "No model with id"})
                return
            versions = [self._version_json(self.versions[v]) for v in ids]
            self._json(
                h, 200, {"id": int(path.rsplit("/", 1)[1]), "name": "model", "modelVersions": versions}
            )
            return
        if path.startswith("/api/download/models/"):
            self._download(h, int(path.rsplit("/", 1)[1]), query, token)
            return
        h.reply(404, b"not found")

    def _version_json(self, version: Version) -> dict:
        return {
            "model": {"name": f"model {version.model_id}", "type": version.model_type},
            "id": version.version_id,
            "modelId": version.model_id,
            "name": f"v{version.version_id}",
            "files": [
                {
                    "id": f.file_id,
                    "name": f.name,
                    "sizeKB": len(f.data) / 1024,
                    "type": f.type,
                    "primary": f.primary,
                    "metadata": {"format": f.format, "size": "full", "fp": "fp16"},
                    "hashes": {"SHA256": hashlib.sha256(f.data).hexdigest().upper()},
                    "downloadUrl": f"https://civitai.com/api/download/models/{version.version_id}",
                }
                for f in version.files
            ],
        }

    def _download(self, h: Handler, version_id: int, query: dict, token: str | None) -> None:
        if h.command == "HEAD":
            self._json(h, 401, {"error": "Unauthorized"})
            return
        version = self.versions.get(version_id)
        if version is None:
            self._json(h, 404, {"error": "Model not found"})
            return
        with self.lock:
            fault = self.download_faults.pop(0) if self.download_faults else None
        if fault:
            headers = {"Retry-After": "1"} if fault == 429 else {}
            h.reply(fault, b'{"error": "fault"}', headers, content_type="application/json")
            return
        if version.error:
            self._json(h, version.error, {"error": "refused"})
            return
        if version.needs_token and token not in self.valid_tokens:
            self._json(h, 401, {"error": "Unauthorized", "message": "The creator requires login"})
            return
        wanted = [
            f
            for f in version.files
            if (not query.get("type") or f.type == query["type"])
            and (not query.get("format") or f.format == query["format"])
        ]
        by_id = {str(f.file_id): f for f in version.files}
        preferred = [f for f in version.files if f.format == self.preferred_format]
        if query.get("fileId"):
            if query["fileId"] not in by_id:
                self._json(h, 404, {"error": "File not found"})
                return
            chosen = by_id[query["fileId"]]
        elif query.get("type") or query.get("format"):
            chosen = wanted[0]
        else:
            chosen = preferred[0] if preferred else next(f for f in version.files if f.primary)
        disposition = quote(f'attachment; filename="{chosen.name}"')
        location = (
            f"{self.cdn.url}/r2/{version_id}/{chosen.file_id}?X-Amz-Signature=r2sig"
            f"&response-content-disposition={disposition}"
        )
        h.reply(307, b"", {"Location": location})
