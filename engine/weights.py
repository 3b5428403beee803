"""Prompt weights: the syntax people already type, translated into compel's.

Users arrive with AUTOMATIC1111 habits (`(word:1.3)`, `(word)`, `[word]`) and Midjourney habits
(`hot dog::1.5 animal::-0.5`). compel does the actual weighting of the text embeddings; this module
only rewrites the syntax, and it never fails on odd text: brackets that do not pair up are kept as
literal characters, because a prompt with a stray ")" should still draw something.

Nested groups are flattened into runs that each carry the product of their weights (compel would
multiply them the same way), so every group we emit is a flat `(words)w` that compel's parser is
known to accept. Words compel could not parse inside a group (a lone "-", "a=b") are left outside
it at weight 1 instead of breaking the whole prompt.
"""

from __future__ import annotations

import math
import re

from .types import PromptError

#: A1111 weights: `(text)` multiplies attention by 1.1, `[text]` divides by it (compel's "-" base is 0.9).
PAREN_WEIGHT = 1.1
BRACKET_WEIGHT = 0.9
#: Weights beyond this only produce noise; nested groups are clamped here so the product stays finite.
MAX_WEIGHT = 100.0

_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_A1111_WEIGHT = re.compile(r":\s*(" + _NUMBER + r")\s*$")
# compel's own `(text)1.3` / `(text)++`, accepted so that already-converted text converts to itself.
_COMPEL_SUFFIX = re.compile(r"(?:([0-9]+(?:\.[0-9]+)?|\.[0-9]+)|(\++|-+))(?!\w|\.[0-9])")
_MJ_WEIGHT = re.compile(r"::(" + _NUMBER + r")?")
# Text that already uses compel's operators is passed through untouched.
_COMPEL_NATIVE = re.compile(r"\)\s*\.(?:and|add|blend|swap|attend)\(|\b(?:withLora|useLora)\(")
_SYNTAX = r'()",.+\-='
# A word compel parses as plain text inside `( )` (mirrors compel's non_syntax_word, conservatively).
_SAFE_WORD = re.compile(rf"(?:\\[{_SYNTAX}]|\\(?![{_SYNTAX}])|[^\s{_SYNTAX}\\]|[,.]|[-+](?=[^\s{_SYNTAX}]))+")
_OPEN_FOR = {")": "(", "]": "["}


def _match_brackets(text: str) -> tuple[dict[int, int], set[int]]:
    """Pair up unescaped brackets; returns open->close positions and the escaped positions.

    A closer that does not match the innermost open bracket is literal, and so is any opener left
    unclosed at the end: A1111 is forgiving about stray brackets and so are we.
    """
    pairs: dict[int, int] = {}
    escaped: set[int] = set()
    stack: list[int] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "()[]":
            escaped.add(i)
            i += 2
            continue
        if c in "([":
            stack.append(i)
        elif c in ")]" and stack and text[stack[-1]] == _OPEN_FOR[c]:
            pairs[stack.pop()] = i
        i += 1
    return pairs, escaped


def _group_weight(text: str, start: int, end: int) -> tuple[float, int, int]:
    """Weight of the group text[start:end+1], where its content ends and where scanning resumes."""
    if text[start] == "[":
        return BRACKET_WEIGHT, end, end + 1
    weight, content_end = PAREN_WEIGHT, end
    colon = _A1111_WEIGHT.search(text, start + 1, end)
    if colon:
        weight, content_end = max(0.0, float(colon.group(1))), colon.start()
    resume = end + 1
    suffix = _COMPEL_SUFFIX.match(text, resume)
    if suffix:
        if suffix.group(1):
            factor = float(suffix.group(1))
        else:
            run = suffix.group(2)
            factor = (PAREN_WEIGHT if run[0] == "+" else BRACKET_WEIGHT) ** len(run)
        weight = weight * factor if colon else factor
        resume = suffix.end()
    return weight, content_end, resume


_Piece = tuple[str, float]


def _scan(text: str) -> tuple[list[tuple[str, list[_Piece], float | None]], bool]:
    """Split into `::` segments of weighted pieces; also says whether any weight syntax was seen.

    Each segment is (raw text, pieces, raw `::` weight or None when unweighted).
    """
    pairs, escaped = _match_brackets(text)
    segments: list[tuple[str, list[_Piece], float | None]] = []
    pieces: list[_Piece] = []
    buf: list[str] = []
    weights = [1.0]
    closers: list[tuple[int, int]] = []  # (where the content ends, where scanning resumes)
    seg_start = 0
    syntax = bool(pairs)

    def flush() -> None:
        if buf:
            pieces.append(("".join(buf), weights[-1]))
            buf.clear()

    i = 0
    while i < len(text):
        if closers and i == closers[-1][0]:
            flush()
            weights.pop()
            i = closers.pop()[1]
            continue
        c = text[i]
        if i in escaped:
            buf.append(text[i + 1])
            i += 2
        elif i in pairs:
            flush()
            weight, content_end, resume = _group_weight(text, i, pairs[i])
            weights.append(min(MAX_WEIGHT, weights[-1] * weight))
            closers.append((content_end, resume))
            i += 1
        elif c == ":" and not closers and text.startswith("::", i):
            flush()
            match = _MJ_WEIGHT.match(text, i)
            assert match is not None
            value = float(match.group(1)) if match.group(1) else 1.0
            segments.append((text[seg_start:i], pieces, value))
            pieces, seg_start, syntax = [], match.end(), True
            i = match.end()
        else:
            buf.append(c)
            i += 1
    flush()
    segments.append((text[seg_start:], pieces, None))
    return segments, syntax


def split_weighted(text: str) -> list[tuple[str, float]]:
    """Midjourney `::` segments with their raw weights, for engines that take several weighted prompts.

    Segment text is returned as typed (A1111 brackets included); empty segments are dropped.
    """
    segments, _ = _scan(text)
    if len(segments) == 1:
        return [(text, 1.0)]
    return [(raw.strip(), 1.0 if w is None else w) for raw, _, w in segments if raw.strip()]


def _fmt(weight: float) -> str:
    text = f"{weight:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _escape(word: str) -> str:
    return word.replace("(", "\\(").replace(")", "\\)")


def _emit(text: str, weight: float, wrap: bool) -> list[str]:
    if not wrap and weight == 1.0:
        return [_escape(text.strip())] if text.strip() else []
    out: list[str] = []
    run: list[str] = []
    for word in text.split():
        word = _escape(word).replace('"', '\\"')
        if _SAFE_WORD.fullmatch(word):
            run.append(word)
            continue
        if run:
            out.append(f"({' '.join(run)}){_fmt(weight)}")
            run = []
        out.append(word.replace('\\"', '"'))
    if run:
        out.append(f"({' '.join(run)}){_fmt(weight)}")
    return out


def to_compel(text: str) -> tuple[str, str]:
    """Rewrite A1111 and Midjourney weights into compel syntax: (positive prompt, extra negative text).

    Midjourney's negative `::` weights have no place in one compel prompt, so those segments come
    back as negative-prompt text instead; the positive weights are scaled to average 1 so that
    `a::2 b::2` means the same as `a:: b`, as it does in Midjourney.
    """
    if _COMPEL_NATIVE.search(text):
        return text, ""
    segments, syntax = _scan(text)
    if not syntax:
        return text, ""
    raw_weights = [1.0 if w is None else w for _, _, w in segments]
    if not all(math.isfinite(w) for w in raw_weights):
        raise PromptError("A :: weight is too large; use numbers like 2 or -0.5.", "::")
    kept = [
        (raw, pieces, w) for (raw, pieces, _), w in zip(segments, raw_weights, strict=True) if raw.strip()
    ]
    if len(segments) > 1:
        total = sum(w for _, _, w in kept)
        if not kept or total <= 0:
            raise PromptError(
                f"The :: weights add up to {total:g}; they must add up to more than 0, so give the main "
                "part a positive weight.",
                "::",
            )
    positive = [(pieces, w) for _, pieces, w in kept if w > 0]
    negative = [raw.strip() for raw, _, w in kept if w < 0]
    mean = sum(w for _, w in positive) / len(positive) if positive else 1.0
    wrap = len(positive) > 1
    parts: list[str] = []
    for pieces, w in positive:
        scale = w / mean if wrap else 1.0
        for piece_text, piece_weight in pieces:
            parts.extend(_emit(piece_text, min(MAX_WEIGHT, piece_weight * scale), wrap))
    return " ".join(parts), ", ".join(negative)
