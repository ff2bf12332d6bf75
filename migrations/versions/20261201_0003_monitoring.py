"""Monitoring that checks correction against tracing: a monitoring slice's raw subject, traced from
scratch in the tracing workflow (``slice_prediction.monitoring_subject_id``), and the Dice between the
slice's corrected and traced consensus (``slice_prediction.monitoring_dice``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('slice_prediction', schema=None) as batch_op:
        batch_op.add_column(sa.Column('monitoring_subject_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('monitoring_dice', sa.Float(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f('fk_slice_prediction_monitoring_subject_id_subject'), 'subject', ['monitoring_subject_id'], ['id']
        )


def downgrade() -> None:
    with op.batch_alter_table('slice_prediction', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_slice_prediction_monitoring_subject_id_subject'), type_='foreignkey')
        batch_op.drop_column('monitoring_dice')
        batch_op.drop_column('monitoring_subject_id')
