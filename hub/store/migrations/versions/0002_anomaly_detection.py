"""Anomaly detection: findings, the detector's per-device state, and the device's anomaly hold.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.store.migrate import add_column_once, create_index_once, create_table_once

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    add_column_once('device', sa.Column('anomaly_hold', sa.Boolean(), nullable=False, server_default=sa.false()))
    create_table_once('anomaly_finding',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('device_class', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('max_score', sa.Float(), nullable=False),
    sa.Column('explanation', sa.String(), nullable=False),
    sa.Column('detail', sa.String(), nullable=False),
    sa.Column('first_seen', sa.Float(), nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=False),
    sa.Column('is_open', sa.Boolean(), nullable=False),
    sa.Column('closed_at', sa.Float(), nullable=True),
    sa.Column('closed_by', sa.String(length=64), nullable=True),
    sa.Column('close_reason', sa.String(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    create_index_once('ix_anomaly_finding_device', 'anomaly_finding', ['device_id', 'is_open'], unique=False)
    create_index_once(op.f('ix_anomaly_finding_is_open'), 'anomaly_finding', ['is_open'], unique=False)
    create_table_once('anomaly_stat',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('device_class', sa.String(length=64), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('state', sa.String(), nullable=False),
    sa.PrimaryKeyConstraint('device_id')
    )


def downgrade() -> None:
    op.drop_table('anomaly_stat')
    op.drop_index(op.f('ix_anomaly_finding_is_open'), table_name='anomaly_finding')
    op.drop_index('ix_anomaly_finding_device', table_name='anomaly_finding')
    op.drop_table('anomaly_finding')
    with op.batch_alter_table('device') as batch:
        batch.drop_column('anomaly_hold')
