"""lollms_server: a self-hosted, asynchronous, multi-modal generation server."""

__version__ = "0.1.0"
