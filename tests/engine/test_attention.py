"""The blocked CPU self-attention: same numbers as torch's SDPA, used only where it pays."""

from __future__ import annotations

import torch

from engine.config import EngineConfig
from engine.diffusers_engine import DiffusersEngine


def test_blocked_attention_matches_torch_sdpa(monkeypatch):
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    import engine.attention
    from engine.attention import MIN_TOKENS, BlockedAttnProcessor, blocked_attention

    calls = []
    monkeypatch.setattr(engine.attention, "blocked_attention", lambda *a: calls.append(a[0].shape) or blocked_attention(*a))

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 300, 16, generator=generator) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(blocked_attention(q, k, v, block=128), expected, atol=1e-5)  # 300 = 2 blocks + a tail
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16).eval()
    tokens = torch.randn(1, MIN_TOKENS + 5, 32, generator=generator)
    short = torch.randn(1, 77, 32, generator=generator)
    with torch.inference_mode():
        for states in (tokens, short):
            attn.set_processor(AttnProcessor2_0())
            plain = attn(states)
            attn.set_processor(BlockedAttnProcessor())
            assert torch.allclose(attn(states), plain, atol=1e-5)
    # Only the long attention took the blocked path; the 77-token one kept diffusers' processor.
    assert calls == [(1, 2, MIN_TOKENS + 5, 16)]


def test_the_engine_uses_it_on_cpu_unless_told_not_to(tiny_model_dir):
    from engine.attention import BlockedAttnProcessor

    blocked = DiffusersEngine(EngineConfig(model=str(tiny_model_dir), dtype="fp32"))
    processors = blocked._model(None).pipe.unet.attn_processors.values()
    assert processors and all(isinstance(p, BlockedAttnProcessor) for p in processors)
    plain = DiffusersEngine(EngineConfig.from_env({"IMAGINE_MODEL": str(tiny_model_dir), "IMAGINE_CPU_ATTENTION": "sdpa"}))
    assert not any(isinstance(p, BlockedAttnProcessor) for p in plain._model(None).pipe.unet.attn_processors.values())


def test_decoders_run_channels_last_on_cpu(tiny_model_dir):
    model = DiffusersEngine(EngineConfig(model=str(tiny_model_dir), dtype="fp32"))._model(None)
    for decoder in (model.pipe.vae, model.tiny_decoder):
        conv = next(m for m in decoder.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
