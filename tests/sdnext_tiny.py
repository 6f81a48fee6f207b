"""Make a tiny random-weight Stable Diffusion 1.x pipeline (diffusers layout) and a LoRA for its
UNet (kohya keys, as CivitAI's LoRAs have them): small enough for SD.Next to load and run on a
CPU in seconds, real enough to go through SD.Next's own loaders.

    SDNEXT_VENV/bin/python tests/sdnext_tiny.py OUT     # -> OUT/tiny-sd/, OUT/tiny-lora.safetensors

Runs in SD.Next's environment (torch, diffusers, transformers at the lock's versions), never in
the test venv. Seeded: the same bytes on every run of the same versions."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


def tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over single characters (no merges): enough for a prompt to reach the UNet."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz0123456789,.!:<>":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "vocab.json").write_text(json.dumps(vocab))
        (Path(scratch) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(
            str(Path(scratch) / "vocab.json"), str(Path(scratch) / "merges.txt"), model_max_length=77
        )


def main(out: Path) -> None:
    torch.manual_seed(0)
    tokens = tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokens.get_vocab()),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        sample_size=64,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokens,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(out / "tiny-sd", safe_serialization=True)

    # A rank-4 LoRA on every attention projection, strong enough to change a 2-step image.
    lora = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and ".attn" in name:
            key = "lora_unet_" + name.replace(".", "_")
            lora[f"{key}.lora_down.weight"] = torch.randn(4, module.in_features) * 0.5
            lora[f"{key}.lora_up.weight"] = torch.randn(module.out_features, 4) * 0.5
            lora[f"{key}.alpha"] = torch.tensor(4.0)
    save_file(lora, str(out / "tiny-lora.safetensors"), metadata={"ss_network_module": "networks.lora"})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
