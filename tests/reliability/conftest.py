"""Reliability tests touch real processes and the real PostgreSQL server."""

from tests.hpo.conftest import postgres_url, spec_dict, storage_url  # noqa: F401 - fixtures
