"""The training loop shared by every objective (docs/architecture.md, docs/training-llms.md)."""
