"""Fixtures for ddrl-spg's tests: ddrl's conformance kit."""

from ddrl.testing.fixtures import ab_policy, registry  # noqa: F401
