"""HTTP API: bearer tokens, each device's latest signed result, and device indexes for id-ordered pages.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.store.migrate import create_index_once, create_table_once

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Idempotent on a partly created schema (hub/store/migrate.py).
    create_table_once('api_token',
    sa.Column('token_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('secret_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=True),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('token_id')
    )
    create_table_once('device_result',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('scheme', sa.String(length=32), nullable=False),
    sa.Column('issued_at', sa.Float(), nullable=False),
    sa.Column('signed', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('device_id')
    )
    create_index_once('ix_device_status_id', 'device', ['status', 'device_id'])
    create_index_once('ix_device_class_id', 'device', ['device_class', 'device_id'])


def downgrade() -> None:
    op.drop_index('ix_device_class_id', table_name='device')
    op.drop_index('ix_device_status_id', table_name='device')
    op.drop_table('device_result')
    op.drop_table('api_token')
