"""``make demo`` configures enough monitoring for the guard to judge: with the correction settings that
``ops/demo.sh`` exports, the held-back nucleus (every slice of the demo volume open, none traced) gives each
of the demo's two model versions at least ``correction.min_monitoring_slices`` monitoring slices, chosen
by the publish job's own selection."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from etchacell_loop.config import Settings
from etchacell_loop.db.models import SelectionReason
from etchacell_loop.loop.publish_job import choose_slices, monitoring_share

DEMO = Path(__file__).resolve().parents[1] / "ops" / "demo.sh"
ROUNDS = 2  # the demo ends once two model versions have had their predictions corrected


def demo_exports() -> dict[str, str]:
    """Every ``ETCHACELL_*=value`` that the demo script exports."""
    text = DEMO.read_text(encoding="utf-8")
    return dict(re.findall(r"\b(ETCHACELL_[A-Z0-9_]+)=([^\s$\"]+)", text))


def demo_depth() -> int:
    """Slices of the demo volume (``synth volume --shape Z,Y,X``): the held-back ROI spans them all."""
    found = re.search(r"synth volume \S+ --shape (\d+),", DEMO.read_text(encoding="utf-8"))
    assert found, "ops/demo.sh generates its volume with --shape"
    return int(found.group(1))


def test_every_demo_round_sends_enough_monitoring_slices_for_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in demo_exports().items():
        if name.startswith("ETCHACELL_CORRECTION__"):
            monkeypatch.setenv(name, value)
    correction = Settings().correction
    open_slices = set(range(demo_depth()))
    for batch_id in range(1, ROUNDS + 1):
        uncertainty = {z: ((z * 7919) % 97) / 97 for z in sorted(open_slices)}
        share = monitoring_share(correction.monitoring_slices, batches_left=1)  # one held-back ROI: a batch a version
        chosen = choose_slices(uncertainty, correction.budget_per_round, share, seed=batch_id)
        monitoring = [z for z, why in chosen.items() if why is SelectionReason.MONITORING]
        assert len(monitoring) >= correction.min_monitoring_slices, (
            f"round {batch_id}: {len(monitoring)} monitoring slices, the guard needs {correction.min_monitoring_slices}"
        )
        open_slices -= set(chosen)  # sent slices get a corrected consensus: not open for the next version
