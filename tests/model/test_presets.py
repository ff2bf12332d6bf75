from __future__ import annotations

from dataclasses import replace

import pytest

from etchacell_loop.model.presets import PRESETS, PresetError, get_preset, preset_from_dict, z_pooling


def test_paper_preset_is_the_papers_configuration() -> None:
    paper = get_preset("paper")
    assert paper.architecture == "unet-2.5d"
    assert paper.patch_zyx == (12, 256, 256)
    assert (paper.start_filters, paper.depth, paper.dropout, paper.batch_norm) == (32, 4, 0.3, True)
    assert (paper.learning_rate, paper.dice_smooth, paper.voxel_size_nm, paper.envelope_width_nm) == (5e-4, 1, 50, 70)
    assert (paper.epochs, paper.steps_per_epoch, paper.batch_size) == (100, 100, 12)
    assert (paper.plateau_factor, paper.plateau_patience) == (0.75, 4)


def test_every_named_preset_exists_with_its_architecture() -> None:
    assert {name: p.architecture for name, p in PRESETS.items()} == {
        "paper": "unet-2.5d",
        "paper-3d": "unet-3d",
        "small": "unet-2.5d",
        "small-3d": "unet-3d",
    }
    assert all(isinstance(p.patch_zyx, tuple) for p in PRESETS.values())


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(PresetError, match=r"unknown model preset 'huge'.*paper, paper-3d, small, small-3d"):
        get_preset("huge")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"patch_zyx": (8, 60, 64)}, "divisible by 2\\*\\*depth"),
        ({"architecture": "unet-4d"}, "architecture"),
        ({"dropout": 1.0}, "dropout"),
        ({"plateau_factor": 1.5}, "plateau"),
    ],
)
def test_inconsistent_presets_are_refused(change: dict[str, object], problem: str) -> None:
    with pytest.raises(PresetError, match=problem):
        replace(get_preset("small"), **change)  # type: ignore[arg-type]


def test_presets_survive_a_json_round_trip() -> None:
    import json

    for preset in PRESETS.values():
        assert preset_from_dict(json.loads(json.dumps(preset.as_dict()))) == preset


def test_stored_preset_with_unknown_keys_is_refused() -> None:
    with pytest.raises(PresetError, match="unknown keys: colour"):
        preset_from_dict({**get_preset("small").as_dict(), "colour": "red"})


def test_z_is_pooled_only_while_the_patch_is_deep_enough() -> None:
    assert z_pooling(12, 4) == (2, 2, 1, 1)  # 12 → 6 → 3, then y and x only
    assert z_pooling(8, 3) == (2, 2, 1)  # 8 → 4 → 2
    assert z_pooling(1, 3) == (1, 1, 1)
