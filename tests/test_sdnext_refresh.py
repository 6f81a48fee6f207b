"""sdnext-refresh against SD.Next as its releases answer: the pinned tag 2026-07-14 (four
rescans: refresh-loras 200, the others 204), an older tag (three, 200), and one that lists no API."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from provision.sdnext import main

from .fakes.server import FakeServer

PINNED = ("refresh-checkpoints", "refresh-vae", "refresh-unets", "refresh-loras")
OLDER = ("refresh-checkpoints", "refresh-vae", "refresh-loras")  # tag 2026-01-22


@dataclass
class FakeSDNext(FakeServer):
    rescans: tuple[str, ...] = PINNED
    answer: int = 204
    openapi: bool = True
    failing: set[str] = field(default_factory=set)

    def handle(self, h, path, query):
        name = path.rsplit("/", 1)[-1]
        if path == "/sdapi/v1/status":
            h.reply(200, b'{"status": "idle"}', content_type="application/json")
        elif path == "/openapi.json" and self.openapi:
            paths = {f"/sdapi/v1/{n}": {"post": {}} for n in self.rescans}
            h.reply(200, json.dumps({"paths": paths}).encode(), content_type="application/json")
        elif h.command == "POST" and name in self.rescans:
            if name in self.failing:
                h.reply(500, b"")
            elif name == "refresh-loras":
                h.reply(200, b'["detail"]', content_type="application/json")
            else:
                h.reply(self.answer, b"")
        else:
            h.reply(404, b'{"detail": "Not Found"}', content_type="application/json")


@pytest.fixture
def sdnext():
    server = FakeSDNext().start()
    yield server
    server.stop()


def refresh(server, capsys) -> tuple[int, str]:
    code = main(["--port", server.url.rsplit(":", 1)[1], "--timeout", "5"])
    return code, capsys.readouterr().out


def posted(server) -> list[str]:
    return sorted(r.path.rsplit("/", 1)[-1] for r in server.requests if r.method == "POST")


def test_the_pinned_tag_gets_its_four_rescans_and_a_note_for_text_encoders(sdnext, capsys):
    code, out = refresh(sdnext, capsys)
    assert code == 0, out
    assert posted(sdnext) == sorted(PINNED)
    assert "refresh-unets: 204 (UNET rescanned)" in out and "refresh-loras: 200 (Lora rescanned)" in out
    assert "no rescan endpoint for Text-encoder at tag 2026-07-14: new files there show after" in out


def test_an_older_sdnext_without_refresh_unets_gets_a_note_for_unet(sdnext, capsys):
    sdnext.rescans, sdnext.answer = OLDER, 200
    code, out = refresh(sdnext, capsys)
    assert code == 0, out
    assert posted(sdnext) == sorted(OLDER)
    assert "this SD.Next has no refresh-unets: new UNET files show after" in out


def test_without_openapi_every_rescan_is_tried_and_404_is_a_note(sdnext, capsys):
    sdnext.openapi = False
    sdnext.rescans = ("refresh-checkpoints", "refresh-unets", "refresh-loras")  # one that lost refresh-vae
    code, out = refresh(sdnext, capsys)
    assert code == 0, out
    assert posted(sdnext) == sorted(PINNED)
    assert "lists no API (/openapi.json)" in out and "this SD.Next has no refresh-vae" in out


def test_a_rescan_that_fails_is_a_failure(sdnext, capsys):
    sdnext.failing = {"refresh-vae"}
    code, out = refresh(sdnext, capsys)
    assert code == 1
    assert "refresh-vae: failed with HTTP 500" in out
