"""Covering indexes for the dashboard: classifications by time (with workflow, volunteer and user)
and by volunteer (with time), and volunteer agreements by volunteer. They replace the single-column
indexes on classification.created_at, classification.volunteer_key and
volunteer_agreement.volunteer_key, which they begin with.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 07:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('classification', schema=None) as batch_op:
        batch_op.create_index(
            'ix_classification_created_volunteer', ['created_at', 'workflow_id', 'volunteer_key', 'user_id'], unique=False
        )
        batch_op.create_index('ix_classification_volunteer_created', ['volunteer_key', 'created_at'], unique=False)
        batch_op.drop_index('ix_classification_created_at')
        batch_op.drop_index('ix_classification_volunteer_key')
    with op.batch_alter_table('volunteer_agreement', schema=None) as batch_op:
        batch_op.create_index(
            'ix_volunteer_agreement_volunteer_result', ['volunteer_key', 'consensus_result_id', 'dice'], unique=False
        )
        batch_op.drop_index('ix_volunteer_agreement_volunteer_key')


def downgrade() -> None:
    with op.batch_alter_table('volunteer_agreement', schema=None) as batch_op:
        batch_op.create_index('ix_volunteer_agreement_volunteer_key', ['volunteer_key'], unique=False)
        batch_op.drop_index('ix_volunteer_agreement_volunteer_result')
    with op.batch_alter_table('classification', schema=None) as batch_op:
        batch_op.create_index('ix_classification_volunteer_key', ['volunteer_key'], unique=False)
        batch_op.create_index('ix_classification_created_at', ['created_at'], unique=False)
        batch_op.drop_index('ix_classification_volunteer_created')
        batch_op.drop_index('ix_classification_created_volunteer')
