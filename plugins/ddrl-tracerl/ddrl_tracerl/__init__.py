"""ddrl-tracerl: the TraceRL objective (arXiv 2509.06949) for ddrl, registered as ``tracerl``."""

from ddrl_tracerl.objective import TraceRL, TraceRLConfig, trace_views, zscore_advantages

__all__ = ["TraceRL", "TraceRLConfig", "trace_views", "zscore_advantages"]
