"""A faster self-attention for the UNet on CPUs (measured by bench/: see bench/RESULTS.md).

PyTorch's CPU flash-attention kernel runs the SD UNet's long self-attentions (4096 tokens at 512²,
head size 64) at about 150 GFLOP/s here in bf16, less than half the bf16 matmul peak; it is a
third of a 512² UNet step. Computing softmax(QKᵀ/√d)·V for 128 query rows at a time does the
same arithmetic as two plain bf16 matmuls whose scores block stays in cache, and runs at about
220 GFLOP/s. Short or masked attentions (cross-attention on 77 tokens, the text encoder) keep
diffusers' own processor.
"""

from __future__ import annotations

from typing import Any

from diffusers.models.attention_processor import Attention, AttnProcessor2_0

#: Query rows per block: 128 ran fastest of 128/256/512/1024/4096 here (scores block ≈ 1 MB per head).
BLOCK = 128
#: Below this many key tokens the flash kernel is as fast and the blocks are not worth it.
MIN_TOKENS = 1024


def blocked_attention(query: Any, key: Any, value: Any, block: int = BLOCK) -> Any:
    """softmax(QKᵀ/√d)·V over (batch, heads, tokens, head_dim) tensors, `block` query rows at a time."""
    import torch

    scale = query.shape[-1] ** -0.5
    key_t = key.transpose(-1, -2).contiguous()
    value = value.contiguous()
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    for start in range(0, query.shape[-2], block):
        scores = torch.matmul(query[..., start : start + block, :] * scale, key_t)
        out[..., start : start + block, :] = torch.matmul(torch.softmax(scores, dim=-1), value)
    return out


class BlockedAttnProcessor(AttnProcessor2_0):
    """diffusers' AttnProcessor2_0, with long unmasked CPU attentions computed by `blocked_attention`."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: Any,
        encoder_hidden_states: Any = None,
        attention_mask: Any = None,
        temb: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        plain = (
            hidden_states.device.type != "cpu"
            or attention_mask is not None
            or attn.spatial_norm is not None
            or attn.group_norm is not None
            or attn.norm_q is not None
            or attn.norm_k is not None
            or hidden_states.ndim != 3
            or context.shape[1] < MIN_TOKENS
            or (encoder_hidden_states is not None and attn.norm_cross)
        )
        if plain:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        hidden_states = blocked_attention(query, key, value)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
