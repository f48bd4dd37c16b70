"""Alembic environment: migrations run on the connection backend.db.migrate() passes in."""

from __future__ import annotations

from alembic import context

from clipmem.backend.db import include_object
from clipmem.backend.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through backend.db.migrate(engine), which supplies the connection")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  include_object=include_object)
with context.begin_transaction():
    context.run_migrations()
