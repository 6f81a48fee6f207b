"""The TOML plan: every form, its destination, and every kind of mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provision import categories
from provision.config import ConfigError, load_plan
from provision.plan import CivitaiSpec, GDriveSpec, HuggingFaceSpec, UrlSpec

ROOT = Path("/ws/sdnext/models")


def plan(text: str, env: dict | None = None):
    return load_plan(text, models_root=ROOT, env=env or {})


def problems(text: str, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        plan(text, env)
    return err.value.problems


def only(text: str, env: dict | None = None):
    (item,) = plan(text, env).items
    return item


def test_huggingface_table_lands_in_category_folder_with_file_basename():
    item = only('[models.checkpoints.sd15]\nrepo = "org/sd15"\nfile = "sub/dir/model.safetensors"\n')
    assert item.spec == HuggingFaceSpec("org/sd15", "sub/dir/model.safetensors", "main")
    assert item.dest == ROOT / "Stable-diffusion" / "model.safetensors"
    assert item.source == "huggingface"


def test_huggingface_revision_gated_and_rename():
    item = only(
        '[models.vae.x]\nsource = "huggingface"\nrepo = "org/r"\nfile = "ae.safetensors"\n'
        'revision = "v1.0"\ngated = true\nfilename = "flux-ae.safetensors"\n'
    )
    assert item.spec.revision == "v1.0" and item.spec.gated
    assert item.dest == ROOT / "VAE" / "flux-ae.safetensors"


def test_whole_repository_goes_into_a_folder_named_after_the_entry():
    item = only('[models.diffusers.sdxl]\nrepo = "org/sdxl"\ninclude = ["*.json"]\nexclude = "*.bin"\n')
    assert item.is_repository
    assert item.spec.include == ("*.json",) and item.spec.exclude == ("*.bin",)
    assert item.dest == ROOT / "Diffusers" / "sdxl"


@pytest.mark.parametrize(
    ("entry", "version", "model", "id_from"),
    [
        ("version_id = 135867", 135867, None, "version_id"),
        ('version_id = "135867"', 135867, None, "version_id"),
        ("model_id = 122359", None, 122359, "model_id (newest version)"),
        (
            'url = "https://civitai.com/models/139562?modelVersionId=798204"',
            798204,
            139562,
            "modelVersionId in the page URL",
        ),
        (
            'url = "https://civitai.com/models/139562/some-slug"',
            None,
            139562,
            "model page URL (no modelVersionId)",
        ),
        (
            'url = "https://civitai.com/api/download/models/798204?type=Model&format=SafeTensor"',
            798204,
            None,
            "download URL",
        ),
    ],
)
def test_civitai_ids_from_every_accepted_key(entry, version, model, id_from):
    item = only(f'[models.lora.x]\nsource = "civitai"\n{entry}\n')
    assert isinstance(item.spec, CivitaiSpec)
    assert (item.spec.version_id, item.spec.model_id, item.spec.id_from) == (
        version,
        model,
        id_from,
    )
    assert item.dest == ROOT / "Lora"  # the name comes from CivitAI later


def test_civitai_source_is_inferred_and_file_type_kept():
    item = only('[models.checkpoints.j]\nversion_id = 1\ntype = "Pruned Model"\nformat = "SafeTensor"\n')
    assert item.source == "civitai"
    assert (item.spec.file_type, item.spec.file_format) == ("Pruned Model", "SafeTensor")


def test_url_with_headers_expands_env_and_keeps_it_out_of_repr():
    item = only(
        '[models.esrgan.x]\nurl = "https://example.com/a/4x.pth"\n'
        'headers = { Authorization = "Bearer ${MIRROR_TOKEN}" }\n',
        env={"MIRROR_TOKEN": "s3cr3t-value"},
    )
    assert isinstance(item.spec, UrlSpec)
    assert item.spec.headers == {"Authorization": "Bearer s3cr3t-value"}
    assert "s3cr3t-value" not in repr(item)
    assert item.dest == ROOT / "ESRGAN"


def test_header_referencing_an_unset_variable_is_an_error():
    found = problems(
        '[models.esrgan.x]\nurl = "https://example.com/a.pth"\nheaders = { X-Key = "${NOPE}" }\n'
    )
    assert found == ["models.esrgan.x.headers.X-Key: references ${NOPE}, which is not set in the environment"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://huggingface.co/org/repo/resolve/main/vae/x.safetensors?download=true",
            HuggingFaceSpec("org/repo", "vae/x.safetensors", "main"),
        ),
        (
            "https://huggingface.co/org/repo/resolve/refs%2Fpr%2F3/x.safetensors",
            HuggingFaceSpec("org/repo", "x.safetensors", "refs/pr/3"),
        ),
        (
            "https://civitai.com/api/download/models/225230",
            CivitaiSpec(225230, None, "download URL"),
        ),
        (
            "https://drive.google.com/file/d/1aBcDeFgHiJkLmNoPqRs/view?usp=sharing",
            GDriveSpec("1aBcDeFgHiJkLmNoPqRs"),
        ),
        (
            "https://drive.google.com/open?id=1aBcDeFgHiJkLmNoPqRs",
            GDriveSpec("1aBcDeFgHiJkLmNoPqRs"),
        ),
        (
            "https://drive.google.com/uc?id=1aBcDeFgHiJkLmNoPqRs&export=download",
            GDriveSpec("1aBcDeFgHiJkLmNoPqRs"),
        ),
        (
            "https://drive.usercontent.google.com/download?id=1aBcDeFgHiJkLmNoPqRs&confirm=t",
            GDriveSpec("1aBcDeFgHiJkLmNoPqRs"),
        ),
        ("https://example.com/files/x.pth", UrlSpec("https://example.com/files/x.pth")),
    ],
)
def test_simple_form_recognises_known_services(url, expected):
    item = only(f'[models.lora]\nthing = "{url}"\n')
    assert item.spec == expected


def test_simple_form_hf_url_gets_the_file_name_from_the_path():
    item = only('[models.vae]\nv = "https://huggingface.co/o/r/resolve/main/sdxl_vae.safetensors"\n')
    assert item.dest == ROOT / "VAE" / "sdxl_vae.safetensors"


def test_configured_endpoints_are_recognised_by_host_and_port():
    env = {"HF_ENDPOINT": "http://127.0.0.1:8001", "CIVITAI_ENDPOINT": "http://127.0.0.1:8002"}
    text = (
        '[models.lora]\na = "http://127.0.0.1:8001/o/r/resolve/main/a.safetensors"\n'
        'b = "http://127.0.0.1:8002/api/download/models/7"\n'
        'c = "http://127.0.0.1:8003/o/r/resolve/main/c.safetensors"\n'
    )
    sources = [i.source for i in plan(text, env).items]
    assert sources == ["huggingface", "civitai", "url"]


def test_explicit_url_source_with_drive_link_still_uses_drive_flow():
    item = only(
        '[models.lora.x]\nsource = "url"\nurl = "https://drive.google.com/file/d/1aBcDeFgHiJkLmNoPqRs/view"\n'
    )
    assert item.spec == GDriveSpec("1aBcDeFgHiJkLmNoPqRs")


def test_every_category_maps_to_the_sdnext_folder():
    expected = {
        "checkpoints": "Stable-diffusion",
        "diffusers": "Diffusers",
        "unet": "UNET",
        "vae": "VAE",
        "text_encoder": "Text-encoder",
        "clip": "Text-encoder",
        "lora": "Lora",
        "embeddings": "embeddings",
        "controlnet": "control/controlnet",
        "esrgan": "ESRGAN",
        "realesrgan": "RealESRGAN",
        "swinir": "SwinIR",
        "scunet": "SCUNet",
        "hypernetworks": "hypernetworks",
        "yolo": "yolo",
        "wildcards": "wildcards",
        "styles": "styles",
        "autocomplete": "autocomplete",
    }
    text = "".join(f'[models.{c}]\nm = "https://example.com/{c}.bin"\n' for c in expected)
    result = plan(text)
    assert {i.category: i.folder for i in result.items} == {c: ROOT / f for c, f in expected.items()}
    assert sorted([*expected, "gfpgan", "codeformer"]) == sorted(categories.valid_names())


@pytest.mark.parametrize("removed", ["gfpgan", "codeformer"])
def test_a_category_whose_folder_the_pinned_tag_removed_is_refused_with_why(removed):
    found = problems(f'[models.{removed}]\nface = "https://example.com/GFPGANv1.4.pth"\n')
    assert len(found) == 1
    assert found[0].startswith(f"models.{removed}: not a folder of SD.Next 2026-07-14: ")
    assert "removed the GFPGAN and CodeFormer face restorers" in found[0] and "[models.yolo]" in found[0]


def test_realesrgan_is_downloaded_with_a_warning_that_sdnext_cannot_load_it_here():
    result = plan('[models.realesrgan]\nx4 = "https://example.com/RealESRGAN_x4plus.pth"\n')
    assert len(result.items) == 1
    assert any("basicsr" in w and "models/RealESRGAN" in w for w in result.warnings)


def test_deprecated_category_is_accepted_with_a_warning():
    result = plan('[models.hypernetworks]\nh = "https://example.com/h.pt"\n')
    assert len(result.items) == 1
    assert any("no longer loads hypernetworks" in w for w in result.warnings)


def test_all_problems_are_reported_at_once_with_table_paths():
    found = problems(
        '[models.lora.detail-tweaker]\nsource = "url"\n\n'
        '[models.lora.other]\nrepo = "a/b"\nfiel = "x.safetensors"\n\n'
        '[models.loras.typo]\nurl = "https://example.com/x"\n\n'
        '[models.vae.bad-source]\nsource = "civit"\nversion_id = 1\n'
    )
    assert 'models.lora.detail-tweaker: missing "url"' in found
    assert "models.lora.other: unknown key 'fiel' (did you mean \"file\"?)" in found
    assert any(p.startswith('models.loras: unknown category (did you mean "lora"?) (valid: ') for p in found)
    assert any("checkpoints" in p and "text_encoder" in p for p in found if p.startswith("models.loras"))
    assert (
        "models.vae.bad-source.source: unknown source 'civit' (did you mean \"civitai\"?) (valid: huggingface, civitai, url, gdrive)"
        in found
    )
    assert len(found) == 4


def test_key_of_another_source_is_named_as_such():
    (found,) = problems('[models.lora.x]\nrepo = "a/b"\nfile = "f.safetensors"\nversion_id = 3\n')
    assert "unknown key 'version_id'" in found and "belongs to another source" in found


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            'repo = "https://huggingface.co/a/b"',
            'is not a repository id like "owner/name" (give "owner/name", not a URL)',
        ),
        ('repo = "a/b"\nfile = "../x.safetensors"', "must be a path inside the repository"),
        ('repo = "a/b"\ngated = "yes"', "gated: must be true or false"),
        ("version_id = -4", "version_id: must be a positive number"),
        ('url = "ftp://example.com/x"', "is not an http(s) URL"),
        ('source = "civitai"\nurl = "https://example.com/x"', "not a CivitAI model URL"),
        ('name = "x"', "cannot tell the source"),
        ("url = 5", "url: must be a non-empty string"),
        (
            'repo = "a/b"\nfile = "f.bin"\ninclude = ["*.json"]',
            '"include"/"exclude" filter whole repositories',
        ),
        (
            'repo = "a/b"\nrevision = "../../../etc"',
            "revision: '../../../etc' is not a branch, tag or commit",
        ),
        (
            'url = "https://huggingface.co/a/b/resolve/main/x.safetensors"\nrevision = "v2"',
            'revision: "v2" but the URL asks for revision "main"; drop one of them',
        ),
        (
            'url = "https://huggingface.co/a/b/resolve/main/x.safetensors"\ninclude = ["*.json"]',
            'include: filters whole repositories, but "url" names one file',
        ),
    ],
)
def test_invalid_entries_get_a_message_naming_the_key(entry, message):
    (found,) = problems(f"[models.lora.x]\n{entry}\n")
    assert found.startswith("models.lora.x")
    assert message in found


def test_unknown_top_level_key_and_missing_models():
    found = problems('[model.lora]\nx = "https://example.com/x"\n')
    assert any('model: unknown top-level key (did you mean "models"?)' in p for p in found)
    assert any("no [models] table" in p for p in found)


def test_not_toml_is_one_clear_problem():
    (found,) = problems("[models.lora\nx = 1\n")
    assert "not valid TOML" in found


def test_two_entries_with_the_same_destination_are_an_error():
    found = problems(
        '[models.vae]\na = "https://huggingface.co/o/r/resolve/main/vae.safetensors"\n'
        '[models.vae.b]\nrepo = "o/other"\nfile = "x/vae.safetensors"\n'
    )
    assert found == [
        f"models.vae.b: same destination as models.vae.a ({ROOT}/VAE/vae.safetensors): give one of"
        ' them another "filename"'
    ]


def test_text_encoder_and_its_alias_collide_on_the_same_folder():
    found = problems(
        '[models.clip]\na = "https://huggingface.co/o/r/resolve/main/clip_l.safetensors"\n'
        '[models.text_encoder]\nb = "https://huggingface.co/o/s/resolve/main/clip_l.safetensors"\n'
    )
    assert len(found) == 1 and "same destination as models.clip.a" in found[0]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("../../../etc/passwd", "passwd"),
        ("..\\..\\evil.safetensors", "evil.safetensors"),
        ("/abs/path/model.safetensors", "model.safetensors"),
        ("we\x00ird\x1bname\n.pt", "weirdname.pt"),
        (".hidden.safetensors", "hidden.safetensors"),
        ("a" * 300 + ".safetensors", "a" * 243 + ".safetensors"),
    ],
)
def test_filenames_are_reduced_to_a_safe_basename_inside_the_root(given, expected):
    # json.dumps writes a valid TOML basic string, control characters escaped as \uXXXX
    item = only(f'[models.lora.x]\nurl = "https://example.com/x"\nfilename = {json.dumps(given)}\n')
    assert item.filename == expected
    assert item.dest.parent == ROOT / "Lora"


@pytest.mark.parametrize("given", ["..", "../..", "/", " . "])
def test_a_filename_with_nothing_usable_is_an_error(given):
    (found,) = problems(f'[models.lora.x]\nurl = "https://example.com/x"\nfilename = "{given}"\n')
    assert found == f"models.lora.x.filename: {given.strip()!r} has no usable file name"


def test_entry_name_that_cannot_be_a_folder_is_an_error_for_whole_repos():
    (found,) = problems('[models.diffusers]\n".." = { repo = "a/b" }\n')
    assert "cannot be used as a folder name" in found


def test_a_hugging_face_url_entry_honours_gated_and_an_agreeing_revision():
    item = only(
        '[models.vae.x]\nurl = "https://huggingface.co/a/b/resolve/v2/x.safetensors"\n'
        'gated = true\nrevision = "v2"\n'
    )
    assert item.spec == HuggingFaceSpec("a/b", "x.safetensors", "v2", gated=True)


def test_a_filename_with_folders_is_flattened_with_a_warning():
    result = plan('[models.esrgan.x]\nurl = "https://example.com/x.pth"\nfilename = "sub/dir/x4.pth"\n')
    (item,) = result.items
    assert item.filename == "x4.pth"
    assert result.warnings == [
        "models.esrgan.x.filename: 'sub/dir/x4.pth' names folders; only the file name 'x4.pth' is kept"
        " (every file of a category goes into its folder)"
    ]
