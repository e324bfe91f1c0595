"""Ollama's native API under ``/api`` (beside the native ``/api/v1``): Ollama clients (Open
WebUI, Continue, Copilot, n8n, LangChain's ChatOllama...) work unchanged.

``model`` selects ``<binding instance>`` or ``<binding instance>/<model>``, with an optional
``:latest`` tag. ``protocol``: the request bodies; ``translate``: Ollama <-> native;
``catalog``: tags, show and ps; ``pulls``: pull and delete; ``shape``: the ``{"error": ...}``
shape and the NDJSON response; ``routes``: the routes. Registered in ``api.families``.
"""

from lollms_server.api.kit.family import Family
from lollms_server.api.ollama_compat.routes import router
from lollms_server.api.ollama_compat.shape import error_shape, is_ollama_path

FAMILY = Family(
    name="ollama", prefixes=("/api",), routers=(router,), validation_status=400, error_shape=error_shape
)
"""``/api/...`` (the native ``/api/v1`` is carved out by its longer prefix); 400 for a body
that fails its schema and ``{"error": ...}`` errors, as Ollama clients expect."""

__all__ = ["FAMILY", "is_ollama_path", "router"]
