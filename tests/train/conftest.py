"""Fixtures shared by the training tests."""

from tests.train.test_loop import manifest  # noqa: F401 - a 16-vehicle VeRi twin's manifest (module scope)
