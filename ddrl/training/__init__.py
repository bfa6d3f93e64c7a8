"""The training loop shared by every objective (design §3, §9)."""
