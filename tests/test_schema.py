"""schema/models.schema.json: editors check a config with it (taplo, Even Better TOML); it must
accept every shipped example and refuse what the config stage refuses on its own."""

from __future__ import annotations

import json

import pytest

from provision import categories
from provision.config import EXTENSION_KEYS, KEYS_BY_SOURCE, parse_toml

from .conftest import REPO

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema comes with the test extras")
SCHEMA = json.loads((REPO / "schema" / "models.schema.json").read_text())


def problems(text: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [error.message for error in validator.iter_errors(parse_toml(text, "test"))]


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_every_example_is_valid(example):
    assert problems(example.read_text()) == []


def test_the_schema_knows_every_category_and_key_the_tool_knows():
    assert sorted(SCHEMA["properties"]["models"]["properties"]) == sorted(categories.valid_names())
    keys = set().union(*KEYS_BY_SOURCE.values())
    assert sorted(SCHEMA["$defs"]["table"]["properties"]) == sorted(keys)
    assert sorted(SCHEMA["$defs"]["extension"]["properties"]) == sorted(EXTENSION_KEYS)


def test_a_config_of_extensions_only_is_valid():
    commit = "a" * 40
    assert problems(f'[extensions.tiny]\nurl = "https://github.com/a/b"\ncommit = "{commit}"\n') == []


@pytest.mark.parametrize(
    "text",
    [
        '[models.lora.x]\nrepo = "a/b"\ngated = "yes"\n',
        "[models.lora.x]\nversion_id = -4\n",
        "[models.lora.x]\nurl = 5\n",
        '[models.lora.x]\nurl = "ftp://example.com/x"\n',
        '[models.lora.x]\nurl = "https://example.com/x"\nsha256 = "abc"\n',
        '[models.lora.x]\nurl = "https://example.com/x"\nsize = 0\n',
        '[models.lora.x]\nurl = "https://example.com/x"\nheaders = { A = "v\\r\\nB: 1" }\n',
        '[models.lora.x]\nrepo = "a/b"\nreviison = "v1"\n',
        '[models.loras.x]\nurl = "https://example.com/x"\n',
        '[modles.lora]\nx = "https://example.com/x"\n',
        '[models.lora.x]\nrepo = "a/b"\nrevision = "../../etc"\n',
        "[models]\n",
        '[models.gfpgan]\nx = "https://example.com/GFPGANv1.4.pth"\n',
        '[extensions.x]\nurl = "https://github.com/a/b"\ncommit = "main"\n',
        '[extensions.x]\nurl = "https://example.com/x.tar.gz"\n',
        '[extensions."../x"]\nurl = "https://example.com/x.tar.gz"\nsha256 = "' + "a" * 64 + '"\n',
    ],
)
def test_what_the_config_stage_refuses_the_schema_refuses_too(text):
    assert problems(text), text
