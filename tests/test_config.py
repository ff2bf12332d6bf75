"""Configuration: TOML file, environment overrides, secrets, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from etchacell_loop.config import (
    MASK,
    ConfigError,
    env_var_for,
    flatten,
    known_keys,
    load_settings,
    setting_sources,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_follow_the_paper(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.imaging.pixel_size_xy_nm == 10.0
    assert settings.imaging.pixel_size_z_nm == 50.0
    assert settings.imaging.jpeg_quality == 90
    assert settings.imaging.subject_size_px == 1000
    assert settings.imaging.flipbook_offsets_nm == (-500.0, -250.0, 0.0, 250.0, 500.0)
    assert settings.consensus.agreement_fraction == 0.5
    assert settings.consensus.envelope_width_nm == 70.0
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'data' / 'etchacell.db'}"


def test_toml_file_then_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _write(
        tmp_path / "site.toml",
        '[panoptes]\nproject_id = 1234\nendpoint = "http://127.0.0.1:8765/"\n[retirement]\nmin_classifications = 6\n',
    )
    settings = load_settings(config)
    assert settings.panoptes.project_id == 1234
    assert settings.panoptes.endpoint == "http://127.0.0.1:8765"
    assert settings.retirement.min_classifications == 6

    monkeypatch.setenv("ETCHACELL_RETIREMENT__MIN_CLASSIFICATIONS", "12")
    monkeypatch.setenv("ETCHACELL_DATABASE_URL", "postgresql://loop:pw@db.example/loop")
    settings = load_settings(config)
    assert settings.retirement.min_classifications == 12
    assert settings.panoptes.project_id == 1234  # untouched keys of the section survive
    assert settings.effective_database_url == "postgresql://loop:pw@db.example/loop"


def test_config_path_from_environment_and_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "etchacell.toml", "[jobs]\ningest_interval_s = 60\n")
    assert load_settings().jobs.ingest_interval_s == 60
    other = _write(tmp_path / "other.toml", "[jobs]\ningest_interval_s = 90\n")
    monkeypatch.setenv("ETCHACELL_CONFIG", str(other))
    assert load_settings().jobs.ingest_interval_s == 90


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    config = _write(site / "etchacell.toml", 'data_dir = "state"\n')
    assert load_settings(config).data_dir == site / "state"


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ("[retirement]\nmin_classifications = 'many'\n", {}, "retirement.min_classifications = 'many'"),
        ("", {"ETCHACELL_IMAGING__JPEG_QUALITY": "101"}, "imaging.jpeg_quality = '101'"),
        ("", {"ETCHACELL_JOBS__INGEST_INTERVAL_S": "soon"}, "ETCHACELL_JOBS__INGEST_INTERVAL_S"),
        ("[panoptes]\nendpoint = 'zooniverse.org'\n", {}, "panoptes.endpoint"),
        (
            "[panoptes]\nprojectid = 3\n",
            {},
            "panoptes.projectid: unknown setting (did you mean panoptes.project_id?)",
        ),
        (
            "[correction]\nmonitoring_fraction = 0.1\n",
            {},
            "correction.monitoring_fraction: unknown setting (replaced by correction.monitoring_slices",
        ),
        (
            "",
            {"ETCHACELL_CORRECTION__MONITORING_FRACTION": "0.1"},
            "correction.monitoring_fraction: unknown setting (replaced by correction.monitoring_slices",
        ),
        (
            "",
            {"ETCHACELL_CORRECTION__MONITORING_SLICES": "2"},
            "could never judge a version (set by ETCHACELL_CORRECTION__MONITORING_SLICES)",
        ),
        (
            "[correction]\nmonitoring_slices = 2\n",
            {},
            "monitoring_slices (2) is below min_monitoring_slices (3): the monitoring guard could never judge",
        ),
        ("[imaging]\nflipbook_offsets_nm = [-250, 250]\n", {}, "imaging.flipbook_offsets_nm"),
        ("[retirement]\nmin_classifications = 40\n", {}, "max_classifications must be at least"),
        ("[consensus]\ndenominator = 'everyone'\n", {}, "consensus.denominator"),
        ("database_url = 'not a url'\n", {}, "database_url"),
    ],
)
def test_bad_values_get_one_line_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, env: dict[str, str], expected: str
) -> None:
    config = _write(tmp_path / "etchacell.toml", toml)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_broken_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(_write(tmp_path / "broken.toml", "[panoptes\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_secret_from_environment_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCHACELL_PANOPTES__CLIENT_SECRET", "s3cr3t-value")
    settings = load_settings()
    assert settings.panoptes.client_secret is not None
    assert settings.panoptes.client_secret.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(settings)
    assert dict(flatten(settings))["panoptes.client_secret"] == MASK


def test_secret_from_file(tmp_path: Path) -> None:
    _write(tmp_path / "client.secret", "from-a-file\n")
    config = _write(tmp_path / "etchacell.toml", "[panoptes]\nclient_secret_file = 'client.secret'\n")
    secret = load_settings(config).panoptes.client_secret
    assert secret is not None and secret.get_secret_value() == "from-a-file"
    assert setting_sources(config)["panoptes.client_secret"].startswith("file")


def test_secret_file_problems_name_the_key(tmp_path: Path) -> None:
    config = _write(tmp_path / "etchacell.toml", "[panoptes]\nclient_secret_file = 'absent.secret'\n")
    with pytest.raises(ConfigError, match=r"panoptes\.client_secret_file.*cannot read secret file"):
        load_settings(config)
    _write(tmp_path / "empty.secret", "  \n")
    config = _write(tmp_path / "etchacell.toml", "[panoptes]\nclient_secret_file = 'empty.secret'\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings(config)


@pytest.mark.parametrize("key", ["panoptes.client_secret", "dashboard.operator_token"])
def test_secrets_written_into_the_toml_are_refused(tmp_path: Path, key: str) -> None:
    section, name = key.split(".")
    config = _write(tmp_path / "etchacell.toml", f"[{section}]\n{name} = 'leaked'\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert env_var_for(key) in str(caught.value)
    assert "leaked" not in str(caught.value)


def test_database_password_is_masked_in_flattened_view(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCHACELL_DATABASE_URL", "postgresql://loop:hunter2@db.example:5432/loop")
    shown = dict(flatten(load_settings()))["database_url"]
    assert "hunter2" not in shown
    assert "db.example" in shown


def test_every_key_has_an_environment_variable() -> None:
    keys = known_keys()
    assert "retirement.stability_dice" in keys
    assert env_var_for("retirement.stability_dice") == "ETCHACELL_RETIREMENT__STABILITY_DICE"
    assert all(key.count(".") <= 1 for key in keys)


def test_example_configuration_is_valid_and_complete(tmp_path: Path) -> None:
    """The shipped example documents every key and loads as it is."""
    example = Path(__file__).resolve().parents[1] / "etchacell.example.toml"
    text = example.read_text(encoding="utf-8")
    settings = load_settings(example)
    assert settings.imaging.jpeg_quality == 90
    for key in known_keys():
        section, _, name = key.rpartition(".")
        assert name in text, f"{key} is not documented in etchacell.example.toml"
        if section:
            assert f"[{section}]" in text
