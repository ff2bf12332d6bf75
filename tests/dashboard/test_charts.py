"""The inline SVG charts: values drawn to scale, labels escaped, nothing drawn without data."""

from __future__ import annotations

import re

import pytest

from etchacell_loop.dashboard.charts import bar_chart, grouped_bars, nice_ceiling


@pytest.mark.parametrize(("value", "ceiling"), [(0, 1), (0.7, 1), (3, 5), (7.5, 10), (120, 200), (1001, 2000)])
def test_axis_tops_are_round(value: float, ceiling: float) -> None:
    assert nice_ceiling(value) == ceiling


def test_bars_are_drawn_to_scale_with_their_values_as_tooltips() -> None:
    svg = str(bar_chart(["a", "b"], [50.0, 100.0], label="two bars"))
    heights = [float(h) for h in re.findall(r'class="bar"[^>]*height="([\d.]+)"', svg)]
    assert len(heights) == 2 and heights[1] == pytest.approx(2 * heights[0])
    assert "<title>b: 100</title>" in svg


def test_labels_are_escaped() -> None:
    svg = str(bar_chart(["<script>x</script>"], [1.0], label='"quoted" & <b>'))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'aria-label="&#34;quoted&#34; &amp; &lt;b&gt;"' in svg


def test_a_marker_and_a_line_can_be_added() -> None:
    svg = str(
        bar_chart(["1", "2", "3"], [1.0, 2.0, 3.0], label="l", line=[3.0, 2.0, 1.0], marker_at=2, marker_label="30")
    )
    assert 'class="marker"' in svg and 'class="line"' in svg


def test_a_line_of_one_day_is_still_drawn() -> None:
    """A polyline through one point draws nothing: each value gets its own dot, with its figure."""
    svg = str(bar_chart(["12-05"], [47.0], label="l", line=[12.0], line_label="volunteers"))
    assert len(re.findall(r'<circle class="point"', svg)) == 1
    assert "<title>12-05 volunteers: 12</title>" in svg


def test_no_data_says_so() -> None:
    assert "no data yet" in str(bar_chart([], [], label="empty"))
    assert "no data yet" in str(grouped_bars(["v1"], {"F": [None]}, label="empty"))


def test_grouped_bars_leave_gaps_for_missing_values() -> None:
    svg = str(grouped_bars(["v1", "v2"], {"F": [0.5, None], "Dice": [0.7, 0.8]}, label="g", top=1.0))
    assert len(re.findall(r'class="bar"', svg)) == 3
