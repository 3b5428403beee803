"""The custom_id vocabulary: every id parses back, fits Discord's limits, and layouts fit 5x5."""

from __future__ import annotations

import re

import pytest
from discord import ui
from hypothesis import given
from hypothesis import strategies as st

from cogs.utils import buttons

BIG_ID = 2**63 - 1  # the largest SQLite rowid


def _match(item: ui.DynamicItem) -> re.Match[str]:
    match = item.template.fullmatch(item.custom_id)
    assert match is not None, item.custom_id
    return match


def _owners(custom_id: str) -> list[type]:
    return [cls for cls in buttons.DYNAMIC_ITEMS if cls.__discord_ui_compiled_template__.fullmatch(custom_id)]


@pytest.mark.parametrize(
    "item",
    [
        buttons.GridButton("u", BIG_ID, 3),
        buttons.GridButton("v", BIG_ID, 0),
        buttons.RerollButton(BIG_ID),
        buttons.CancelButton(BIG_ID),
        buttons.VaryButton(BIG_ID, "strong"),
        buttons.UpscaleButton(BIG_ID, "creative"),
        buttons.FavoriteButton(BIG_ID),
        buttons.HistoryPageButton("n", 99_999, "x" * 200),
        buttons.SettingButton("negative"),
    ],
)
def test_every_custom_id_fits_and_belongs_to_exactly_one_item(item):
    assert len(item.custom_id) <= buttons.CUSTOM_ID_LIMIT
    assert _owners(item.custom_id) == [type(item)]


async def test_ids_parse_back_into_the_same_item():
    match = _match(buttons.GridButton("v", 42, 2))
    again = await buttons.GridButton.from_custom_id(None, None, match)
    assert (again.action, again.job_id, again.index) == ("v", 42, 2)
    assert again.item.label == "V3"

    vary = await buttons.VaryButton.from_custom_id(None, None, _match(buttons.VaryButton(7, "subtle")))
    assert (vary.image_id, vary.mode) == (7, "subtle")


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=80),
       st.integers(0, 99_999))
async def test_history_search_survives_the_round_trip(search, page):
    button = buttons.HistoryPageButton("p", page, search)
    again = await buttons.HistoryPageButton.from_custom_id(None, None, _match(button))
    assert again.page == page and again.search == search[: buttons.SEARCH_LIMIT]
    assert len(button.custom_id) <= buttons.CUSTOM_ID_LIMIT


@pytest.mark.parametrize("custom_id", ["imagine:u:1:x", "imagine:vary:5:wild", "imagine:up:5:strong", "imagine:r:", "other:u:1:1"])
def test_foreign_or_malformed_ids_are_not_claimed(custom_id):
    assert _owners(custom_id) == []


def _rows(view: ui.View) -> list[list[str]]:
    rows: dict[int, list[str]] = {}
    for component in view.to_components():
        rows[len(rows)] = [c.get("label") or c["emoji"]["name"] for c in component["components"]]
    return list(rows.values())


def test_layouts_follow_midjourney_and_discords_limits():
    assert _rows(buttons.grid_view(1)) == [["U1", "U2", "U3", "U4", "🔄"], ["V1", "V2", "V3", "V4"]]
    assert _rows(buttons.image_view(1)) == [
        ["Vary (Subtle)", "Vary (Strong)", "Favorite"],
        ["Upscale (Subtle)", "Upscale (Creative)"],
    ]
    for view in (buttons.grid_view(BIG_ID), buttons.image_view(BIG_ID), buttons.history_view(0, 1, "")):
        ids = [c["custom_id"] for row in view.to_components() for c in row["components"]]
        assert len(ids) == len(set(ids)) and len(view.to_components()) <= 5


def test_history_buttons_are_disabled_at_the_ends():
    only = buttons.history_view(0, 1, "fox")
    states = [c["disabled"] for c in only.to_components()[0]["components"]]
    assert states == [True, True]
    middle = buttons.history_view(1, 3, "fox")
    assert [c["custom_id"] for c in middle.to_components()[0]["components"]] == ["imagine:h:p:0:fox", "imagine:h:n:2:fox"]
