"""Midjourney-style prompt parameters: `a fox in the snow --ar 16:9 --seed 7 --no people`.

People bring their Midjourney habits to the bot, so the syntax follows Midjourney's wherever
Stable Diffusion has an equivalent (`--ar`, `--seed`, `--no`, `--chaos`, `--stylize`, `--q`,
`--tile`, `--v`) and adds the knobs Stable Diffusion users expect (`--steps`, `--cfg`,
`--sampler`, `--style`, `--model`). Parsing is strict: a typo is reported in one sentence rather
than silently drawn into the image, and nothing but `PromptError` ever leaves this module.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product

from .samplers import SAMPLER_NAMES, normalize_sampler
from .styles import STYLE_NAMES, normalize_style
from .types import MAX_IMAGES, MAX_SEED, MAX_SIDE, MAX_STEPS, GenerationRequest, ModelProfile, PromptError

ProfileFor = Callable[[str | None], ModelProfile]

QUALITIES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
DEFAULT_STYLIZE = 100
MAX_STYLIZE = 1000
MAX_CHAOS = 100
MAX_GUIDANCE = 30.0
#: Turbo models are distilled for 1-4 steps; more only burns the image, so `--q` never goes past this.
TURBO_MAX_STEPS = 4
#: Beyond 4:1 the model sees a strip narrower than anything it was trained on.
MAX_RATIO = 4
PERMUTATION_LIMIT = 40
#: Deeper brace nesting is never intended and would only make the expansion recursive work.
MAX_BRACE_DEPTH = 20


@dataclass(frozen=True)
class PromptDefaults:
    """A user's saved /settings; None means "use the model's own default"."""

    aspect_ratio: str | None = None
    quality: float | None = None
    steps: int | None = None
    negative_prompt: str | None = None
    style: str | None = None
    model: str | None = None
    sampler: str | None = None
    stylize: int | None = None
    chaos: int | None = None


@dataclass(frozen=True)
class _Param:
    name: str  # canonical, used as PromptError.parameter
    aliases: tuple[str, ...]
    arity: str  # "flag" | "one" | "words"
    wants: str  # completes "--x needs ..."


_PARAMS: tuple[_Param, ...] = (
    _Param("ar", ("aspect",), "one", "W:H like 16:9"),
    _Param("seed", (), "one", f"a whole number from 0 to {MAX_SEED}"),
    _Param("no", (), "words", "the things to leave out, like --no people, text"),
    _Param("steps", (), "one", f"a whole number from 1 to {MAX_STEPS}"),
    _Param("cfg", ("guidance",), "one", f"a number from 0 to {MAX_GUIDANCE:g}"),
    _Param("chaos", ("c",), "one", f"a whole number from 0 to {MAX_CHAOS}"),
    _Param("stylize", ("s",), "one", f"a whole number from 0 to {MAX_STYLIZE}"),
    _Param("tile", (), "flag", "no value"),
    _Param("style", (), "one", f"one of {', '.join(STYLE_NAMES)}"),
    _Param("sampler", (), "words", f"one of {', '.join(SAMPLER_NAMES)}"),
    _Param("model", ("v", "version"), "one", "a model name"),
    _Param("quality", ("q",), "one", "one of .25, .5, 1, 2"),
)
_LOOKUP: dict[str, _Param] = {alias: p for p in _PARAMS for alias in (p.name, *p.aliases)}
PARAMETER_NAMES: tuple[str, ...] = tuple(p.name for p in _PARAMS)
_ALLOWED = ", ".join(f"--{p.name}" for p in _PARAMS)

# Phone keyboards turn "--" into an em or en dash; only where a parameter name follows.
_DASHES = re.compile(r"(?<!\S)[-\u2013\u2014]*[\u2013\u2014][-\u2013\u2014]*(?=[A-Za-z])")
_PARAM = re.compile(r"(?<!\S)--([A-Za-z]\S*)")
_INT = re.compile(r"[0-9]{1,12}")
_FLOAT = re.compile(r"[0-9]{1,6}(?:\.[0-9]{0,12})?|\.[0-9]{1,12}")
_RATIO = re.compile(r"([0-9]{1,6}):([0-9]{1,6})")


def _show(value: str, limit: int = 40) -> str:
    """The user's text, cut short so that an error message stays one readable line."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _bad(flag: str, param: _Param, value: str) -> PromptError:
    return PromptError(f"{flag} needs {param.wants}, not '{_show(value)}'.", param.name)


def _int(flag: str, param: _Param, value: str, low: int, high: int) -> int:
    if not _INT.fullmatch(value) or not low <= int(value) <= high:
        raise _bad(flag, param, value)
    return int(value)


def _float(flag: str, param: _Param, value: str, low: float, high: float) -> float:
    if not _FLOAT.fullmatch(value) or not low <= float(value) <= high:
        raise _bad(flag, param, value)
    return float(value)


def _ratio(flag: str, value: str) -> tuple[int, int]:
    param = _LOOKUP["ar"]
    match = _RATIO.fullmatch(value.strip())
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise _bad(flag, param, value)
    w, h = int(match.group(1)), int(match.group(2))
    if w > MAX_RATIO * h or h > MAX_RATIO * w:
        shape = "wide" if w > h else "tall"
        raise PromptError(
            f"{flag} {_show(value)} is too {shape}: use a ratio between 1:{MAX_RATIO} and {MAX_RATIO}:1.",
            "ar",
        )
    return w, h


def _quality(flag: str, value: str) -> float:
    param = _LOOKUP["quality"]
    if not _FLOAT.fullmatch(value) or float(value) not in QUALITIES:
        raise _bad(flag, param, value)
    return float(value)


def _style(flag: str, value: str) -> str:
    style = normalize_style(value)
    if style is None:
        raise _bad(flag, _LOOKUP["style"], value)
    return style


def _sampler(flag: str, words: list[str]) -> str:
    whole = " ".join(words)
    sampler = normalize_sampler(whole)
    if sampler is None and len(words) > 1 and normalize_sampler(words[0]) is not None:
        raise _stray(f"{flag} {words[0]}", words[1:], "sampler")
    if sampler is None:
        raise _bad(flag, _LOOKUP["sampler"], whole)
    return sampler


def _stray(after: str, words: list[str], name: str) -> PromptError:
    return PromptError(
        f"Unexpected text '{_show(' '.join(words))}' after {_show(after, 60)}: parameters go at the end of the prompt.",
        name,
    )


def dimensions(aspect: tuple[int, int], profile: ModelProfile) -> tuple[int, int]:
    """Width and height for a ratio at the model's native pixel count.

    Keeping the area at the model's training resolution is what keeps wide images from growing
    duplicated subjects; each side is snapped to the latent grid.
    """
    w, h = aspect
    step = profile.size_multiple if profile.size_multiple > 0 else 8
    top = max(step, MAX_SIDE // step * step)

    def snap(side: float) -> int:
        return min(top, max(step, int(side / step + 0.5) * step))

    return snap(math.sqrt(profile.pixel_budget * w / h)), snap(math.sqrt(profile.pixel_budget * h / w))


def quality_steps(profile: ModelProfile, quality: float = 1.0) -> int:
    """Steps for `--q`: Midjourney's quality is "how much GPU time", which for diffusion is steps."""
    steps = max(1, int(profile.default_steps * quality + 0.5))
    if profile.turbo:
        steps = min(steps, TURBO_MAX_STEPS)
    return min(steps, MAX_STEPS)


def stylize_guidance(profile: ModelProfile, stylize: int = DEFAULT_STYLIZE) -> float:
    """Guidance for `--stylize`: more stylize means the model follows the words less literally.

    At the default 100 this is exactly the model's own guidance. Turbo models are trained without
    classifier-free guidance, so theirs stays 0 whatever is asked.
    """
    if profile.default_guidance == 0:
        return 0.0
    guidance = profile.default_guidance * (1100 - stylize) / 1000
    return round(min(MAX_GUIDANCE, max(1.0, guidance)), 2)


def _split(text: str) -> tuple[str, list[tuple[str, list[str]]]]:
    matches = list(_PARAM.finditer(text))
    if not matches:
        return text.strip(), []
    items = []
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        items.append((match.group(1), text[match.end() : end].split()))
    return text[: matches[0].start()].strip(), items


def parse_prompt(
    text: str,
    profile_for: ProfileFor,
    defaults: PromptDefaults | None = None,
    *,
    num_images: int = 4,
    rng: random.Random | None = None,
) -> GenerationRequest:
    """Turn what the user typed into a complete, validated request.

    The user's saved defaults apply first and anything typed in the prompt wins over them.
    """
    defaults = defaults or PromptDefaults()
    prompt, items = _split(_DASHES.sub("--", text))

    typed: dict[str, tuple[str, list[str]]] = {}
    for name, words in items:
        param = _LOOKUP.get(name.lower())
        flag = f"--{name.lower()}"
        if param is None:
            raise PromptError(f"Unknown parameter --{_show(name, 20)}. Allowed: {_ALLOWED}.", _show(name, 20))
        if param.name in typed:
            first = typed[param.name][0]
            same = (
                f"{first} is given twice" if first == flag else f"{first} and {flag} are the same parameter"
            )
            raise PromptError(f"{same}; give it once.", param.name)
        if param.arity == "flag" and words:
            raise _stray(flag, words, param.name)
        if param.arity != "flag" and not words:
            raise PromptError(f"{flag} needs a value: {param.wants}.", param.name)
        if param.arity == "one" and len(words) > 1:
            raise _stray(f"{flag} {words[0]}", words[1:], param.name)
        typed[param.name] = (flag, words)
    if not prompt:
        raise PromptError("The prompt is empty: describe what to draw before the parameters.", "prompt")
    if not isinstance(num_images, int) or not 1 <= num_images <= MAX_IMAGES:
        raise PromptError(f"A job makes 1 to {MAX_IMAGES} images, not {num_images}.", "seeds")

    def value(name: str) -> tuple[str, str] | None:
        if name not in typed:
            return None
        flag, words = typed[name]
        return flag, words[0]

    model = value("model")[1] if "model" in typed else defaults.model
    profile = profile_for(model)

    if (seed := value("seed")) is not None:
        first_seed = _int(seed[0], _LOOKUP["seed"], seed[1], 0, MAX_SEED)
    else:
        first_seed = (rng or random.SystemRandom()).randint(0, MAX_SEED)
    seeds = tuple((first_seed + i) % (MAX_SEED + 1) for i in range(num_images))

    ar_flag, ar_text = value("ar") or ("--ar", defaults.aspect_ratio or "1:1")
    w, h = _ratio(ar_flag, ar_text)
    divisor = math.gcd(w, h)
    width, height = dimensions((w, h), profile)

    if (steps_value := value("steps")) is not None:
        steps = _int(steps_value[0], _LOOKUP["steps"], steps_value[1], 1, MAX_STEPS)
    elif (q := value("quality")) is not None:
        steps = quality_steps(profile, _quality(*q))
    elif defaults.steps is not None:
        steps = defaults.steps
    else:
        quality = 1.0 if defaults.quality is None else _quality("--q", str(defaults.quality))
        steps = quality_steps(profile, quality)

    cfg, stylize = value("cfg"), value("stylize")
    if cfg is not None and stylize is not None:
        raise PromptError(
            f"Use either {cfg[0]} or {stylize[0]}, not both: both set the guidance scale.", "cfg"
        )
    if cfg is not None:
        guidance = round(_float(cfg[0], _LOOKUP["cfg"], cfg[1], 0.0, MAX_GUIDANCE), 2)
    else:
        if stylize is not None:
            amount = _int(stylize[0], _LOOKUP["stylize"], stylize[1], 0, MAX_STYLIZE)
        elif defaults.stylize is not None:
            amount = _int("--stylize", _LOOKUP["stylize"], str(defaults.stylize), 0, MAX_STYLIZE)
        else:
            amount = DEFAULT_STYLIZE
        guidance = stylize_guidance(profile, amount)

    if (chaos_value := value("chaos")) is not None:
        chaos = _int(chaos_value[0], _LOOKUP["chaos"], chaos_value[1], 0, MAX_CHAOS)
    else:
        chaos = defaults.chaos or 0

    style_value = value("style") or (("--style", defaults.style) if defaults.style else None)
    style = _style(*style_value) if style_value else None

    if "sampler" in typed:
        sampler = _sampler(*typed["sampler"])
    elif defaults.sampler:
        sampler = _sampler("--sampler", defaults.sampler.split())
    else:
        sampler = profile.default_sampler

    base_negative = " ".join((defaults.negative_prompt or "").split())
    negative = " ".join(typed["no"][1]) if "no" in typed else ""
    # Text copied from an earlier result already starts with the saved negative: don't repeat it.
    if base_negative and negative != base_negative and not negative.startswith(base_negative + ","):
        negative = ", ".join(part for part in (base_negative, negative) if part)

    request = GenerationRequest(
        prompt=prompt,
        negative_prompt=negative,
        width=width,
        height=height,
        seeds=seeds,
        steps=steps,
        guidance_scale=guidance,
        sampler=sampler,
        model=model,
        style=style,
        tiling="tile" in typed,
        chaos=chaos,
        aspect_ratio=f"{w // divisor}:{h // divisor}",
    )
    request.validate(profile.size_multiple)
    return request


def parse_prompts(
    text: str,
    profile_for: ProfileFor,
    defaults: PromptDefaults | None = None,
    *,
    num_images: int = 4,
    rng: random.Random | None = None,
    limit: int = PERMUTATION_LIMIT,
) -> list[GenerationRequest]:
    """One request per permutation, so `{a, b}` anywhere (parameters too) makes separate jobs."""
    return [
        parse_prompt(variant, profile_for, defaults, num_images=num_images, rng=rng)
        for variant in expand_permutations(text, limit)
    ]


def _fmt_number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def describe_request(request: GenerationRequest, profile: ModelProfile) -> str:
    """The parameter suffix shown under an image: only what differs from a bare prompt.

    Together with the prompt it reproduces the request exactly when parsed without saved defaults,
    which is what lets people copy a result's text to get the same images again.
    """
    parts: list[str] = []
    if request.aspect_ratio != "1:1":
        parts.append(f"--ar {request.aspect_ratio}")
    if request.seeds:
        parts.append(f"--seed {request.seeds[0]}")
    if request.steps != quality_steps(profile):
        parts.append(f"--steps {request.steps}")
    if request.guidance_scale != stylize_guidance(profile):
        parts.append(f"--cfg {_fmt_number(request.guidance_scale)}")
    if request.chaos:
        parts.append(f"--chaos {request.chaos}")
    if request.style:
        parts.append(f"--style {request.style}")
    if request.sampler != profile.default_sampler:
        parts.append(f"--sampler {request.sampler}")
    if request.model is not None:
        parts.append(f"--model {request.model}")
    if request.tiling:
        parts.append("--tile")
    if request.negative_prompt:
        parts.append(f"--no {request.negative_prompt}")
    return " ".join(parts)


def format_prompt(request: GenerationRequest, profile: ModelProfile) -> str:
    """The prompt with its parameters, as the user could type it again."""
    suffix = describe_request(request, profile)
    return f"{request.prompt} {suffix}" if suffix else request.prompt


# --- permutations -------------------------------------------------------------------------------

_Seq = list  # items: str | _Group
_Group = list  # options: _Seq


def _parse_braces(text: str) -> _Seq:
    root: _Seq = []
    current = root
    stack: list[tuple[_Seq, _Group]] = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            current.append("".join(buf))
            buf.clear()

    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in ",{}":
            buf.append(text[i + 1])
            i += 2
            continue
        if c == "{":
            if len(stack) >= MAX_BRACE_DEPTH:
                raise PromptError(f"Braces are nested more than {MAX_BRACE_DEPTH} deep.", "permutations")
            flush()
            group: _Group = [[]]
            stack.append((current, group))
            current = group[0]
        elif c == "," and stack:
            flush()
            current = []
            stack[-1][1].append(current)
        elif c == "}":
            if not stack:
                raise PromptError(
                    "There is a '}' without a '{' before it: escape it as \\} to keep it.", "permutations"
                )
            flush()
            parent, group = stack.pop()
            parent.append(group)
            current = parent
        else:
            buf.append(c)
        i += 1
    if stack:
        raise PromptError("A '{' is never closed: add the '}' or escape it as \\{.", "permutations")
    flush()
    return root


def _count(seq: _Seq) -> int:
    return math.prod(sum(_count(option) for option in item) for item in seq if isinstance(item, list))


def _expand(seq: _Seq) -> list[str]:
    parts: list[list[str]] = []
    for item in seq:
        if isinstance(item, str):
            parts.append([item])
        else:
            parts.append([variant.strip() for option in item for variant in _expand(option)])
    return ["".join(combo) for combo in product(*parts)]


def expand_permutations(text: str, limit: int = PERMUTATION_LIMIT) -> list[str]:
    """Expand `{a, b}` groups into every combination, in order, as Midjourney's permutations do.

    The count is checked before anything is built, so `{a,b}` repeated 60 times fails fast.
    """
    if "{" not in text and "}" not in text:
        return [text]
    tree = _parse_braces(text)
    count = _count(tree)
    if count > limit:
        shown = f"{count}" if count < 10**6 else "over a million"
        raise PromptError(
            f"The {{...}} options would make {shown} prompts; the limit is {limit}.", "permutations"
        )
    return [re.sub(r"[ \t]{2,}", " ", variant).strip() for variant in _expand(tree)]
