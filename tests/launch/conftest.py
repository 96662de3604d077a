"""Fixtures shared with tests/core/data: a local HTTP server for download tests."""

from tests.core.data.conftest import serve  # noqa: F401  (re-exported as a fixture here)
