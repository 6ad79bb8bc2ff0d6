"""Bounded storage: evidence kept as digest and length when rejected unauthenticated; rejection counts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Idempotent on a partly created schema (a store that created the new table from the models first).
    inspector = sa.inspect(op.get_bind())
    columns = {c['name'] for c in inspector.get_columns('verdict')}
    with op.batch_alter_table('verdict') as batch:
        if 'evidence_length' not in columns:
            batch.add_column(sa.Column('evidence_length', sa.Integer(), nullable=True))
        if 'evidence_sha256' not in columns:
            batch.add_column(sa.Column('evidence_sha256', sa.LargeBinary(), nullable=True))
    if inspector.has_table('rejection_count'):
        return
    op.create_table('rejection_count',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('minute', sa.Integer(), nullable=False),
    sa.Column('rejected', sa.Integer(), nullable=False),
    sa.Column('authenticated', sa.Integer(), nullable=False),
    sa.Column('bytes_received', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('device_id', 'minute')
    )


def downgrade() -> None:
    op.drop_table('rejection_count')
    with op.batch_alter_table('verdict') as batch:
        batch.drop_column('evidence_sha256')
        batch.drop_column('evidence_length')
