"""Fixtures for the deployment tests: the end-to-end ones (a trained demo model, services as
real processes), shared with tests/e2e."""

from tests.e2e.conftest import start_service, trained_model  # noqa: F401  (fixtures)
