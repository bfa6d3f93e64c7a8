"""Golden trajectories: short deterministic runs of every objective, stored and reproduced bit for bit."""
