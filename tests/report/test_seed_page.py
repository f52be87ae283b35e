"""The project-page pieces: difference heat maps, the caption naming the object that differs most between two
cached clips, and the stacked page of several systems."""

import numpy as np
import pytest

from sencache.demo_model import data
from sencache.demo_model.difference import difference_caption, most_different_object
from sencache.report.heatmap import colour_scale, heat_map

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

CAPTION = "a large red square standing still and a large blue circle moving right on a plain background"


def clip(caption=CAPTION, seed=0):
    objects, background = data.parse_caption(caption)
    return data.render(objects, background, np.random.default_rng(seed))


def test_heat_map_is_dark_where_equal_and_saturates_at_a_quarter_range_times_four():
    a = np.full((2, 4, 4, 3), 100, np.uint8)
    b = a.copy()
    b[:, 0, 0] = 164  # 64 levels off: × 4 reaches the top of the scale
    b[:, 1, 1] = 116  # 16 levels: a quarter of it
    h = heat_map(a, b, gain=4.0)
    assert h.shape == (2, 4, 4, 3) and h.dtype == np.uint8
    assert (h[:, 2, 2] == colour_scale(np.array(0.0))).all()
    assert (h[:, 0, 0] == colour_scale(np.array(1.0))).all()
    assert (h[:, 1, 1] == colour_scale(np.array(0.25))).all()
    with pytest.raises(ValueError, match="shapes"):
        heat_map(a, b[:1])


def test_caption_names_the_object_whose_region_differs_most_and_who_is_closer():
    reference = clip()
    red = data.COLORS["red"]
    red_pixels = np.all(reference == red, axis=-1)
    first = reference.copy()
    first[red_pixels] = (first[red_pixels] * 0.6).astype(np.uint8)  # the first cache dims the red square
    second = reference.copy()
    blue_pixels = np.all(reference == data.COLORS["blue"], axis=-1)
    second[blue_pixels] = np.clip(second[blue_pixels].astype(int) + 20, 0, 255).astype(np.uint8)  # small change
    found = most_different_object(CAPTION, reference, first, second)
    assert found["object"] == "large red square standing still"
    assert found["first_error"] > 10 * max(found["second_error"], 0.1)
    text = difference_caption(CAPTION, reference, first, second, ("MagCache", "SenCache"))
    assert text.startswith("Difference: the large red square standing still (MagCache ")
    # swapped roles: the blue circle is now where they differ most
    assert most_different_object(CAPTION, reference, second, reference)["object"] == "large blue circle moving right"


def test_caption_says_so_when_no_object_is_drawn():
    blank = np.full((data.FRAMES, data.SIZE, data.SIZE, 3), 120, np.uint8)
    assert most_different_object(CAPTION, blank, blank, blank) is None
    assert "no object" in difference_caption(CAPTION, blank, blank, blank)


def test_demo_refuses_a_system_that_is_not_shipped_and_says_how_to_leave_it_out(tmp_path, monkeypatch, capsys):
    from sencache.cli import main
    from sencache.demo_model import systems

    module, _, title = systems.SYSTEMS["ltx"]
    monkeypatch.setitem(systems.SYSTEMS, "ltx", (module, tmp_path / "missing", title))
    assert main(["demo", "--systems", "wan", "ltx", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out" / "wan").exists()  # refused before anything ran
    assert "--systems wan" in capsys.readouterr().err
