"""Persistence: SQLAlchemy Core tables, one Alembic tree for SQLite and PostgreSQL."""
