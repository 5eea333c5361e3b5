"""dstack: a self-hosted orchestrator for ML workloads."""

__version__ = "0.1.0"
