"""ddrl-tracerl: the TraceRL objective (arXiv 2509.06949) for ddrl, registered as ``tracerl``."""

from ddrl_tracerl.objective import TraceRL, TraceRLConfig, TraceRLState, trace_views

__all__ = ["TraceRL", "TraceRLConfig", "TraceRLState", "trace_views"]
