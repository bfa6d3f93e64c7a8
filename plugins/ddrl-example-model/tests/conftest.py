"""Fixtures for ddrl-example-model's tests: ddrl's conformance kit."""

from ddrl.testing.fixtures import registry  # noqa: F401
