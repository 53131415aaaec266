"""Shared fixtures: the lab (tests/lab_fixtures.py)."""

pytest_plugins = ["lab_fixtures"]
