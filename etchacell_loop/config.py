"""Settings for every etchacell process, from one TOML file overridden by ``ETCHACELL_*`` variables.

Why one place: the daemon, the GPU worker, the dashboard and the CLI must agree on the database,
the Panoptes project and the loop's thresholds. They all call :func:`load_settings`.

Precedence, highest first: environment (``ETCHACELL_SECTION__KEY``), the TOML file
(``--config`` or ``ETCHACELL_CONFIG``, else ``./etchacell.toml`` when present), then defaults.
Secrets (the Panoptes client secret, the dashboard operator token) are read only from the
environment or from a file named in the configuration, never from the TOML itself, and they are
held as :class:`~pydantic.SecretStr` so they never print by accident.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import make_url

ENV_PREFIX = "ETCHACELL_"
ENV_NESTED_DELIMITER = "__"
CONFIG_ENV_VAR = "ETCHACELL_CONFIG"
DEFAULT_CONFIG_NAME = "etchacell.toml"
MASK = "********"

# Settings that were replaced: what an old configuration is told instead of "unknown setting".
RENAMED = {
    "correction.monitoring_fraction": (
        " (replaced by correction.monitoring_slices: monitoring slices per model version, a count, not a share)"
    ),
}

# Keys that hold secrets directly: accepted from the environment only.
SECRET_KEYS = frozenset({"panoptes.client_secret", "dashboard.operator_token"})


class ConfigError(Exception):
    """A configuration problem, phrased as one line that names the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PanoptesSettings(_Section):
    """Where the Zooniverse project lives and how the loop signs in (client credentials)."""

    endpoint: str = "https://www.zooniverse.org"
    caesar_endpoint: str = "https://caesar.zooniverse.org"
    project_id: int | None = Field(default=None, gt=0)
    segmentation_workflow_id: int | None = Field(default=None, gt=0)
    correction_workflow_id: int | None = Field(default=None, gt=0)
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    request_timeout_s: float = Field(default=30.0, gt=0)
    page_size: int = Field(default=100, ge=1, le=100)
    # Ingest re-reads this many ids below its cursor: a classification committed after a higher id
    # was read still arrives (ids are site-wide; 500 is a minute or two of Zooniverse's traffic).
    lookback_ids: int = Field(default=500, ge=0)

    @field_validator("endpoint", "caesar_endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("client_secret_file")
    @classmethod
    def _readable_secret_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            _read_secret_file(value)
        return value

    @model_validator(mode="after")
    def _secret_from_file(self) -> PanoptesSettings:
        if self.client_secret is None and self.client_secret_file is not None:
            object.__setattr__(self, "client_secret", _read_secret_file(self.client_secret_file))
        return self


class JobSettings(_Section):
    """How often the daemon runs each job; a job counts as late after ``late_factor`` intervals."""

    ingest_interval_s: int = Field(default=300, ge=5)
    aggregate_interval_s: int = Field(default=300, ge=5)
    retire_interval_s: int = Field(default=600, ge=5)
    train_interval_s: int = Field(default=900, ge=5)
    publish_interval_s: int = Field(default=900, ge=5)
    late_factor: float = Field(default=3.0, ge=1.0)

    def intervals(self) -> dict[str, int]:
        """Seconds between runs of each daemon job, by job name, in the order one round runs them.
        (Here, not beside the jobs, so the dashboard can judge lateness without importing them.)"""
        return {
            "ingest": self.ingest_interval_s,
            "aggregate": self.aggregate_interval_s,
            "retire": self.retire_interval_s,
            "train": self.train_interval_s,
            "publish": self.publish_interval_s,
        }


class ConsensusSettings(_Section):
    """CRIA parameters (paper sections 2.4 and 4.8)."""

    method: Literal["cria", "cria-robust", "staple"] = "cria-robust"
    join_rule: Literal["greedy", "min-total"] = "greedy"
    agreement_fraction: float = Field(default=0.5, gt=0.0, le=1.0)
    denominator: Literal["drawers", "classifications"] = "drawers"
    envelope_width_nm: float = Field(default=70.0, gt=0.0)
    gate_iou: float = Field(default=0.5, ge=0.0, le=1.0)
    flag_below_dice: float = Field(default=0.5, ge=0.0, le=1.0)
    flag_min_slices: int = Field(default=3, ge=1)
    # corrections of a machine outline (cria/correction.py, docs/corrections.md)
    correction_kept_weight: float = Field(default=0.5, gt=0.0, le=1.0)
    correction_agree_dice: float = Field(default=0.9, gt=0.0, le=1.0)
    correction_min_edits: int = Field(default=2, ge=1)
    correction_deleted_weight: float = Field(default=0.5, gt=0.0, le=1.0)


class RetirementSettings(_Section):
    """When a subject's consensus counts as settled, instead of a fixed 30 classifications.

    The bounds count the subject's own classifications (of that subject, in its own workflow, as
    Panoptes counts toward its retirement limit); ``stability_dice`` and ``stable_checks`` are what
    ``retirement.StableConsensus`` asks of successive checks of the subject.
    """

    policy: Literal["stable-consensus", "fixed-count"] = "stable-consensus"
    min_classifications: int = Field(default=8, ge=1)
    min_corrections: int = Field(default=4, ge=1)  # the same, for correction subjects (bench_corrections.py)
    max_classifications: int = Field(default=30, ge=1)
    stability_dice: float = Field(default=0.95, gt=0.0, le=1.0)
    stable_checks: int = Field(default=2, ge=1)
    panoptes_reason: Literal["consensus", "classification_count", "other", "human"] = "consensus"

    @model_validator(mode="after")
    def _bounds_ordered(self) -> RetirementSettings:
        if self.max_classifications < self.min_classifications:
            raise ValueError("max_classifications must be at least min_classifications")
        return self


class TrainingSettings(_Section):
    """When the daemon queues an automatic training run, what it trains, and how the worker runs it
    (backend, precision, input workers: see ``model.backend`` and ``model.pipeline``)."""

    min_new_consensus_slices: int = Field(default=200, ge=1)
    preset: str = "small"
    epochs: int | None = Field(default=None, ge=1)  # None: the preset's
    steps_per_epoch: int | None = Field(default=None, ge=1)  # None: the preset's
    batch_size: int | None = Field(default=None, ge=1)  # None: the preset's; else its rate scaled by sqrt
    heartbeat_timeout_s: int = Field(default=600, ge=10)
    backend: Literal["auto", "jax", "torch", "tensorflow"] = "auto"  # auto: KERAS_BACKEND, else the fastest installed
    precision: Literal["auto", "float32", "mixed_bfloat16"] = "auto"  # auto: bf16 only where measured faster
    data_workers: int | None = Field(default=None, ge=0)  # processes making batches; None: every core but one

    def run_config(self) -> dict[str, int]:
        """What a queued run carries for the worker: the preset's epochs, steps and batch, where overridden."""
        chosen = {"epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch, "batch_size": self.batch_size}
        return {key: value for key, value in chosen.items() if value is not None}


class CorrectionSettings(_Section):
    """How model predictions go back to volunteers."""

    mode: Literal["caesar", "fallback"] = "caesar"
    budget_per_round: int = Field(default=50, ge=0)  # most uncertain slices sent, per ROI and model version
    # random slices per model version (spread over its ROIs) corrected and also traced from scratch: the
    # monitoring guard's sample. A count, not a share: the guard judges a version on the median of its pairs,
    # which needs a few slices whatever the round's size (bench_corrections.py; docs/corrections.md)
    monitoring_slices: int = Field(default=5, ge=0)
    tap_rule: Literal["all", "majority", "any"] = "all"
    min_component_voxels: int | None = Field(default=None, ge=0)  # None: the paper's 10,000 model voxels
    keep_largest: bool = True  # keep only each ROI's largest envelope component: its nucleus (paper section 4.12)
    tap_batch_size: int | None = Field(default=None, ge=1)  # TAP windows per model call; None: 8 CPU, 32 accelerator
    # the monitoring guard (loop/monitoring.py): a version whose corrected consensus agrees with the traced one
    # on its monitoring slices below this median Dice, once this many are measured, is not trained on
    min_monitoring_dice: float = Field(default=0.8, ge=0.0, le=1.0)
    min_monitoring_slices: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _guard_can_judge(self) -> CorrectionSettings:
        if 0 < self.monitoring_slices < self.min_monitoring_slices:
            raise ValueError(
                f"monitoring_slices ({self.monitoring_slices}) is below min_monitoring_slices "
                f"({self.min_monitoring_slices}): the monitoring guard could never judge a version"
            )
        return self


class ImagingSettings(_Section):
    """Source voxel size and the subject format of the paper (1000 px JPEG, 5-frame flipbook)."""

    pixel_size_xy_nm: float = Field(default=10.0, gt=0.0)
    pixel_size_z_nm: float = Field(default=50.0, gt=0.0)
    crop_size_px: int = Field(default=2000, ge=16)
    subject_size_px: int = Field(default=1000, ge=16)
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    flipbook_offsets_nm: tuple[float, ...] = (-500.0, -250.0, 0.0, 250.0, 500.0)

    @field_validator("flipbook_offsets_nm")
    @classmethod
    def _offsets_centered(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if 0.0 not in value:
            raise ValueError("must include 0 (the slice itself)")
        if list(value) != sorted(value):
            raise ValueError("must be in increasing order")
        return value


class ComputeSettings(_Section):
    """Where whole-volume prediction and export aggregation run (``etchacell_loop.compute.cluster``):
    ``auto`` each command's fastest way on one machine (``predict`` a local Dask cluster,
    ``aggregate`` a process pool, the GPU worker's batches in the worker); ``local`` a Dask cluster
    of this machine's cores and GPUs for every command; ``none`` in the command's own process; or
    an existing Dask cluster, by address (``tcp://host:8786``) or scheduler file (``.json``)."""

    scheduler: str = "auto"
    workers: int | None = Field(default=None, ge=1)  # a local cluster's CPU workers; None: one per core

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        text = value.strip()
        if not text:
            raise ValueError(
                "must be auto, local, none, a scheduler address (tcp://host:8786) or a scheduler file (.json)"
            )
        return text


class DashboardSettings(_Section):
    """The ops dashboard: where it listens and who may act."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    operator_token: SecretStr | None = None
    operator_token_file: Path | None = None
    public_read: bool = False
    cache_s: float = Field(default=30.0, ge=0.0)  # how long the costly whole-table figures are reused

    @field_validator("operator_token_file")
    @classmethod
    def _readable_token_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            _read_secret_file(value)
        return value

    @model_validator(mode="after")
    def _token_from_file(self) -> DashboardSettings:
        if self.operator_token is None and self.operator_token_file is not None:
            object.__setattr__(self, "operator_token", _read_secret_file(self.operator_token_file))
        return self


class Settings(BaseSettings):
    """The effective configuration of one etchacell process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Path("data")
    database_url: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    panoptes: PanoptesSettings = PanoptesSettings()
    jobs: JobSettings = JobSettings()
    consensus: ConsensusSettings = ConsensusSettings()
    retirement: RetirementSettings = RetirementSettings()
    training: TrainingSettings = TrainingSettings()
    correction: CorrectionSettings = CorrectionSettings()
    imaging: ImagingSettings = ImagingSettings()
    compute: ComputeSettings = ComputeSettings()
    dashboard: DashboardSettings = DashboardSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML content arrives as init kwargs; the environment must win over it.
        return (env_settings, init_settings)

    @field_validator("database_url")
    @classmethod
    def _parseable_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            make_url(value)
        except Exception as exc:
            raise ValueError(f"not a database URL ({exc})") from None
        return value

    @property
    def effective_database_url(self) -> str:
        """The configured URL, or a SQLite file under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'etchacell.db').resolve()}"


def _read_secret_file(path: Path) -> SecretStr:
    try:
        text = path.expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    if not text:
        raise ValueError(f"secret file {path} is empty")
    return SecretStr(text)


def find_config_file(explicit: Path | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The TOML file to read: ``--config``, else ``$ETCHACELL_CONFIG``, else ``./etchacell.toml`` if present."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return explicit
    if env.get(CONFIG_ENV_VAR):
        return Path(env[CONFIG_ENV_VAR])
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.is_file() else None


def read_toml(path: Path) -> dict[str, Any]:
    """Read the configuration file, refusing secrets written into it."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    for key in SECRET_KEYS:
        section, name = key.split(".")
        if isinstance(data.get(section), dict) and name in data[section]:
            env_name = env_var_for(key)
            raise ConfigError(f"{key}: secrets are not read from {path}; set {env_name} or {key}_file instead")
    _resolve_relative_paths(data, base=path.parent)
    return data


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> None:
    """Relative paths in a config file are relative to that file, not to the caller's directory."""
    path_keys = {
        (None, "data_dir"),
        ("panoptes", "client_secret_file"),
        ("dashboard", "operator_token_file"),
    }
    for section, name in path_keys:
        holder = data if section is None else data.get(section)
        if isinstance(holder, dict) and isinstance(holder.get(name), str):
            candidate = Path(holder[name]).expanduser()
            holder[name] = str(candidate if candidate.is_absolute() else base / candidate)


def env_var_for(dotted_key: str) -> str:
    """``retirement.min_classifications`` → ``ETCHACELL_RETIREMENT__MIN_CLASSIFICATIONS``."""
    return ENV_PREFIX + dotted_key.replace(".", ENV_NESTED_DELIMITER).upper()


def load_settings(config_path: Path | None = None) -> Settings:
    """Build the effective settings; any problem becomes one :class:`ConfigError` line naming the key."""
    path = find_config_file(config_path)
    file_data = read_toml(path) if path is not None else {}
    try:
        return Settings(**file_data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, setting_sources(config_path))) from None


def describe_validation_error(exc: ValidationError, sources: Mapping[str, str] | None = None) -> str:
    """Every problem on one line: ``key = value: reason (from where it was set)``."""
    parts = []
    sources = sources or {}
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"] if not isinstance(p, int)) or "(top level)"
        reason = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown setting{RENAMED.get(key) or _suggestion(key)}")
            continue
        shown = MASK if key in SECRET_KEYS else _short_repr(error.get("input"))
        origin = _origin(key, sources)
        parts.append((f"{key} = {shown}: {reason}" if shown else f"{key}: {reason}") + origin)
    return "; ".join(parts)


def known_keys() -> list[str]:
    """Every dotted setting name, for suggestions and documentation."""
    keys: list[str] = []
    for name, info in Settings.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(f"{name}.{sub}" for sub in annotation.model_fields)
        else:
            keys.append(name)
    return keys


def _suggestion(key: str) -> str:
    close = difflib.get_close_matches(key, known_keys(), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _origin(key: str, sources: Mapping[str, str]) -> str:
    """Where ``key`` was set; for a whole section's error (e.g. retirement bounds), where each of
    its keys that was set came from: the variable or the file."""
    keys = [key] if key in sources else sorted(k for k in sources if k.startswith(key + "."))
    places = sorted({f"set by {env_var_for(k)}" if sources[k] == "env" else f"in {sources[k]}" for k in keys})
    return f" ({', '.join(places)})" if places else ""


def _short_repr(value: Any) -> str:
    if value is None or isinstance(value, dict):
        return ""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def masked_database_url(url: str) -> str:
    """The database URL with any password replaced, for printing and logging."""
    return make_url(url).render_as_string(hide_password=True)


def flatten(settings: Settings) -> Iterator[tuple[str, Any]]:
    """Every effective setting as ``(dotted_key, printable_value)``, secrets masked."""
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            for sub in type(value).model_fields:
                yield f"{name}.{sub}", _printable(getattr(value, sub))
        elif name == "database_url":
            yield name, masked_database_url(settings.effective_database_url)
        else:
            yield name, _printable(value)


def _printable(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, tuple):
        return list(value)
    return value


def setting_sources(config_path: Path | None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Where each explicitly set key came from (``env`` or the file); unlisted keys are defaults."""
    env = os.environ if environ is None else environ
    sources: dict[str, str] = {}
    path = find_config_file(config_path, env)
    if path is not None and path.is_file():
        for section, value in read_toml(path).items():
            if isinstance(value, dict):
                for key in value:
                    sources[f"{section}.{key}"] = str(path)
            else:
                sources[section] = str(path)
    for name in env:
        if name.startswith(ENV_PREFIX) and name != CONFIG_ENV_VAR:
            dotted = name[len(ENV_PREFIX) :].lower().replace(ENV_NESTED_DELIMITER, ".")
            sources[dotted] = "env"
    for key in SECRET_KEYS:
        if key in sources:
            continue
        if f"{key}_file" in sources:
            sources[key] = f"file ({key}_file)"
    return sources
