"""A tiny, random-weight Stable Diffusion model built offline in seconds.

Tests, the CI and new users without a real checkpoint need a model that has the real structure
(CLIP tokenizer and text encoder, UNet with cross-attention, a VAE that downsamples by 8) but no
download. `build_tiny_model` writes one as a diffusers folder and, on request, as a single-file
`.safetensors` checkpoint in the original (LDM) key layout, so both loading paths run for real.

The images it makes are coloured noise; what matters is that every code path is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_SEED = 1234
TINY_DECODER_DIR = "taesd"


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's byte-level BPE maps every byte to a printable character; a vocabulary of those
    # characters (with and without the end-of-word marker) tokenises any text with no merges.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def write_tiny_tokenizer(folder: Path) -> int:
    """Write a character-level CLIP tokenizer; return its vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}),
        encoding="utf-8",
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "do_lower_case": True,
            }
        ),
        encoding="utf-8",
    )
    return len(vocab)


def build_tiny_pipeline(folder: Path | None = None):  # -> StableDiffusionPipeline
    """Build the tiny pipeline in memory (and save it as a diffusers folder when `folder` is given)."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(TINY_SEED)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp) / "tokenizer"
        vocab_size = write_tiny_tokenizer(tok_dir)
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=32,
        )
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()
    # Four blocks so the VAE downsamples by 8 like the real one (and survives the single-file format).
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    ).eval()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if folder is not None:
        pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


def build_tiny_sdxl_pipeline(folder: Path | None = None):  # -> StableDiffusionXLPipeline
    """The SDXL layout in miniature: two text encoders (one pooled), size/crop conditioning."""
    import tempfile

    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(TINY_SEED)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_size = write_tiny_tokenizer(Path(tmp) / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(Path(tmp) / "tokenizer", model_max_length=77)
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=32,
    )
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 32, cross_attention_dim=64,
    ).eval()
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=64,
    ).eval()
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(config).eval(),
        text_encoder_2=CLIPTextModelWithProjection(config).eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1),
    )
    if folder is not None:
        pipe.save_pretrained(folder, safe_serialization=True)
        _readable_by_all(folder)
    return pipe


def build_tiny_decoder(folder: Path | None = None):  # -> AutoencoderTiny
    """A TAESD-shaped tiny decoder with random weights, for the grid fast path in tests."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(TINY_SEED + 1)
    decoder = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    ).eval()
    # Random weights put every pixel near black; spread the last layer so images differ visibly.
    with torch.no_grad():
        last = decoder.decoder.layers[-1]
        last.weight.mul_(8.0)
        last.bias.fill_(0.5)
    if folder is not None:
        decoder.save_pretrained(folder, safe_serialization=True)
    return decoder


def _readable_by_all(folder: Path) -> None:
    # safetensors writes owner-only files; a model in a shared volume must be readable by every user.
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def build_tiny_model(folder: str | Path, single_file: bool = True) -> Path:
    """Write the tiny model as a diffusers folder (plus `tiny.safetensors` if asked); return the folder.

    A tiny decoder for the grid fast path goes in `taesd/` beside the model's components.
    """
    folder = Path(folder)
    pipe = build_tiny_pipeline(folder)
    build_tiny_decoder(folder / TINY_DECODER_DIR)
    if single_file:
        write_single_file(pipe, folder / "tiny.safetensors")
    _readable_by_all(folder)
    return folder


# --- diffusers -> original (LDM) single-file layout ---------------------------------------------
# Written from the structure of both formats: LDM numbers the UNet's blocks as a flat list of
# "input_blocks" / "output_blocks" (resnet at .0, attention at .1, resampler last), and the VAE's
# decoder blocks in reverse order. diffusers' own from_single_file converter is the test oracle.

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def _unet_key(key: str, layers: int, up_has_attention: list[bool]) -> str:
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for name, ldm in top.items():
        if key.startswith(name + "."):
            return ldm + key[len(name):]
    parts = key.split(".")
    span = layers + 1
    if parts[0] == "mid_block":
        sub, idx, rest = parts[1], int(parts[2]), parts[3:]
        slot = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(sub, idx)]
        prefix = f"middle_block.{slot}"
    else:
        block, sub, idx, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if sub == "downsamplers":
            prefix, rest = f"input_blocks.{(block + 1) * span}.0", ["op", *rest[1:]]
        elif sub == "upsamplers":
            prefix = f"output_blocks.{block * span + layers}.{2 if up_has_attention[block] else 1}"
        elif parts[0] == "down_blocks":
            prefix = f"input_blocks.{1 + block * span + idx}.{0 if sub == 'resnets' else 1}"
        else:
            prefix = f"output_blocks.{block * span + idx}.{0 if sub == 'resnets' else 1}"
    if sub == "resnets":
        rest = [_RESNET.get(rest[0], rest[0]), *rest[1:]]
    return prefix + "." + ".".join(rest)


def _vae_key(key: str, blocks: int) -> tuple[str, bool]:
    """Return the LDM key and whether the tensor must become a 1x1 conv weight."""
    parts = key.split(".")
    side = parts[0]
    if side not in ("encoder", "decoder"):
        return key, False  # quant_conv / post_quant_conv keep their names
    if parts[1] == "conv_norm_out":
        return ".".join([side, "norm_out", *parts[2:]]), False
    if parts[1] == "mid_block":
        sub, idx, rest = parts[2], int(parts[3]), parts[4:]
        if sub == "resnets":
            rest = ["nin_shortcut" if r == "conv_shortcut" else r for r in rest]
            return ".".join([side, "mid", f"block_{idx + 1}", *rest]), False
        names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
        layer = names[rest[0]]
        tail = rest[2:] if rest[0] == "to_out" else rest[1:]
        return ".".join([side, "mid", "attn_1", layer, *tail]), layer in ("q", "k", "v", "proj_out") and tail[-1] == "weight"
    if parts[1] in ("down_blocks", "up_blocks"):
        block = int(parts[2])
        ldm_block = block if side == "encoder" else blocks - 1 - block
        group = "down" if side == "encoder" else "up"
        if parts[3] == "resnets":
            rest = ["nin_shortcut" if r == "conv_shortcut" else r for r in parts[5:]]
            return ".".join([side, group, str(ldm_block), "block", parts[4], *rest]), False
        sampler = "downsample" if parts[3] == "downsamplers" else "upsample"
        return ".".join([side, group, str(ldm_block), sampler, *parts[5:]]), False
    return key, False


def write_single_file(pipe, path: str | Path) -> Path:
    """Save an SD1-layout pipeline as one original-format `.safetensors` checkpoint."""
    from safetensors.torch import save_file

    state: dict = {}
    unet = pipe.unet
    up_has_attention = ["CrossAttn" in t for t in unet.config.up_block_types]
    for key, tensor in unet.state_dict().items():
        state["model.diffusion_model." + _unet_key(key, unet.config.layers_per_block, up_has_attention)] = tensor
    blocks = len(pipe.vae.config.block_out_channels)
    for key, tensor in pipe.vae.state_dict().items():
        new_key, to_conv = _vae_key(key, blocks)
        state["first_stage_model." + new_key] = tensor.reshape(*tensor.shape, 1, 1) if to_conv else tensor
    for key, tensor in pipe.text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + key] = tensor
    path = Path(path)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
