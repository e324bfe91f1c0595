"""Durable async jobs (``[jobs]``): ``service`` (submit, read, cancel: what routes call),
``store`` (the SQLAlchemy database layer, SQLite or PostgreSQL), ``runner`` (claims jobs under a
lease and runs them through ``GenerationService``), ``results`` (outputs as files),
``callbacks`` (completion callbacks to allowed hosts)."""

from lollms_server.core.jobs.service import JobService

__all__ = ["JobService"]
