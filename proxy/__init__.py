"""geogate: a geo-gating WebSocket proxy for video-conference signaling servers."""

__version__ = "0.1.0"
