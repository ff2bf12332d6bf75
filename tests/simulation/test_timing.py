"""The simulated volunteers' time model and their corrector mix."""

from __future__ import annotations

import numpy as np
import pytest

from etchacell_loop.simulation.correction import Corrector, CorrectorMix
from etchacell_loop.simulation.timing import TimeModel, path_length_px


def test_tracing_a_nucleus_takes_about_as_long_as_a_real_classification() -> None:
    """A 370 px radius nucleus at the subject's 1000 px: about 2,300 px of outline."""
    t = np.linspace(0, 2 * np.pi, 500)
    outline_px = path_length_px([(370 * np.cos(t), 370 * np.sin(t))])
    assert outline_px == pytest.approx(2 * np.pi * 370, rel=1e-3)
    model = TimeModel()
    traced = model.tracing_s(outline_px)
    accepted = model.correcting_s(shown_px=outline_px, drawn_px=0.0, deleted=0)
    redrawn = model.correcting_s(shown_px=outline_px, drawn_px=outline_px, deleted=1)
    assert 35.0 < traced < 60.0
    assert accepted < traced / 3  # keeping a right outline is cheap
    assert redrawn > traced  # redrawing costs the tracing and the reading
    assert model.tracing_s(0.0) == model.look_s


def test_paces_spread_around_one() -> None:
    rng = np.random.default_rng(0)
    paces = [TimeModel().pace(rng) for _ in range(2000)]
    assert 0.95 < float(np.median(paces)) < 1.05 and min(paces) > 0


def test_a_corrector_mix_is_parsed_scaled_and_drawn() -> None:
    mix = CorrectorMix.parse("careful=3,accept=1")
    assert mix.fractions == {Corrector.CAREFUL: 3.0, Corrector.ACCEPT: 1.0}
    sixty = CorrectorMix().with_accepting(0.6)
    assert sixty.fractions[Corrector.ACCEPT] == 0.6 and sum(sixty.fractions.values()) == pytest.approx(1.0)
    assert sixty.fractions[Corrector.CAREFUL] / sixty.fractions[Corrector.PARTIAL] == pytest.approx(0.5 / 0.2)
    rng = np.random.default_rng(1)
    drawn = [sixty.draw(rng) for _ in range(4000)]
    assert drawn.count(Corrector.ACCEPT) / len(drawn) == pytest.approx(0.6, abs=0.03)
    with pytest.raises(ValueError, match="bad corrector entry"):
        CorrectorMix.parse("lazy=1")
    with pytest.raises(ValueError):
        CorrectorMix().with_accepting(1.5)
