"""Initial schema: the tables of hub/store/models.py as of the first release.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.store.migrate import create_index_once, create_table_once

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    create_table_once('audit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=48), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.String(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('entry_hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    create_index_once(op.f('ix_audit_at'), 'audit', ['at'], unique=False)
    create_table_once('command',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('reason', sa.String(), nullable=False),
    sa.Column('issued_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('signed', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    create_index_once('ix_command_device_seq', 'command', ['device_id', 'seq'], unique=False)
    create_table_once('device',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('device_class', sa.String(length=64), nullable=False),
    sa.Column('public_key_pem', sa.String(), nullable=True),
    sa.Column('key_version', sa.Integer(), nullable=False),
    sa.Column('ueid', sa.LargeBinary(), nullable=True),
    sa.Column('certificate_pem', sa.String(), nullable=True),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('tier', sa.Integer(), nullable=False),
    sa.Column('trust_vector', sa.String(), nullable=False),
    sa.Column('firmware_version', sa.String(), nullable=True),
    sa.Column('last_problems', sa.String(), nullable=False),
    sa.Column('bootcount', sa.BigInteger(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('svn_high_water', sa.Integer(), nullable=False),
    sa.Column('reboots', sa.Integer(), nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=True),
    sa.Column('last_verdict_at', sa.Float(), nullable=True),
    sa.Column('enrolled_at', sa.Float(), nullable=False),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.Column('quarantine_hold', sa.Boolean(), nullable=False),
    sa.Column('command_seq', sa.Integer(), nullable=False),
    sa.Column('next_deadline', sa.Float(), nullable=True),
    sa.Column('chain_bootcount', sa.BigInteger(), nullable=True),
    sa.Column('chain_seq', sa.BigInteger(), nullable=True),
    sa.Column('chain_head', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('device_id')
    )
    create_index_once(op.f('ix_device_device_class'), 'device', ['device_class'], unique=False)
    create_index_once(op.f('ix_device_next_deadline'), 'device', ['next_deadline'], unique=False)
    create_index_once(op.f('ix_device_status'), 'device', ['status'], unique=False)
    create_table_once('hub_state',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    create_table_once('manifest',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_class', sa.String(length=64), nullable=False),
    sa.Column('sequence', sa.Integer(), nullable=False),
    sa.Column('signer', sa.String(), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.Column('signed', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_class', 'sequence', name='uq_manifest_seq')
    )
    create_index_once(op.f('ix_manifest_device_class'), 'manifest', ['device_class'], unique=False)
    create_table_once('policy',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_class', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_class', 'version', name='uq_policy_version')
    )
    create_index_once(op.f('ix_policy_device_class'), 'policy', ['device_class'], unique=False)
    create_table_once('used_nonce',
    sa.Column('nonce', sa.LargeBinary(), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('used_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('nonce')
    )
    create_table_once('verdict',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('scheme', sa.String(length=32), nullable=False),
    sa.Column('dedup_key', sa.String(length=200), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.Column('authenticated', sa.Boolean(), nullable=False),
    sa.Column('tier', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('trust_vector', sa.String(), nullable=False),
    sa.Column('problems', sa.String(), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('firmware_version', sa.String(), nullable=True),
    sa.Column('manifest_ref', sa.String(), nullable=True),
    sa.Column('policy_ref', sa.String(), nullable=False),
    sa.Column('trace_id', sa.String(length=64), nullable=False),
    sa.Column('evidence', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_id', 'scheme', 'dedup_key', name='uq_verdict_evidence')
    )
    create_index_once('ix_verdict_device_time', 'verdict', ['device_id', 'received_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_verdict_device_time', table_name='verdict')
    op.drop_table('verdict')
    op.drop_table('used_nonce')
    op.drop_index(op.f('ix_policy_device_class'), table_name='policy')
    op.drop_table('policy')
    op.drop_index(op.f('ix_manifest_device_class'), table_name='manifest')
    op.drop_table('manifest')
    op.drop_table('hub_state')
    op.drop_index(op.f('ix_device_status'), table_name='device')
    op.drop_index(op.f('ix_device_next_deadline'), table_name='device')
    op.drop_index(op.f('ix_device_device_class'), table_name='device')
    op.drop_table('device')
    op.drop_index('ix_command_device_seq', table_name='command')
    op.drop_table('command')
    op.drop_index(op.f('ix_audit_at'), table_name='audit')
    op.drop_table('audit')
