"""Initial schema: the whole loop (Panoptes side, imaging, subjects, classifications, consensus,
retirement, training runs, model versions and metrics, predictions, cursors, job runs, events).

Revision ID: 0001
Revises:
Create Date: 2026-11-25 04:41:22.870713
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
import etchacell_loop.db.types

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('job_run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job', sa.String(length=32), nullable=False),
    sa.Column('status', sa.Enum('running', 'ok', 'failed', name='jobstatus', native_enum=False, length=16), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=True),
    sa.Column('result', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_run'))
    )
    with op.batch_alter_table('job_run', schema=None) as batch_op:
        batch_op.create_index('ix_job_run_job_started', ['job', 'started_at'], unique=False)

    op.create_table('project',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('panoptes_id', sa.BigInteger(), nullable=False),
    sa.Column('display_name', sa.String(length=255), nullable=False),
    sa.Column('created_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_project')),
    sa.UniqueConstraint('panoptes_id', name=op.f('uq_project_panoptes_id'))
    )
    op.create_table('training_run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('queued', 'running', 'succeeded', 'failed', 'cancelled', name='runstatus', native_enum=False, length=16), nullable=False),
    sa.Column('trigger', sa.Enum('manual', 'automatic', name='trainingtrigger', native_enum=False, length=16), nullable=False),
    sa.Column('requested_by', sa.String(length=255), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('preset', sa.String(length=64), nullable=False),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('worker_host', sa.String(length=255), nullable=True),
    sa.Column('heartbeat_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('progress', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('queued_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_training_run'))
    )
    with op.batch_alter_table('training_run', schema=None) as batch_op:
        batch_op.create_index('ix_training_run_status_queued', ['status', 'queued_at'], unique=False)

    op.create_table('volume',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('storage_uri', sa.Text(), nullable=False),
    sa.Column('truth_uri', sa.Text(), nullable=True),
    sa.Column('shape_z', sa.Integer(), nullable=False),
    sa.Column('shape_y', sa.Integer(), nullable=False),
    sa.Column('shape_x', sa.Integer(), nullable=False),
    sa.Column('voxel_size_z_nm', sa.Float(), nullable=False),
    sa.Column('voxel_size_y_nm', sa.Float(), nullable=False),
    sa.Column('voxel_size_x_nm', sa.Float(), nullable=False),
    sa.Column('dtype', sa.String(length=16), nullable=False),
    sa.Column('created_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_volume')),
    sa.UniqueConstraint('name', name=op.f('uq_volume_name'))
    )
    op.create_table('model_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('training_run_id', sa.Integer(), nullable=True),
    sa.Column('artifact_uri', sa.Text(), nullable=False),
    sa.Column('preset', sa.String(length=64), nullable=False),
    sa.Column('architecture', sa.String(length=64), nullable=False),
    sa.Column('backend', sa.String(length=32), nullable=True),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('training_data', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('data_hash', sa.String(length=64), nullable=False),
    sa.Column('promoted', sa.Boolean(), nullable=False),
    sa.Column('promoted_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['training_run_id'], ['training_run.id'], name=op.f('fk_model_version_training_run_id_training_run')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_version')),
    sa.UniqueConstraint('version', name=op.f('uq_model_version_version'))
    )
    with op.batch_alter_table('model_version', schema=None) as batch_op:
        batch_op.create_index('uq_model_version_promoted', ['promoted'], unique=True, sqlite_where=sa.text('promoted'), postgresql_where=sa.text('promoted'))

    op.create_table('roi',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('volume_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('x', sa.Integer(), nullable=False),
    sa.Column('y', sa.Integer(), nullable=False),
    sa.Column('z', sa.Integer(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('depth', sa.Integer(), nullable=False),
    sa.Column('split', sa.Enum('train', 'validation', 'test', 'unassigned', name='datasplit', native_enum=False, length=16), nullable=False),
    sa.Column('created_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['volume_id'], ['volume.id'], name=op.f('fk_roi_volume_id_volume')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_roi')),
    sa.UniqueConstraint('volume_id', 'name', name=op.f('uq_roi_volume_id'))
    )
    with op.batch_alter_table('roi', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_roi_volume_id'), ['volume_id'], unique=False)

    op.create_table('workflow',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('panoptes_id', sa.BigInteger(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.Enum('segmentation', 'correction', name='workflowrole', native_enum=False, length=16), nullable=False),
    sa.Column('display_name', sa.String(length=255), nullable=False),
    sa.Column('version', sa.String(length=32), nullable=True),
    sa.Column('caesar_data_fetching', sa.Boolean(), nullable=False),
    sa.Column('created_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], name=op.f('fk_workflow_project_id_project')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workflow')),
    sa.UniqueConstraint('panoptes_id', name=op.f('uq_workflow_panoptes_id'))
    )
    with op.batch_alter_table('workflow', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_workflow_project_id'), ['project_id'], unique=False)

    op.create_table('model_metric',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('split', sa.Enum('train', 'validation', 'test', 'unassigned', name='datasplit', native_enum=False, length=16), nullable=False),
    sa.Column('reference', sa.Enum('consensus', 'truth', name='metricreference', native_enum=False, length=16), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_model_metric_model_version_id_model_version'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_metric')),
    sa.UniqueConstraint('model_version_id', 'split', 'reference', 'name', name=op.f('uq_model_metric_model_version_id'))
    )
    with op.batch_alter_table('model_metric', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_metric_model_version_id'), ['model_version_id'], unique=False)

    op.create_table('prediction_batch',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('roi_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('queued', 'running', 'succeeded', 'failed', 'cancelled', name='runstatus', native_enum=False, length=16), nullable=False),
    sa.Column('tap_rule', sa.String(length=16), nullable=False),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('output_uri', sa.Text(), nullable=True),
    sa.Column('worker_host', sa.String(length=255), nullable=True),
    sa.Column('heartbeat_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('n_slices', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('requested_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_prediction_batch_model_version_id_model_version')),
    sa.ForeignKeyConstraint(['roi_id'], ['roi.id'], name=op.f('fk_prediction_batch_roi_id_roi')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_prediction_batch'))
    )
    with op.batch_alter_table('prediction_batch', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_prediction_batch_model_version_id'), ['model_version_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_prediction_batch_roi_id'), ['roi_id'], unique=False)
        batch_op.create_index('ix_prediction_batch_status', ['status', 'requested_at'], unique=False)

    op.create_table('subject_set',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('panoptes_id', sa.BigInteger(), nullable=True),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('workflow_id', sa.Integer(), nullable=True),
    sa.Column('display_name', sa.String(length=255), nullable=False),
    sa.Column('kind', sa.Enum('raw', 'prediction', name='subjectkind', native_enum=False, length=16), nullable=False),
    sa.Column('created_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], name=op.f('fk_subject_set_project_id_project')),
    sa.ForeignKeyConstraint(['workflow_id'], ['workflow.id'], name=op.f('fk_subject_set_workflow_id_workflow')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subject_set')),
    sa.UniqueConstraint('panoptes_id', name=op.f('uq_subject_set_panoptes_id')),
    sa.UniqueConstraint('project_id', 'display_name', name=op.f('uq_subject_set_project_id'))
    )
    with op.batch_alter_table('subject_set', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_subject_set_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_subject_set_workflow_id'), ['workflow_id'], unique=False)

    op.create_table('sync_cursor',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('workflow_id', sa.Integer(), nullable=False),
    sa.Column('last_classification_id', sa.BigInteger(), nullable=False),
    sa.Column('n_ingested', sa.Integer(), nullable=False),
    sa.Column('updated_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['workflow_id'], ['workflow.id'], name=op.f('fk_sync_cursor_workflow_id_workflow')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_cursor')),
    sa.UniqueConstraint('workflow_id', name=op.f('uq_sync_cursor_workflow_id'))
    )
    op.create_table('subject',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('panoptes_id', sa.BigInteger(), nullable=True),
    sa.Column('upload_key', sa.String(length=255), nullable=False),
    sa.Column('roi_id', sa.Integer(), nullable=False),
    sa.Column('subject_set_id', sa.Integer(), nullable=True),
    sa.Column('slice_index', sa.Integer(), nullable=False),
    sa.Column('frames', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('target_frame', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Enum('raw', 'prediction', name='subjectkind', native_enum=False, length=16), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('prediction_batch_id', sa.Integer(), nullable=True),
    sa.Column('local_dir', sa.Text(), nullable=True),
    sa.Column('locations', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('panoptes_metadata', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('priority', sa.Float(), nullable=True),
    sa.Column('upload_state', sa.Enum('pending', 'created', 'linked', 'failed', name='uploadstate', native_enum=False, length=16), nullable=False),
    sa.Column('upload_attempts', sa.Integer(), nullable=False),
    sa.Column('upload_error', sa.Text(), nullable=True),
    sa.Column('uploaded_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('machine_marks_pushed_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('retirement_state', sa.Enum('active', 'retiring', 'retired', name='retirementstate', native_enum=False, length=16), nullable=False),
    sa.Column('retirement_reason', sa.String(length=32), nullable=True),
    sa.Column('retired_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_subject_model_version_id_model_version')),
    sa.ForeignKeyConstraint(['prediction_batch_id'], ['prediction_batch.id'], name=op.f('fk_subject_prediction_batch_id_prediction_batch')),
    sa.ForeignKeyConstraint(['roi_id'], ['roi.id'], name=op.f('fk_subject_roi_id_roi')),
    sa.ForeignKeyConstraint(['subject_set_id'], ['subject_set.id'], name=op.f('fk_subject_subject_set_id_subject_set')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subject')),
    sa.UniqueConstraint('panoptes_id', name=op.f('uq_subject_panoptes_id')),
    sa.UniqueConstraint('upload_key', name=op.f('uq_subject_upload_key'))
    )
    with op.batch_alter_table('subject', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_subject_model_version_id'), ['model_version_id'], unique=False)
        batch_op.create_index('ix_subject_retirement_state', ['retirement_state'], unique=False)
        batch_op.create_index(batch_op.f('ix_subject_roi_id'), ['roi_id'], unique=False)
        batch_op.create_index('ix_subject_roi_slice', ['roi_id', 'slice_index'], unique=False)
        batch_op.create_index(batch_op.f('ix_subject_subject_set_id'), ['subject_set_id'], unique=False)
        batch_op.create_index('ix_subject_upload_state', ['upload_state'], unique=False)

    op.create_table('classification',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('panoptes_id', sa.BigInteger(), nullable=False),
    sa.Column('workflow_id', sa.Integer(), nullable=False),
    sa.Column('workflow_version', sa.String(length=32), nullable=True),
    sa.Column('subject_panoptes_id', sa.BigInteger(), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=True),
    sa.Column('user_id', sa.BigInteger(), nullable=True),
    sa.Column('user_name', sa.String(length=255), nullable=True),
    sa.Column('anonymous_token', sa.String(length=64), nullable=True),
    sa.Column('volunteer_key', sa.String(length=80), nullable=False),
    sa.Column('created_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('source', sa.Enum('api', 'export', name='classificationsource', native_enum=False, length=16), nullable=False),
    sa.Column('raw_annotations', sa.Text(), nullable=False),
    sa.Column('raw_metadata', sa.Text(), nullable=True),
    sa.Column('raw_subject_data', sa.Text(), nullable=True),
    sa.Column('parse_status', sa.Enum('pending', 'ok', 'partial', 'invalid', name='parsestatus', native_enum=False, length=16), nullable=False),
    sa.Column('parse_errors', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('n_marks', sa.Integer(), nullable=True),
    sa.Column('ingested_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['subject_id'], ['subject.id'], name=op.f('fk_classification_subject_id_subject')),
    sa.ForeignKeyConstraint(['workflow_id'], ['workflow.id'], name=op.f('fk_classification_workflow_id_workflow')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_classification')),
    sa.UniqueConstraint('panoptes_id', name=op.f('uq_classification_panoptes_id'))
    )
    with op.batch_alter_table('classification', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_classification_created_at'), ['created_at'], unique=False)
        batch_op.create_index('ix_classification_subject_panoptes', ['subject_id', 'panoptes_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_classification_subject_panoptes_id'), ['subject_panoptes_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_classification_volunteer_key'), ['volunteer_key'], unique=False)
        batch_op.create_index('ix_classification_workflow_created', ['workflow_id', 'created_at'], unique=False)
        batch_op.create_index('ix_classification_workflow_panoptes', ['workflow_id', 'panoptes_id'], unique=False)

    op.create_table('consensus_result',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('roi_id', sa.Integer(), nullable=False),
    sa.Column('slice_index', sa.Integer(), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.Enum('volunteer', 'corrected', name='consensuskind', native_enum=False, length=16), nullable=False),
    sa.Column('method', sa.String(length=32), nullable=False),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('n_classifications', sa.Integer(), nullable=False),
    sa.Column('n_volunteers', sa.Integer(), nullable=False),
    sa.Column('last_classification_id', sa.BigInteger(), nullable=False),
    sa.Column('mask_uri', sa.Text(), nullable=True),
    sa.Column('band_uri', sa.Text(), nullable=True),
    sa.Column('confidence_uri', sa.Text(), nullable=True),
    sa.Column('area_px', sa.Integer(), nullable=False),
    sa.Column('stability', sa.Float(), nullable=True),
    sa.Column('agreement', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('is_current', sa.Boolean(), nullable=False),
    sa.Column('created_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['roi_id'], ['roi.id'], name=op.f('fk_consensus_result_roi_id_roi')),
    sa.ForeignKeyConstraint(['subject_id'], ['subject.id'], name=op.f('fk_consensus_result_subject_id_subject')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consensus_result'))
    )
    with op.batch_alter_table('consensus_result', schema=None) as batch_op:
        batch_op.create_index('ix_consensus_result_roi_slice', ['roi_id', 'slice_index', 'kind'], unique=False)
        batch_op.create_index('ix_consensus_result_subject_created', ['subject_id', 'created_at'], unique=False)
        batch_op.create_index('uq_consensus_result_current', ['roi_id', 'slice_index', 'kind'], unique=True, sqlite_where=sa.text('is_current'), postgresql_where=sa.text('is_current'))

    op.create_table('slice_prediction',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('batch_id', sa.Integer(), nullable=False),
    sa.Column('roi_id', sa.Integer(), nullable=False),
    sa.Column('slice_index', sa.Integer(), nullable=False),
    sa.Column('uncertainty', sa.Float(), nullable=False),
    sa.Column('envelope_area_px', sa.Integer(), nullable=False),
    sa.Column('selection', sa.Enum('not_selected', 'uncertain', 'monitoring', name='selectionreason', native_enum=False, length=16), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=True),
    sa.Column('correction_dice', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['batch_id'], ['prediction_batch.id'], name=op.f('fk_slice_prediction_batch_id_prediction_batch'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['roi_id'], ['roi.id'], name=op.f('fk_slice_prediction_roi_id_roi')),
    sa.ForeignKeyConstraint(['subject_id'], ['subject.id'], name=op.f('fk_slice_prediction_subject_id_subject')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_slice_prediction')),
    sa.UniqueConstraint('batch_id', 'roi_id', 'slice_index', name=op.f('uq_slice_prediction_batch_id'))
    )
    with op.batch_alter_table('slice_prediction', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_slice_prediction_batch_id'), ['batch_id'], unique=False)

    op.create_table('event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('level', sa.Enum('info', 'warning', 'error', name='eventlevel', native_enum=False, length=16), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=True),
    sa.Column('classification_id', sa.Integer(), nullable=True),
    sa.Column('training_run_id', sa.Integer(), nullable=True),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.ForeignKeyConstraint(['classification_id'], ['classification.id'], name=op.f('fk_event_classification_id_classification')),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_event_model_version_id_model_version')),
    sa.ForeignKeyConstraint(['subject_id'], ['subject.id'], name=op.f('fk_event_subject_id_subject')),
    sa.ForeignKeyConstraint(['training_run_id'], ['training_run.id'], name=op.f('fk_event_training_run_id_training_run')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_event'))
    )
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_event_created_at'), ['created_at'], unique=False)
        batch_op.create_index('ix_event_kind_created', ['kind', 'created_at'], unique=False)

    op.create_table('retirement_decision',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=False),
    sa.Column('consensus_result_id', sa.Integer(), nullable=True),
    sa.Column('policy', sa.String(length=32), nullable=False),
    sa.Column('outcome', sa.Enum('retire', 'keep', name='decisionoutcome', native_enum=False, length=16), nullable=False),
    sa.Column('panoptes_reason', sa.String(length=32), nullable=True),
    sa.Column('n_classifications', sa.Integer(), nullable=False),
    sa.Column('stability', sa.Float(), nullable=True),
    sa.Column('details', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('sync_state', sa.Enum('pending', 'sent', 'confirmed', 'failed', name='syncstate', native_enum=False, length=16), nullable=False),
    sa.Column('sent_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('decided_at', etchacell_loop.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['consensus_result_id'], ['consensus_result.id'], name=op.f('fk_retirement_decision_consensus_result_id_consensus_result')),
    sa.ForeignKeyConstraint(['subject_id'], ['subject.id'], name=op.f('fk_retirement_decision_subject_id_subject')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retirement_decision'))
    )
    with op.batch_alter_table('retirement_decision', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_retirement_decision_subject_id'), ['subject_id'], unique=False)
        batch_op.create_index('ix_retirement_decision_sync', ['sync_state'], unique=False)

    op.create_table('volunteer_agreement',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('consensus_result_id', sa.Integer(), nullable=False),
    sa.Column('classification_id', sa.Integer(), nullable=True),
    sa.Column('volunteer_key', sa.String(length=80), nullable=False),
    sa.Column('dice', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['classification_id'], ['classification.id'], name=op.f('fk_volunteer_agreement_classification_id_classification')),
    sa.ForeignKeyConstraint(['consensus_result_id'], ['consensus_result.id'], name=op.f('fk_volunteer_agreement_consensus_result_id_consensus_result'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_volunteer_agreement'))
    )
    with op.batch_alter_table('volunteer_agreement', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_volunteer_agreement_consensus_result_id'), ['consensus_result_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_volunteer_agreement_volunteer_key'), ['volunteer_key'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('volunteer_agreement', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_volunteer_agreement_volunteer_key'))
        batch_op.drop_index(batch_op.f('ix_volunteer_agreement_consensus_result_id'))

    op.drop_table('volunteer_agreement')
    with op.batch_alter_table('retirement_decision', schema=None) as batch_op:
        batch_op.drop_index('ix_retirement_decision_sync')
        batch_op.drop_index(batch_op.f('ix_retirement_decision_subject_id'))

    op.drop_table('retirement_decision')
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_index('ix_event_kind_created')
        batch_op.drop_index(batch_op.f('ix_event_created_at'))

    op.drop_table('event')
    with op.batch_alter_table('slice_prediction', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_slice_prediction_batch_id'))

    op.drop_table('slice_prediction')
    with op.batch_alter_table('consensus_result', schema=None) as batch_op:
        batch_op.drop_index('uq_consensus_result_current', sqlite_where=sa.text('is_current'), postgresql_where=sa.text('is_current'))
        batch_op.drop_index('ix_consensus_result_subject_created')
        batch_op.drop_index('ix_consensus_result_roi_slice')

    op.drop_table('consensus_result')
    with op.batch_alter_table('classification', schema=None) as batch_op:
        batch_op.drop_index('ix_classification_workflow_panoptes')
        batch_op.drop_index('ix_classification_workflow_created')
        batch_op.drop_index(batch_op.f('ix_classification_volunteer_key'))
        batch_op.drop_index(batch_op.f('ix_classification_subject_panoptes_id'))
        batch_op.drop_index('ix_classification_subject_panoptes')
        batch_op.drop_index(batch_op.f('ix_classification_created_at'))

    op.drop_table('classification')
    with op.batch_alter_table('subject', schema=None) as batch_op:
        batch_op.drop_index('ix_subject_upload_state')
        batch_op.drop_index(batch_op.f('ix_subject_subject_set_id'))
        batch_op.drop_index('ix_subject_roi_slice')
        batch_op.drop_index(batch_op.f('ix_subject_roi_id'))
        batch_op.drop_index('ix_subject_retirement_state')
        batch_op.drop_index(batch_op.f('ix_subject_model_version_id'))

    op.drop_table('subject')
    op.drop_table('sync_cursor')
    with op.batch_alter_table('subject_set', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_subject_set_workflow_id'))
        batch_op.drop_index(batch_op.f('ix_subject_set_project_id'))

    op.drop_table('subject_set')
    with op.batch_alter_table('prediction_batch', schema=None) as batch_op:
        batch_op.drop_index('ix_prediction_batch_status')
        batch_op.drop_index(batch_op.f('ix_prediction_batch_roi_id'))
        batch_op.drop_index(batch_op.f('ix_prediction_batch_model_version_id'))

    op.drop_table('prediction_batch')
    with op.batch_alter_table('model_metric', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_metric_model_version_id'))

    op.drop_table('model_metric')
    with op.batch_alter_table('workflow', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_workflow_project_id'))

    op.drop_table('workflow')
    with op.batch_alter_table('roi', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_roi_volume_id'))

    op.drop_table('roi')
    with op.batch_alter_table('model_version', schema=None) as batch_op:
        batch_op.drop_index('uq_model_version_promoted', sqlite_where=sa.text('promoted'), postgresql_where=sa.text('promoted'))

    op.drop_table('model_version')
    op.drop_table('volume')
    with op.batch_alter_table('training_run', schema=None) as batch_op:
        batch_op.drop_index('ix_training_run_status_queued')

    op.drop_table('training_run')
    op.drop_table('project')
    with op.batch_alter_table('job_run', schema=None) as batch_op:
        batch_op.drop_index('ix_job_run_job_started')

    op.drop_table('job_run')
