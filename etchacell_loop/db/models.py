"""The loop's SQL schema: every row the daemon, the workers and the dashboard share.

The database is the only meeting point between processes. Rows say what exists and which state
it is in; large things (masks, models, predictions, JPEGs) live as files under the data directory
and rows hold their URIs. Conventions:

* ``id`` is our own integer key; ``panoptes_id`` is Panoptes' id (BIGINT: they pass 2**31).
* Timestamps are UTC and time-zone aware (:class:`~etchacell_loop.db.types.UTCDateTime`).
* Enumerations are stored as their string values; "predicted" and "corrected" are explicit
  states (:class:`ConsensusKind`, :class:`SubjectKind`), never inferred from paths.
* Raw Panoptes payloads (annotations, metadata) are kept verbatim as text so nothing is lost even
  when our parser rejects them.
* Slice indices are z indices in the *source volume* (not the ROI, not the subject frame).
"""

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from etchacell_loop.db.types import UTCDateTime, enum_column_type, json_type, utcnow

# Alembic's naming convention: stable constraint names on every backend, so migrations can drop them.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class WorkflowRole(enum.StrEnum):
    SEGMENTATION = "segmentation"
    CORRECTION = "correction"


class SubjectKind(enum.StrEnum):
    RAW = "raw"
    PREDICTION = "prediction"


class UploadState(enum.StrEnum):
    PENDING = "pending"  # prepared locally, nothing on Panoptes yet
    CREATED = "created"  # subject and media exist on Panoptes
    LINKED = "linked"  # in its subject set, so volunteers can see it
    FAILED = "failed"  # gave up after retries; `upload_error` says why


class RetirementState(enum.StrEnum):
    ACTIVE = "active"
    RETIRING = "retiring"  # decided here, not yet confirmed by Panoptes
    RETIRED = "retired"


# A subject whose consensus is settled: the stopping rule retired it (confirmed by Panoptes or not). Training,
# volunteer effort and the monitoring guard count only these.
SETTLED_STATES = (RetirementState.RETIRING, RetirementState.RETIRED)


class ParseStatus(enum.StrEnum):
    PENDING = "pending"
    OK = "ok"
    PARTIAL = "partial"  # some marks skipped or clipped; reasons recorded
    INVALID = "invalid"  # nothing usable; the raw row is still kept


class ClassificationSource(enum.StrEnum):
    API = "api"
    EXPORT = "export"


class ConsensusKind(enum.StrEnum):
    VOLUNTEER = "volunteer"  # CRIA over tracings of raw subjects
    CORRECTED = "corrected"  # CRIA over volunteers' corrections of model predictions


class DecisionOutcome(enum.StrEnum):
    RETIRE = "retire"
    KEEP = "keep"


class SyncState(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    CONFIRMED = "confirmed"
    FAILED = "failed"


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TrainingTrigger(enum.StrEnum):
    MANUAL = "manual"
    AUTOMATIC = "automatic"


class DataSplit(enum.StrEnum):
    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"
    UNASSIGNED = "unassigned"


class MetricReference(enum.StrEnum):
    CONSENSUS = "consensus"
    TRUTH = "truth"


class SelectionReason(enum.StrEnum):
    NOT_SELECTED = "not_selected"
    UNCERTAIN = "uncertain"  # chosen because the TAP axes disagree most
    MONITORING = "monitoring"  # chosen at random to measure the model without bias


class JobStatus(enum.StrEnum):
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"


class EventLevel(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def _enum(enum_cls: type[enum.Enum], default: Any = ..., **kwargs: Any) -> Any:
    return Field(default=default, sa_type=enum_column_type(enum_cls), **kwargs)


def _when(**kwargs: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kwargs)


def _created() -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


def _json(**kwargs: Any) -> Any:
    return Field(sa_type=json_type(), **kwargs)


def _bigint(**kwargs: Any) -> Any:
    return Field(sa_type=sa.BigInteger, **kwargs)


def _text(**kwargs: Any) -> Any:
    return Field(sa_type=sa.Text, **kwargs)


# --- Panoptes side -------------------------------------------------------------------------------


class Project(SQLModel, table=True):
    """A Zooniverse project the loop serves."""

    id: int | None = Field(default=None, primary_key=True)
    panoptes_id: int = _bigint(unique=True)
    display_name: str = Field(max_length=255)
    created_at: datetime = _created()


class Workflow(SQLModel, table=True):
    """A workflow of a project; ``role`` says whether volunteers trace or correct in it."""

    id: int | None = Field(default=None, primary_key=True)
    panoptes_id: int = _bigint(unique=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    role: WorkflowRole = _enum(WorkflowRole)
    display_name: str = Field(max_length=255)
    version: str | None = Field(default=None, max_length=32)  # "4.10" is not "4.1": keep as text
    caesar_data_fetching: bool = False
    created_at: datetime = _created()


class SubjectSet(SQLModel, table=True):
    """A Panoptes subject set; ``panoptes_id`` is empty until the set exists there."""

    __tablename__ = "subject_set"
    __table_args__ = (sa.UniqueConstraint("project_id", "display_name"),)

    id: int | None = Field(default=None, primary_key=True)
    panoptes_id: int | None = _bigint(default=None, unique=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    workflow_id: int | None = Field(default=None, foreign_key="workflow.id", index=True)
    display_name: str = Field(max_length=255)
    kind: SubjectKind = _enum(SubjectKind, default=SubjectKind.RAW)
    created_at: datetime = _created()


# --- Imaging side --------------------------------------------------------------------------------


class Volume(SQLModel, table=True):
    """An EM volume (OME-Zarr or TIFF stack) and its voxel size."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=255, unique=True)
    storage_uri: str = _text()
    truth_uri: str | None = _text(default=None)  # synthetic volumes carry ground truth
    shape_z: int
    shape_y: int
    shape_x: int
    voxel_size_z_nm: float
    voxel_size_y_nm: float
    voxel_size_x_nm: float
    dtype: str = Field(default="uint8", max_length=16)
    created_at: datetime = _created()


class Roi(SQLModel, table=True):
    """A region of interest (one nucleus, usually) in voxels of its volume; ``split`` for training."""

    __table_args__ = (sa.UniqueConstraint("volume_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    volume_id: int = Field(foreign_key="volume.id", index=True)
    name: str = Field(max_length=255)
    x: int
    y: int
    z: int
    width: int
    height: int
    depth: int
    split: DataSplit = _enum(DataSplit, default=DataSplit.UNASSIGNED)
    created_at: datetime = _created()


class Subject(SQLModel, table=True):
    """One flipbook shown to volunteers: a slice of an ROI, raw or a model prediction to correct."""

    __table_args__ = (
        sa.Index("ix_subject_roi_slice", "roi_id", "slice_index"),
        sa.Index("ix_subject_upload_state", "upload_state"),
        sa.Index("ix_subject_retirement_state", "retirement_state"),
    )

    id: int | None = Field(default=None, primary_key=True)
    panoptes_id: int | None = _bigint(default=None, unique=True)
    upload_key: str = Field(max_length=255, unique=True)  # idempotency key, also in #upload_key metadata
    roi_id: int = Field(foreign_key="roi.id", index=True)
    subject_set_id: int | None = Field(default=None, foreign_key="subject_set.id", index=True)
    slice_index: int
    frames: list[int] = _json()  # volume z index shown by each frame
    target_frame: int
    kind: SubjectKind = _enum(SubjectKind, default=SubjectKind.RAW)
    model_version_id: int | None = Field(default=None, foreign_key="model_version.id", index=True)
    prediction_batch_id: int | None = Field(default=None, foreign_key="prediction_batch.id")
    local_dir: str | None = _text(default=None)
    locations: list[str] | None = _json(default=None)  # media URLs once uploaded
    panoptes_metadata: dict[str, Any] = _json(default_factory=dict)
    priority: float | None = None  # `#priority` for prioritised workflows
    upload_state: UploadState = _enum(UploadState, default=UploadState.PENDING)
    upload_attempts: int = 0
    upload_error: str | None = _text(default=None)
    uploaded_at: datetime | None = _when(default=None)
    machine_marks_pushed_at: datetime | None = _when(default=None)  # Caesar machineLearnt reduction
    retirement_state: RetirementState = _enum(RetirementState, default=RetirementState.ACTIVE)
    retirement_reason: str | None = Field(default=None, max_length=32)
    retired_at: datetime | None = _when(default=None)
    created_at: datetime = _created()


class Classification(SQLModel, table=True):
    """One volunteer's classification, raw payload verbatim, with how well it parsed."""

    __table_args__ = (
        sa.Index("ix_classification_subject_panoptes", "subject_id", "panoptes_id"),
        sa.Index("ix_classification_workflow_created", "workflow_id", "created_at"),
        sa.Index("ix_classification_workflow_panoptes", "workflow_id", "panoptes_id"),
        # covering indexes of the dashboard's per-day and per-volunteer figures (no table lookups)
        sa.Index("ix_classification_created_volunteer", "created_at", "workflow_id", "volunteer_key", "user_id"),
        sa.Index("ix_classification_volunteer_created", "volunteer_key", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    panoptes_id: int = _bigint(unique=True)
    workflow_id: int = Field(foreign_key="workflow.id")
    workflow_version: str | None = Field(default=None, max_length=32)
    subject_panoptes_id: int = _bigint(index=True)
    subject_id: int | None = Field(default=None, foreign_key="subject.id")
    user_id: int | None = _bigint(default=None)
    user_name: str | None = Field(default=None, max_length=255)  # volunteer-chosen: escape on display
    anonymous_token: str | None = Field(default=None, max_length=64)
    volunteer_key: str = Field(max_length=80)  # "user:<id>" or "anon:<token>"
    created_at: datetime = _when()
    source: ClassificationSource = _enum(ClassificationSource)
    raw_annotations: str = _text()
    raw_metadata: str | None = _text(default=None)
    raw_subject_data: str | None = _text(default=None)
    parse_status: ParseStatus = _enum(ParseStatus, default=ParseStatus.PENDING)
    parse_errors: list[str] | None = _json(default=None)
    n_marks: int | None = None
    ingested_at: datetime = _created()


class SyncCursor(SQLModel, table=True):
    """How far ingestion has read each workflow's classifications (keyset paging by id)."""

    __tablename__ = "sync_cursor"

    id: int | None = Field(default=None, primary_key=True)
    workflow_id: int = Field(foreign_key="workflow.id", unique=True)
    last_classification_id: int = _bigint(default=0)
    n_ingested: int = 0
    updated_at: datetime = _created()


# --- Consensus and retirement --------------------------------------------------------------------


class ConsensusResult(SQLModel, table=True):
    """The consensus of one slice at one moment. A new row per aggregation keeps the history that
    stability is measured on; ``is_current`` marks the latest per (roi, slice, kind)."""

    __tablename__ = "consensus_result"
    __table_args__ = (
        sa.Index("ix_consensus_result_roi_slice", "roi_id", "slice_index", "kind"),
        sa.Index("ix_consensus_result_subject_created", "subject_id", "created_at"),
        sa.Index(
            "uq_consensus_result_current",
            "roi_id",
            "slice_index",
            "kind",
            unique=True,
            sqlite_where=sa.text("is_current"),
            postgresql_where=sa.text("is_current"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    roi_id: int = Field(foreign_key="roi.id")
    slice_index: int
    subject_id: int | None = Field(default=None, foreign_key="subject.id")  # whose target slice it is
    kind: ConsensusKind = _enum(ConsensusKind, default=ConsensusKind.VOLUNTEER)
    method: str = Field(default="cria", max_length=32)
    params: dict[str, Any] = _json(default_factory=dict)
    n_classifications: int
    n_volunteers: int  # volunteers who drew on this slice (CRIA's default denominator)
    last_classification_id: int = _bigint()  # newest Panoptes classification included
    mask_uri: str | None = _text(default=None)
    band_uri: str | None = _text(default=None)
    confidence_uri: str | None = _text(default=None)
    area_px: int = 0
    stability: float | None = None  # leave-latest-out: Dice with this consensus without its newest drawing
    agreement: dict[str, float] = _json(default_factory=dict)  # volunteer_key -> Dice with consensus
    is_current: bool = True
    created_at: datetime = _created()


class VolunteerAgreement(SQLModel, table=True):
    """One volunteer's agreement with one consensus, in long form for portable SQL."""

    __tablename__ = "volunteer_agreement"
    # covering: a volunteer's agreements in one index range (reliability pooled over slices)
    __table_args__ = (
        sa.Index("ix_volunteer_agreement_volunteer_result", "volunteer_key", "consensus_result_id", "dice"),
    )

    id: int | None = Field(default=None, primary_key=True)
    consensus_result_id: int = Field(foreign_key="consensus_result.id", index=True, ondelete="CASCADE")
    classification_id: int | None = Field(default=None, foreign_key="classification.id")
    volunteer_key: str = Field(max_length=80)
    dice: float


class RetirementDecision(SQLModel, table=True):
    """Why and when a subject was (or was not) retired, and whether Panoptes has heard of it."""

    __tablename__ = "retirement_decision"
    __table_args__ = (sa.Index("ix_retirement_decision_sync", "sync_state"),)

    id: int | None = Field(default=None, primary_key=True)
    subject_id: int = Field(foreign_key="subject.id", index=True)
    consensus_result_id: int | None = Field(default=None, foreign_key="consensus_result.id")
    policy: str = Field(max_length=32)
    outcome: DecisionOutcome = _enum(DecisionOutcome)
    panoptes_reason: str | None = Field(default=None, max_length=32)
    n_classifications: int  # the subject's own classifications, as Panoptes counts toward its limit
    stability: float | None = None  # Dice with the consensus the subject's previous decision judged
    details: dict[str, Any] = _json(default_factory=dict)
    sync_state: SyncState = _enum(SyncState, default=SyncState.PENDING)
    sent_at: datetime | None = _when(default=None)
    error: str | None = _text(default=None)
    decided_at: datetime = _created()


# --- Training, models, predictions ---------------------------------------------------------------


class TrainingRun(SQLModel, table=True):
    """A request to train, claimed and executed by a worker; heartbeats show it is alive."""

    __tablename__ = "training_run"
    __table_args__ = (sa.Index("ix_training_run_status_queued", "status", "queued_at"),)

    id: int | None = Field(default=None, primary_key=True)
    status: RunStatus = _enum(RunStatus, default=RunStatus.QUEUED)
    trigger: TrainingTrigger = _enum(TrainingTrigger)
    requested_by: str = Field(max_length=255)
    reason: str | None = _text(default=None)
    preset: str = Field(default="small", max_length=64)
    config: dict[str, Any] = _json(default_factory=dict)
    worker_host: str | None = Field(default=None, max_length=255)
    heartbeat_at: datetime | None = _when(default=None)
    progress: dict[str, Any] = _json(default_factory=dict)  # epoch, loss, … for the dashboard
    metrics: dict[str, Any] = _json(default_factory=dict)
    error: str | None = _text(default=None)
    queued_at: datetime = _created()
    started_at: datetime | None = _when(default=None)
    finished_at: datetime | None = _when(default=None)


class ModelVersion(SQLModel, table=True):
    """A trained model. At most one is promoted: the one the loop predicts with."""

    __tablename__ = "model_version"
    __table_args__ = (
        sa.Index(
            "uq_model_version_promoted",
            "promoted",
            unique=True,
            sqlite_where=sa.text("promoted"),
            postgresql_where=sa.text("promoted"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    version: str = Field(max_length=64, unique=True)
    training_run_id: int | None = Field(default=None, foreign_key="training_run.id")
    artifact_uri: str = _text()
    preset: str = Field(max_length=64)
    architecture: str = Field(max_length=64)
    backend: str | None = Field(default=None, max_length=32)
    metrics: dict[str, Any] = _json(default_factory=dict)
    training_data: dict[str, Any] = _json(default_factory=dict)  # consensus ids per split, counts
    data_hash: str = Field(max_length=64)
    promoted: bool = False
    promoted_at: datetime | None = _when(default=None)
    created_at: datetime = _created()


class ModelMetric(SQLModel, table=True):
    """One figure of a model version (paper Table 1), in long form so SQL stays portable."""

    __tablename__ = "model_metric"
    __table_args__ = (sa.UniqueConstraint("model_version_id", "split", "reference", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="model_version.id", index=True, ondelete="CASCADE")
    split: DataSplit = _enum(DataSplit)
    reference: MetricReference = _enum(MetricReference)
    name: str = Field(max_length=64)
    value: float


class PredictionBatch(SQLModel, table=True):
    """A worker job: a model version predicts an ROI (tri-axis), written to OME-Zarr."""

    __tablename__ = "prediction_batch"
    __table_args__ = (sa.Index("ix_prediction_batch_status", "status", "requested_at"),)

    id: int | None = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="model_version.id", index=True)
    roi_id: int = Field(foreign_key="roi.id", index=True)
    status: RunStatus = _enum(RunStatus, default=RunStatus.QUEUED)
    tap_rule: str = Field(default="all", max_length=16)
    params: dict[str, Any] = _json(default_factory=dict)
    output_uri: str | None = _text(default=None)
    worker_host: str | None = Field(default=None, max_length=255)
    heartbeat_at: datetime | None = _when(default=None)
    n_slices: int | None = None
    error: str | None = _text(default=None)
    requested_at: datetime = _created()
    started_at: datetime | None = _when(default=None)
    finished_at: datetime | None = _when(default=None)


class SlicePrediction(SQLModel, table=True):
    """A predicted slice: how uncertain the model was, whether it went to volunteers, and how much
    they changed it (Dice between prediction and corrected consensus). A monitoring slice is also
    traced from scratch (``monitoring_subject_id``, a raw subject in the tracing workflow), and
    ``monitoring_dice`` says how well its corrected consensus agrees with the traced one."""

    __tablename__ = "slice_prediction"
    __table_args__ = (sa.UniqueConstraint("batch_id", "roi_id", "slice_index"),)

    id: int | None = Field(default=None, primary_key=True)
    batch_id: int = Field(foreign_key="prediction_batch.id", index=True, ondelete="CASCADE")
    roi_id: int = Field(foreign_key="roi.id")
    slice_index: int
    uncertainty: float  # share of envelope voxels on which the TAP axes disagree
    envelope_area_px: int
    selection: SelectionReason = _enum(SelectionReason, default=SelectionReason.NOT_SELECTED)
    subject_id: int | None = Field(default=None, foreign_key="subject.id")
    correction_dice: float | None = None
    monitoring_subject_id: int | None = Field(default=None, foreign_key="subject.id")
    monitoring_dice: float | None = None  # Dice between the slice's current corrected and traced consensus


# --- Operations ----------------------------------------------------------------------------------


class JobRun(SQLModel, table=True):
    """One execution of a daemon job (or `etchacell tick`): the dashboard's heartbeat."""

    __tablename__ = "job_run"
    __table_args__ = (sa.Index("ix_job_run_job_started", "job", "started_at"),)

    id: int | None = Field(default=None, primary_key=True)
    job: str = Field(max_length=32)
    status: JobStatus = _enum(JobStatus, default=JobStatus.RUNNING)
    host: str | None = Field(default=None, max_length=255)
    result: dict[str, Any] = _json(default_factory=dict)
    error: str | None = _text(default=None)
    started_at: datetime = _created()
    finished_at: datetime | None = _when(default=None)


class Event(SQLModel, table=True):
    """The event log: what happened, to what, and anything skipped with its reason."""

    __table_args__ = (sa.Index("ix_event_kind_created", "kind", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = _when(default_factory=utcnow, index=True)
    level: EventLevel = _enum(EventLevel, default=EventLevel.INFO)
    kind: str = Field(max_length=64)
    message: str = _text()
    subject_id: int | None = Field(default=None, foreign_key="subject.id")
    classification_id: int | None = Field(default=None, foreign_key="classification.id")
    training_run_id: int | None = Field(default=None, foreign_key="training_run.id")
    model_version_id: int | None = Field(default=None, foreign_key="model_version.id")
    payload: dict[str, Any] = _json(default_factory=dict)
