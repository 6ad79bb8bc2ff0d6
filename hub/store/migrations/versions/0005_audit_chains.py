"""Audit chains: each entry names its chain and its position in it, so workers append without a global head.

Entries written before are the hub chain ('') at ``seq = id``. On PostgreSQL the audit ids come from the
table's id sequence from now on (set past the highest id here).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.store.migrate import add_column_once, create_index_once

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Idempotent on a partly created schema (hub/store/migrate.py).
    add_column_once('audit', sa.Column('chain', sa.String(length=64), nullable=False, server_default=''))
    add_column_once('audit', sa.Column('seq', sa.Integer(), nullable=False, server_default='0'))
    op.execute("UPDATE audit SET seq = id WHERE chain = '' AND seq = 0")
    create_index_once('ux_audit_chain_seq', 'audit', ['chain', 'seq'], unique=True)
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        sequence = bind.execute(sa.text("SELECT pg_get_serial_sequence('audit', 'id')")).scalar()
        if sequence is None:
            op.execute("CREATE SEQUENCE IF NOT EXISTS audit_id_seq OWNED BY audit.id")
            op.execute("ALTER TABLE audit ALTER COLUMN id SET DEFAULT nextval('audit_id_seq')")
            sequence = 'audit_id_seq'
        bind.execute(sa.text("SELECT setval(CAST(:seq AS regclass), COALESCE((SELECT MAX(id) FROM audit), 0) + 1, "
                             "false)"), {"seq": sequence})


def downgrade() -> None:
    op.drop_index('ux_audit_chain_seq', table_name='audit')
    with op.batch_alter_table('audit') as batch:
        batch.drop_column('seq')
        batch.drop_column('chain')
