"""The fakes are tested with the load-test suite's mock-engine fixture."""

from tests.loadtest.conftest import mock_engine  # noqa: F401  (a pytest fixture)
