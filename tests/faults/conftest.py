"""Fault tests share the acceptance fixtures: a dispatcher process and worker processes."""

from acceptance.conftest import cluster  # noqa: F401 - a fixture, used by name
