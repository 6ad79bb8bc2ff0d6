"""Anti-replay window: beside each device's counter mark, which sequence numbers below it were judged.

Rows of existing devices get NULL: every counter below their mark counts as judged (still a replay), until
their next new evidence starts the window (hub/appraisal/antireplay.py).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.store.migrate import add_column_once

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Idempotent on a partly created schema (hub/store/migrate.py).
    add_column_once('device', sa.Column('seq_window', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('device') as batch:
        batch.drop_column('seq_window')
