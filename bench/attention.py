"""The blocked CPU attention now lives in the engine; the bench imports it from there."""

from engine.attention import BLOCK, MIN_TOKENS, BlockedAttnProcessor, blocked_attention

__all__ = ["BLOCK", "MIN_TOKENS", "BlockedAttnProcessor", "blocked_attention"]
