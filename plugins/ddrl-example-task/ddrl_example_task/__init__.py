"""Worked example of a ddrl plugin: the `reverse_word` task and its `reverse_word_match` reward.

Nothing here is imported by ddrl directly: the entry points in this package's pyproject.toml are
how ddrl finds both components (docs/plugins.md walks through it).
"""
