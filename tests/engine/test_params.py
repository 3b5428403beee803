"""Midjourney-style parameters: every parameter and alias, every error, permutations, round trips."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.params import (
    PromptDefaults,
    describe_request,
    expand_permutations,
    format_prompt,
    parse_prompt,
    parse_prompts,
)
from engine.samplers import SAMPLER_NAMES
from engine.styles import STYLE_NAMES, STYLES, apply_style
from engine.types import GenerationRequest, ModelProfile, PromptError

PROFILES = {
    "sd15": ModelProfile("sd15", family="sd1", base_resolution=512, default_steps=25, default_guidance=7.0),
    "turbo": ModelProfile(
        "turbo",
        family="sd2",
        base_resolution=512,
        turbo=True,
        default_steps=1,
        default_guidance=0.0,
        default_sampler="euler",
    ),
    "sdxl": ModelProfile("sdxl", family="sdxl", base_resolution=1024, default_steps=30, default_guidance=6.0),
}


def profile_for(name: str | None) -> ModelProfile:
    if name is None:
        return PROFILES["sd15"]
    if name not in PROFILES:
        raise PromptError(f"Unknown model '{name}'. Allowed: {', '.join(PROFILES)}.", "model")
    return PROFILES[name]


def parse(text: str, defaults: PromptDefaults | None = None, **kwargs) -> GenerationRequest:
    kwargs.setdefault("rng", random.Random(0))
    return parse_prompt(text, profile_for, defaults, **kwargs)


# --- every parameter and alias ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field", "expected"),
    [
        ("--ar 16:9", "aspect_ratio", "16:9"),
        ("--ar 16:9", "size", (704, 384)),
        ("--aspect 2:3", "size", (448, 640)),
        ("--ar 32:18", "aspect_ratio", "16:9"),
        ("--ar 4:1", "size", (1024, 256)),
        ("--ar 1:4", "size", (256, 1024)),
        ("--ar 1:4 --model sdxl", "size", (512, 2048)),
        ("--model sdxl", "size", (1024, 1024)),
        ("", "size", (512, 512)),
        ("", "aspect_ratio", "1:1"),
        ("--seed 123", "seeds", (123, 124, 125, 126)),
        ("--seed 0", "seeds", (0, 1, 2, 3)),
        ("--seed 4294967294", "seeds", (4294967294, 4294967295, 0, 1)),
        ("--no people", "negative_prompt", "people"),
        ("--no people, text,  blurry", "negative_prompt", "people, text, blurry"),
        ("", "negative_prompt", ""),
        ("--steps 40", "steps", 40),
        ("--steps 1", "steps", 1),
        ("--steps 150", "steps", 150),
        ("", "steps", 25),
        ("--cfg 4.5", "guidance_scale", 4.5),
        ("--cfg .5", "guidance_scale", 0.5),
        ("--cfg 0", "guidance_scale", 0.0),
        ("--cfg 30", "guidance_scale", 30.0),
        ("--guidance 12", "guidance_scale", 12.0),
        ("--cfg 7.123", "guidance_scale", 7.12),
        ("", "guidance_scale", 7.0),
        ("--chaos 50", "chaos", 50),
        ("--c 100", "chaos", 100),
        ("", "chaos", 0),
        ("--stylize 0", "guidance_scale", 7.7),
        ("--s 100", "guidance_scale", 7.0),
        ("--s 250", "guidance_scale", 5.95),
        ("--s 1000", "guidance_scale", 1.0),
        ("--s 500 --model sdxl", "guidance_scale", 3.6),
        ("--tile", "tiling", True),
        ("", "tiling", False),
        ("--style anime", "style", "anime"),
        ("--style Comic-Book", "style", "comic-book"),
        ("--style pixel_art", "style", "pixel-art"),
        ("", "style", None),
        ("--sampler euler_a", "sampler", "euler_a"),
        ("--sampler k_euler", "sampler", "euler"),
        ("--sampler DPM++ 2M Karras", "sampler", "dpmpp_2m_karras"),
        ("--sampler UniPC", "sampler", "unipc"),
        ("", "sampler", "dpmpp_2m_karras"),
        ("--model sdxl", "model", "sdxl"),
        ("--v turbo", "model", "turbo"),
        ("--version sdxl", "model", "sdxl"),
        ("", "model", None),
        ("--q .25", "steps", 6),
        ("--q 0.5", "steps", 13),
        ("--quality .5", "steps", 13),
        ("--q 1", "steps", 25),
        ("--q 2", "steps", 50),
        ("--q 2.0", "steps", 50),
        ("--q 2 --model sdxl", "steps", 60),
        ("--q 2 --steps 10", "steps", 10),
        ("--v turbo", "steps", 1),
        ("--v turbo --q 2", "steps", 2),
        ("--v turbo --steps 8", "steps", 8),
        ("--v turbo", "guidance_scale", 0.0),
        ("--v turbo --s 0", "guidance_scale", 0.0),
        ("--v turbo --cfg 1.5", "guidance_scale", 1.5),
        ("--v turbo", "sampler", "euler"),
        ("\u2014ar 16:9", "aspect_ratio", "16:9"),
        ("\u2013seed 5", "seeds", (5, 6, 7, 8)),
        ("\u2014-no people", "negative_prompt", "people"),
        ("--AR 16:9 --Seed 9", "aspect_ratio", "16:9"),
    ],
)
def test_parameter(params: str, field: str, expected: object) -> None:
    request = parse(f"a fox in the snow {params}")
    actual = (request.width, request.height) if field == "size" else getattr(request, field)
    assert actual == expected
    assert request.prompt == "a fox in the snow"


def test_random_seed_comes_from_rng_and_counts_up() -> None:
    request = parse("a fox", rng=random.Random(42), num_images=3)
    first = random.Random(42).randint(0, 4294967295)
    assert request.seeds == (first, (first + 1) % 2**32, (first + 2) % 2**32)


def test_num_images_sets_the_number_of_seeds() -> None:
    assert parse("a fox --seed 10", num_images=1).seeds == (10,)


def test_prompt_keeps_its_text_and_dashes_that_are_not_parameters() -> None:
    request = parse("a 1990\u20132000 poster \u2014 retro, well-lit -- moody --seed 1")
    assert request.prompt == "a 1990\u20132000 poster \u2014 retro, well-lit -- moody"


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parameter", "phrase"),
    [
        ("a fox --foo 3", "foo", "Unknown parameter --foo. Allowed: --ar, --seed"),
        ("a fox --iw 2", "iw", "Unknown parameter --iw"),
        ("--ar 16:9", "prompt", "prompt is empty"),
        ("   ", "prompt", "prompt is empty"),
        ("", "prompt", "prompt is empty"),
        ("a fox --ar 16x9", "ar", "--ar needs W:H like 16:9, not '16x9'."),
        ("a fox --aspect 0:1", "ar", "--aspect needs W:H like 16:9, not '0:1'."),
        ("a fox --ar 16:9.5", "ar", "needs W:H"),
        ("a fox --ar -1:1", "ar", "needs W:H"),
        ("a fox --ar 5:1", "ar", "too wide: use a ratio between 1:4 and 4:1"),
        ("a fox --ar 1:5", "ar", "too tall"),
        ("a fox --ar 16:9 x", "ar", "Unexpected text 'x' after --ar 16:9"),
        ("a fox --ar", "ar", "--ar needs a value: W:H like 16:9."),
        ("a fox --seed abc", "seed", "--seed needs a whole number from 0 to 4294967295, not 'abc'."),
        ("a fox --seed -1", "seed", "not '-1'"),
        ("a fox --seed 4294967296", "seed", "from 0 to 4294967295"),
        ("a fox --seed 1.5", "seed", "whole number"),
        ("a fox --seed " + "9" * 5000, "seed", "whole number"),
        ("a fox --seed \u0661\u0662", "seed", "whole number"),
        (
            "a fox --seed 7 x",
            "seed",
            "Unexpected text 'x' after --seed 7: parameters go at the end of the prompt.",
        ),
        ("a fox --seed", "seed", "--seed needs a value"),
        ("a fox --seed 1 --seed 2", "seed", "--seed is given twice; give it once."),
        ("a fox --no", "no", "--no needs a value"),
        ("a fox --no a --no b", "no", "given twice"),
        ("a fox --steps 0", "steps", "--steps needs a whole number from 1 to 150, not '0'."),
        ("a fox --steps 151", "steps", "from 1 to 150"),
        ("a fox --steps many", "steps", "not 'many'"),
        ("a fox --cfg 31", "cfg", "--cfg needs a number from 0 to 30, not '31'."),
        ("a fox --guidance nan", "cfg", "--guidance needs a number from 0 to 30, not 'nan'."),
        ("a fox --cfg inf", "cfg", "not 'inf'"),
        ("a fox --cfg 1e1", "cfg", "not '1e1'"),
        ("a fox --cfg -1", "cfg", "not '-1'"),
        ("a fox --cfg 7 --guidance 8", "cfg", "--cfg and --guidance are the same parameter"),
        ("a fox --cfg 7 --stylize 200", "cfg", "Use either --cfg or --stylize, not both"),
        ("a fox --s 200 --guidance 7", "cfg", "Use either --guidance or --s"),
        ("a fox --chaos 101", "chaos", "--chaos needs a whole number from 0 to 100, not '101'."),
        ("a fox --c x", "chaos", "--c needs a whole number from 0 to 100"),
        ("a fox --stylize 1001", "stylize", "--stylize needs a whole number from 0 to 1000, not '1001'."),
        ("a fox --s 2.5", "stylize", "--s needs a whole number"),
        ("a fox --tile yes", "tile", "Unexpected text 'yes' after --tile"),
        ("a fox --tile --tile", "tile", "given twice"),
        ("a fox --style vaporwave", "style", "--style needs one of 3d-model, analog-film, anime"),
        ("a fox --style anime cinematic", "style", "Unexpected text 'cinematic' after --style anime"),
        ("a fox --sampler fast", "sampler", "--sampler needs one of euler, euler_a"),
        ("a fox --sampler euler please", "sampler", "Unexpected text 'please' after --sampler euler"),
        ("a fox --sampler", "sampler", "--sampler needs a value"),
        ("a fox --model sd99", "model", "Unknown model 'sd99'. Allowed: sd15, turbo, sdxl."),
        ("a fox --v 6", "model", "Unknown model '6'"),
        ("a fox --v sdxl --model sdxl", "model", "--v and --model are the same parameter"),
        ("a fox --model", "model", "--model needs a value"),
        ("a fox --q 3", "quality", "--q needs one of .25, .5, 1, 2, not '3'."),
        ("a fox --quality high", "quality", "--quality needs one of .25, .5, 1, 2"),
        ("a fox --q", "quality", "--q needs a value"),
        ("a fox \u2014foo", "foo", "Unknown parameter --foo"),
    ],
)
def test_error(text: str, parameter: str, phrase: str) -> None:
    with pytest.raises(PromptError) as info:
        parse(text)
    assert info.value.parameter == parameter
    assert phrase in str(info.value)


def test_error_messages_are_one_sentence_and_short_for_long_input() -> None:
    with pytest.raises(PromptError) as info:
        parse("a fox --seed " + "x" * 500)
    message = str(info.value)
    assert len(message) < 150 and message.endswith(".") and "\n" not in message


@pytest.mark.parametrize("num_images", [0, 11, -1])
def test_num_images_out_of_range(num_images: int) -> None:
    with pytest.raises(PromptError):
        parse("a fox", num_images=num_images)


def test_every_allowed_name_is_listed_in_unknown_parameter_error() -> None:
    with pytest.raises(PromptError) as info:
        parse("a fox --zzz")
    for name in ("ar", "seed", "no", "steps", "cfg", "chaos", "stylize", "tile", "style", "sampler", "model"):
        assert f"--{name}," in str(info.value) or f"--{name}." in str(info.value)


def test_sampler_error_lists_every_sampler() -> None:
    with pytest.raises(PromptError) as info:
        parse("a fox --sampler nope")
    assert all(name in str(info.value) for name in SAMPLER_NAMES)


# --- defaults vs typed ----------------------------------------------------------------------------

FULL_DEFAULTS = PromptDefaults(
    aspect_ratio="3:2",
    quality=0.5,
    negative_prompt="blurry,  ugly",
    style="anime",
    model="sdxl",
    sampler="euler a",
    stylize=0,
    chaos=20,
)


def test_defaults_apply_when_nothing_is_typed() -> None:
    request = parse("a fox", FULL_DEFAULTS)
    assert request.aspect_ratio == "3:2"
    assert (request.width, request.height) == (1280, 832)
    assert request.steps == 15
    assert request.negative_prompt == "blurry, ugly"
    assert request.style == "anime"
    assert request.model == "sdxl"
    assert request.sampler == "euler_a"
    assert request.guidance_scale == 6.6
    assert request.chaos == 20


def test_typed_parameters_win_over_defaults() -> None:
    request = parse(
        "a fox --ar 1:1 --q 2 --no people --style cinematic --model sd15 --sampler ddim --s 100 --c 0",
        FULL_DEFAULTS,
    )
    assert request.aspect_ratio == "1:1" and (request.width, request.height) == (512, 512)
    assert request.steps == 50
    assert request.negative_prompt == "blurry, ugly, people"
    assert request.style == "cinematic"
    assert request.model == "sd15"
    assert request.sampler == "ddim"
    assert request.guidance_scale == 7.0
    assert request.chaos == 0


@pytest.mark.parametrize(
    ("defaults", "params", "field", "expected"),
    [
        (PromptDefaults(steps=40), "", "steps", 40),
        (PromptDefaults(steps=40), "--q 2", "steps", 50),
        (PromptDefaults(steps=40), "--steps 10", "steps", 10),
        (PromptDefaults(steps=40, quality=2), "", "steps", 40),
        (PromptDefaults(quality=2), "", "steps", 50),
        (PromptDefaults(stylize=1000), "--cfg 9", "guidance_scale", 9.0),
        (PromptDefaults(stylize=1000), "", "guidance_scale", 1.0),
        (PromptDefaults(negative_prompt="ugly"), "--no ugly, cats", "negative_prompt", "ugly, cats"),
        (PromptDefaults(negative_prompt="ugly"), "--no ugly", "negative_prompt", "ugly"),
        (PromptDefaults(negative_prompt="ugly"), "--no uglier", "negative_prompt", "ugly, uglier"),
        (PromptDefaults(model="turbo"), "--q 2", "steps", 2),
        (PromptDefaults(sampler="k_euler"), "", "sampler", "euler"),
    ],
)
def test_defaults_precedence(defaults: PromptDefaults, params: str, field: str, expected: object) -> None:
    assert getattr(parse(f"a fox {params}", defaults), field) == expected


@pytest.mark.parametrize(
    ("defaults", "parameter"),
    [
        (PromptDefaults(aspect_ratio="wide"), "ar"),
        (PromptDefaults(quality=3.0), "quality"),
        (PromptDefaults(style="nope"), "style"),
        (PromptDefaults(sampler="nope"), "sampler"),
        (PromptDefaults(model="nope"), "model"),
        (PromptDefaults(stylize=5000), "stylize"),
        (PromptDefaults(steps=500), "steps"),
        (PromptDefaults(chaos=500), "chaos"),
    ],
)
def test_bad_defaults_are_prompt_errors(defaults: PromptDefaults, parameter: str) -> None:
    with pytest.raises(PromptError) as info:
        parse("a fox", defaults)
    assert info.value.parameter == parameter


# --- permutations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a red fox", ["a red fox"]),
        ("a {red, blue} fox", ["a red fox", "a blue fox"]),
        ("a {red, blue} {fox, owl}", ["a red fox", "a red owl", "a blue fox", "a blue owl"]),
        ("a {big {red, blue}, small} fox", ["a big red fox", "a big blue fox", "a small fox"]),
        ("a {, red} fox", ["a fox", "a red fox"]),
        ("a {red} fox", ["a red fox"]),
        ("a {} fox", ["a fox"]),
        (r"a {salt\, pepper, sugar} pot", ["a salt, pepper pot", "a sugar pot"]),
        (r"a \{literal\} brace", ["a {literal} brace"]),
        (r"{a\}, b}", ["a}", "b"]),
        ("x --ar {1:1, 16:9}", ["x --ar 1:1", "x --ar 16:9"]),
        ("tea, milk", ["tea, milk"]),
        (r"a \(weight\) {b, c}", [r"a \(weight\) b", r"a \(weight\) c"]),
    ],
)
def test_expand_permutations(text: str, expected: list[str]) -> None:
    assert expand_permutations(text) == expected


@pytest.mark.parametrize(
    ("text", "limit", "phrase"),
    [
        ("a {red, blue", 40, "'{' is never closed"),
        ("a red} fox", 40, "'}' without a '{'"),
        ("a {{red} fox", 40, "never closed"),
        ("{a,b}{c,d}{e,f}{g,h}{i,j}{k,l}", 40, "would make 64 prompts; the limit is 40."),
        ("{a,b,c}", 2, "would make 3 prompts; the limit is 2."),
        ("{a,b}" * 80, 40, "over a million"),
        ("{" * 30 + "}" * 30, 40, "nested more than"),
    ],
)
def test_permutation_errors(text: str, limit: int, phrase: str) -> None:
    with pytest.raises(PromptError) as info:
        expand_permutations(text, limit)
    assert info.value.parameter == "permutations"
    assert phrase in str(info.value)


def test_parse_prompts_makes_one_request_per_permutation() -> None:
    requests = parse_prompts("a {red, blue} fox --ar {1:1, 2:3} --seed 5", profile_for, rng=random.Random(0))
    assert [(r.prompt, r.aspect_ratio) for r in requests] == [
        ("a red fox", "1:1"),
        ("a red fox", "2:3"),
        ("a blue fox", "1:1"),
        ("a blue fox", "2:3"),
    ]
    assert all(r.seeds[0] == 5 for r in requests)


def test_parse_prompts_respects_the_limit() -> None:
    with pytest.raises(PromptError, match="limit is 3"):
        parse_prompts("{a, b} {c, d}", profile_for, limit=3)


# --- describe / format ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a fox --seed 123", "--seed 123"),
        ("a fox --ar 3:2 --seed 123 --no people", "--ar 3:2 --seed 123 --no people"),
        (
            "a fox --seed 1 --q 2 --s 250 --c 5 --style anime",
            "--seed 1 --steps 50 --cfg 5.95 --chaos 5 --style anime",
        ),
        ("a fox --seed 1 --sampler euler --v sdxl --tile", "--seed 1 --sampler euler --model sdxl --tile"),
        ("a fox --seed 1 --v turbo", "--seed 1 --model turbo"),
        ("a fox --seed 1 --cfg 7", "--seed 1"),
    ],
)
def test_describe_request(text: str, expected: str) -> None:
    request = parse(text)
    assert describe_request(request, profile_for(request.model)) == expected
    assert format_prompt(request, profile_for(request.model)) == f"a fox {expected}"


# --- styles ---------------------------------------------------------------------------------------


def test_styles_cover_stability_presets() -> None:
    assert set(STYLE_NAMES) == {
        "3d-model", "analog-film", "anime", "cinematic", "comic-book", "digital-art", "enhance",
        "fantasy-art", "isometric", "line-art", "low-poly", "modeling-compound", "neon-punk",
        "origami", "photographic", "pixel-art", "tile-texture",
    }  # fmt: skip
    assert all("{prompt}" in template for template, _ in STYLES.values())


@pytest.mark.parametrize(
    ("prompt", "negative", "style", "expected"),
    [
        ("a fox", "people", None, ("a fox", "people")),
        ("a fox", "", "anime", (STYLES["anime"][0].replace("{prompt}", "a fox"), STYLES["anime"][1])),
        (
            "a fox",
            "people",
            "enhance",
            (STYLES["enhance"][0].replace("{prompt}", "a fox"), "people, " + STYLES["enhance"][1]),
        ),
        (
            "a {x} fox",
            "",
            "origami",
            (STYLES["origami"][0].replace("{prompt}", "a {x} fox"), STYLES["origami"][1]),
        ),
    ],
)
def test_apply_style(prompt: str, negative: str, style: str | None, expected: tuple[str, str]) -> None:
    assert apply_style(prompt, negative, style) == expected


def test_apply_unknown_style() -> None:
    with pytest.raises(PromptError) as info:
        apply_style("a fox", "", "nope")
    assert info.value.parameter == "style"


# --- properties -----------------------------------------------------------------------------------

_tokens = st.sampled_from(
    [
        "--ar", "--seed", "--no", "--steps", "--cfg", "--c", "--s", "--tile", "--style", "--sampler",
        "--v", "--q", "--model", "--x", "\u2014ar", "--", "-", "{", "}", ",", "\\", "\\{", "\\,", "1:1", "16:9",
        "0:0", "0", "7", "-3", ".5", "2", "1e9", "nan", "4294967296", "\u0663", "\u00b2", "anime", "euler",
        "sdxl", "turbo", "fox", "", " ", "\n", "::", "(a:1.2)",
    ]
)  # fmt: skip
_junk = st.one_of(
    st.text(max_size=60),
    st.lists(_tokens, max_size=12).map(" ".join),
    st.lists(_tokens, max_size=12).map("".join),
)


@settings(max_examples=200, deadline=None)
@given(_junk, st.integers(min_value=1, max_value=10))
def test_any_text_parses_or_raises_prompt_error(text: str, num_images: int) -> None:
    try:
        requests = parse_prompts(text, profile_for, num_images=num_images, rng=random.Random(0))
    except PromptError as error:
        assert str(error)
        return
    assert all(isinstance(r, GenerationRequest) and r.num_images == num_images for r in requests)


_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=6)
_ratio = st.tuples(st.integers(1, 40), st.integers(1, 40)).filter(
    lambda wh: wh[0] <= 4 * wh[1] and wh[1] <= 4 * wh[0]
)


@st.composite
def _typed_prompt(draw: st.DrawFn) -> str:
    parts = [" ".join(draw(st.lists(_word, min_size=1, max_size=5)))]
    options: list[str] = []
    if draw(st.booleans()):
        w, h = draw(_ratio)
        options.append(f"--{draw(st.sampled_from(['ar', 'aspect']))} {w}:{h}")
    if draw(st.booleans()):
        options.append(f"--seed {draw(st.integers(0, 4294967295))}")
    if draw(st.booleans()):
        options.append(f"--no {' '.join(draw(st.lists(_word, min_size=1, max_size=3)))}")
    if draw(st.booleans()):
        options.append(f"--steps {draw(st.integers(1, 150))}")
    if draw(st.booleans()):
        options.append(f"--q {draw(st.sampled_from(['.25', '0.5', '1', '2']))}")
    guidance = draw(st.sampled_from(["", "cfg", "stylize"]))
    if guidance == "cfg":
        options.append(f"--cfg {draw(st.integers(0, 3000)) / 100}")
    elif guidance == "stylize":
        options.append(f"--s {draw(st.integers(0, 1000))}")
    if draw(st.booleans()):
        options.append(f"--c {draw(st.integers(0, 100))}")
    if draw(st.booleans()):
        options.append("--tile")
    if draw(st.booleans()):
        options.append(f"--style {draw(st.sampled_from(STYLE_NAMES))}")
    if draw(st.booleans()):
        options.append(f"--sampler {draw(st.sampled_from(list(SAMPLER_NAMES) + ['k_euler_a', 'DPM++ 2M']))}")
    if draw(st.booleans()):
        options.append(
            f"--{draw(st.sampled_from(['model', 'v', 'version']))} {draw(st.sampled_from(list(PROFILES)))}"
        )
    return " ".join(parts + draw(st.permutations(options)))


@settings(max_examples=200, deadline=None)
@given(_typed_prompt(), st.integers(min_value=1, max_value=10), st.integers(min_value=0, max_value=2**32))
def test_format_prompt_round_trips(text: str, num_images: int, seed: int) -> None:
    request = parse_prompt(text, profile_for, num_images=num_images, rng=random.Random(seed))
    again = parse_prompt(
        format_prompt(request, profile_for(request.model)), profile_for, num_images=num_images
    )
    assert again == request
