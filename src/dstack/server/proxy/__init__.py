"""The service proxy: this server serves each service's replicas at /proxy/services/PROJECT/RUN/
and the project's models at /proxy/models/PROJECT/ (routing, readiness, autoscaling, tunnels)."""

from dstack.server.proxy.registry import ServiceProxy

__all__ = ["ServiceProxy"]
