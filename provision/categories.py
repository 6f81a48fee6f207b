"""Model categories and the folders SD.Next reads them from.

Every folder was checked in SD.Next's source at the pinned tag 2026-01-22:
`modules/shared.py` (the `*_dir` / `*_models_path` options, all relative to `--models-dir`),
`modules/control/units/controlnet.py` (`<control_dir>/controlnet`) and the upscaler classes
in `modules/postprocess/*_model.py` (`models/<Upscaler.name>`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    name: str
    folder: str  # relative to the models root ($WORKSPACE/sdnext/models)
    what: str
    warning: str | None = None  # set when SD.Next at the pin no longer loads this category


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        Category("checkpoints", "Stable-diffusion", "single-file checkpoints"),
        Category("diffusers", "Diffusers", "diffusers-format model folders"),
        Category("unet", "UNET", "UNET / transformer weights"),
        Category("vae", "VAE", "VAE weights"),
        Category("text_encoder", "Text-encoder", "text encoders (CLIP, T5, ...)"),
        Category("lora", "Lora", "LoRA / LyCORIS networks"),
        Category("embeddings", "embeddings", "textual inversion embeddings"),
        Category("controlnet", "control/controlnet", "ControlNet models"),
        Category("esrgan", "ESRGAN", "ESRGAN upscalers"),
        Category("realesrgan", "RealESRGAN", "RealESRGAN upscalers"),
        Category("swinir", "SwinIR", "SwinIR upscalers"),
        Category("scunet", "SCUNet", "SCUNet upscalers"),
        Category("gfpgan", "GFPGAN", "GFPGAN face restoration"),
        Category("codeformer", "Codeformer", "CodeFormer face restoration"),
        Category("yolo", "yolo", "YOLO detailer models"),
        Category(
            "hypernetworks",
            "hypernetworks",
            "hypernetworks",
            warning="SD.Next 2026-01-22 no longer loads hypernetworks; the file is downloaded "
            "to models/hypernetworks but SD.Next will not use it",
        ),
    )
}

# Other names people use for a category (the design we replace called text encoders "clip").
ALIASES: dict[str, str] = {"clip": "text_encoder"}


def lookup(name: str) -> Category | None:
    """The category for a config name or alias, or None when unknown."""
    return CATEGORIES.get(ALIASES.get(name, name))


def valid_names() -> list[str]:
    return sorted([*CATEGORIES, *ALIASES])


def folders() -> list[str]:
    """Every folder the runtime creates under the models root."""
    return sorted({c.folder for c in CATEGORIES.values()})
