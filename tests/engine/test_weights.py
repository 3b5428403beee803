"""A1111 and Midjourney weight syntax -> compel syntax, checked against compel's own parser."""

from __future__ import annotations

import importlib.util
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.types import PromptError
from engine.weights import split_weighted, to_compel


def _compel_parser():
    """compel's own prompt parser, i.e. what `Compel.parse_prompt_string` runs.

    Loaded from its file because `import compel` pulls in torch and transformers (seconds), while
    the parser itself needs only pyparsing.
    """
    spec = importlib.util.find_spec("compel")
    if spec is None or spec.origin is None:
        pytest.skip("compel is not installed", allow_module_level=True)
    path = os.path.join(os.path.dirname(spec.origin), "prompt_parser.py")
    module_spec = importlib.util.spec_from_file_location("_compel_prompt_parser", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.PromptParser()


PARSER = _compel_parser()


def fragments(prompt: str) -> list[tuple[str, float]]:
    """compel's reading of a prompt: (text, weight) per fragment, adjacent equal weights merged."""
    conjunction = PARSER.parse_conjunction(prompt)
    assert len(conjunction.prompts) == 1
    return [(f.text, pytest.approx(f.weight, abs=1e-3)) for f in conjunction.prompts[0].children]


@pytest.mark.parametrize(
    ("text", "positive", "negative"),
    [
        ("a red fox", "a red fox", ""),
        ("a fox, 4k, well-lit", "a fox, 4k, well-lit", ""),
        ("(text:1.3)", "(text)1.3", ""),
        ("(text: 0.5 )", "(text)0.5", ""),
        ("(text:.8)", "(text)0.8", ""),
        ("(text)", "(text)1.1", ""),
        ("[text]", "(text)0.9", ""),
        ("a (red:1.2) fox", "a (red)1.2 fox", ""),
        ("a (red fox:1.2), snow", "a (red fox)1.2 , snow", ""),
        ("((a:1.2) b)", "(a)1.32 (b)1.1", ""),
        ("((a))", "(a)1.21", ""),
        ("[[a]]", "(a)0.81", ""),
        ("(a:-1)", "(a)0", ""),
        ("(a:1)", "a", ""),
        (r"a \(b\) c", r"a \(b\) c", ""),
        (r"(a \(b\):1.2)", r"(a \(b\))1.2", ""),
        (r"a \[b\] (c)", "a [b] (c)1.1", ""),
        ("a ( b", "a ( b", ""),
        ("a (b) c)", r"a (b)1.1 c\)", ""),
        ("(a]", "(a]", ""),
        ("(a - b:1.2)", "(a)1.2 - (b)1.2", ""),
        ('("hi" sign:1.2)', r"(\"hi\" sign)1.2", ""),
        ("()", "", ""),
        ("(a)1.3 b", "(a)1.3 b", ""),
        ("(a)++ b", "(a)1.21 b", ""),
        ("(red)-haired", "(red)1.1 -haired", ""),
        ("hot dog::1.5 animal::-0.5", "hot dog", "animal"),
        ("space:: ship", "(space)1 (ship)1", ""),
        ("space::2 ship::2", "(space)1 (ship)1", ""),
        ("a::2 b", "(a)1.3333 (b)0.6667", ""),
        ("a::3 b::1 c::-1 d::-2", "(a)1.5 (b)0.5", "c, d"),
        ("cat::2", "cat", ""),
        ("a::0 b", "b", ""),
        ("(red:1.5) fox::2 snow", "(red)2 (fox)1.3333 (snow)0.6667", ""),
        ("(a::2)", "(a:)2", ""),
        ('("a", "b").blend(1, 1)', '("a", "b").blend(1, 1)', ""),
    ],
)
def test_to_compel(text: str, positive: str, negative: str) -> None:
    assert to_compel(text) == (positive, negative)


@pytest.mark.parametrize("text", ["a::-1", "a::0", "a::1 b::-1", "a::-1 b::-2", "a::" + "9" * 400 + " b"])
def test_weights_that_leave_nothing_to_draw_are_errors(text: str) -> None:
    with pytest.raises(PromptError) as info:
        to_compel(text)
    assert info.value.parameter == "::"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a red fox", [("a red fox", 1.0)]),
        ("hot dog::1.5 animal::-0.5", [("hot dog", 1.5), ("animal", -0.5)]),
        ("space:: ship", [("space", 1.0), ("ship", 1.0)]),
        ("space::2 ship", [("space", 2.0), ("ship", 1.0)]),
        ("a::.5 ::3", [("a", 0.5)]),
        ("(a::2) b", [("(a::2) b", 1.0)]),
    ],
)
def test_split_weighted(text: str, expected: list[tuple[str, float]]) -> None:
    assert split_weighted(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(text:1.3)", [("text", 1.3)]),
        ("a (red:1.2) fox", [("a", 1.0), ("red", 1.2), ("fox", 1.0)]),
        ("(text)", [("text", 1.1)]),
        ("[text]", [("text", 0.9)]),
        ("((a:1.2) b)", [("a", 1.32), ("b", 1.1)]),
        (r"a \(b\) c", [("a (b) c", 1.0)]),
        (r"(a \(b\):1.2)", [("a (b)", 1.2)]),
        ('("hi" sign:1.2)', [('"hi" sign', 1.2)]),
        ("(a - b:1.2)", [("a", 1.2), ("-", 1.0), ("b", 1.2)]),
        ("(well-lit room, 4k:1.4)", [("well-lit room , 4k", 1.4)]),
        ("a::3 b::1", [("a", 1.5), ("b", 0.5)]),
        ("space:: ship", [("space ship", 1.0)]),
        ("(red:1.5) fox::2 snow", [("red", 2.0), ("fox", 1.3333), ("snow", 0.6667)]),
    ],
)
def test_compel_reads_the_weights_we_meant(text: str, expected: list[tuple[str, float]]) -> None:
    positive, _ = to_compel(text)
    assert fragments(positive) == expected


_letters = st.text(alphabet="abcxyz", min_size=1, max_size=4)
_word = st.one_of(
    _letters,
    st.builds("{}{}{}".format, _letters, st.sampled_from("-=.,'"), _letters),
    st.sampled_from(["-", "+", "=", "--", "+-", ",", ".", "...", "a=b", "x+", "y-"]),
)
_weighted_word = st.one_of(_word, st.builds('"{}"'.format, _letters), st.just('"'))
_weight = st.sampled_from(["1.3", "0.5", ".8", "2", "0"])
_chunk = st.one_of(
    st.lists(_letters, min_size=1, max_size=3).map(" ".join),
    st.builds(
        lambda words, weight: f"({' '.join(words)}:{weight})",
        st.lists(_weighted_word, min_size=1, max_size=4),
        _weight,
    ),
    st.builds(lambda words: f"[{' '.join(words)}]", st.lists(_weighted_word, min_size=1, max_size=3)),
    st.builds(lambda words: f"(({' '.join(words)}))", st.lists(_weighted_word, min_size=1, max_size=3)),
)


def _content(text: str) -> str:
    return re.sub(r"\s", "", text)


@settings(max_examples=100, deadline=None)
@given(st.lists(_chunk, min_size=1, max_size=4))
def test_compel_parses_every_converted_group_without_losing_text(chunks: list[str]) -> None:
    """If compel failed to parse our output it would fall back to the literal text, weights and all."""
    text = " ".join(chunks)
    positive, negative = to_compel(text)
    assert negative == ""
    parsed = "".join(fragment for fragment, _ in fragments(positive))
    plain = re.sub(r":(?:[0-9.]+)\)", "", text).replace("(", "").replace(")", "")
    plain = plain.replace("[", "").replace("]", "")
    # compel reads a trailing +/- on a plain word as its own attention syntax, as it should.
    expected = _content(plain)
    got = _content(parsed)
    assert re.sub(r"[+\-]", "", got) == re.sub(r"[+\-]", "", expected)
    assert not re.search(r"\)[0-9.]", parsed)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab :()[]\\-+".,=0123456789\n')), max_size=40))
def test_arbitrary_text_converts_or_raises_prompt_error(text: str) -> None:
    try:
        positive, negative = to_compel(text)
    except PromptError:
        return
    assert isinstance(positive, str) and isinstance(negative, str)
    if positive != text:  # text without weight syntax is passed to compel as the user wrote it
        fragments(positive)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_unicode_text_converts_or_raises_prompt_error(text: str) -> None:
    try:
        to_compel(text)
        split_weighted(text)
    except PromptError:
        pass
