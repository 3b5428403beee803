"""/imagine and the buttons under its results, on the tiny model in simcord."""

from __future__ import annotations

import pytest

from tests.cogs.conftest import FAST, attachment_image, buttons_of, callbacks, rows_of

pytestmark = pytest.mark.simcord(settle_timeout=60)


async def test_imagine_posts_a_grid_with_nine_buttons(scene, simcord_bot):
    result = await scene.alice.slash(scene.channel, "imagine", prompt=f"a red fox in the snow --seed 7 --ar 3:2 {FAST}")

    assert callbacks(scene.env) == [5]  # acknowledged at once with "thinking…"
    message = result.response
    assert message.content.startswith("**a red fox in the snow** --ar 3:2 --seed 7")
    assert message.content.endswith(f"- {scene.alice.mention}")
    assert len(message.attachments) == 1
    grid = attachment_image(scene.env, message)
    assert grid.format == "PNG" and grid.size == (128, 128)
    assert rows_of(message) == [["U1", "U2", "U3", "U4", "🔄"], ["V1", "V2", "V3", "V4"]]
    jobs, total = await simcord_bot.storage.history(scene.alice.id)
    assert total == 1 and jobs[0].status == "done"
    assert jobs[0].message_id == message.id
