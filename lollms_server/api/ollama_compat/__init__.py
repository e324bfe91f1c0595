"""Ollama's native API under ``/api`` (beside the native ``/api/v1``): Ollama clients (Open
WebUI, Continue, Copilot, n8n, LangChain's ChatOllama...) work unchanged.

``model`` selects ``<binding instance>`` or ``<binding instance>/<model>``, with an optional
``:latest`` tag. ``protocol``: the request bodies; ``translate``: Ollama <-> native;
``catalog``: tags, show and ps; ``pulls``: pull and delete; ``shape``: the ``{"error": ...}``
shape and the NDJSON response; ``routes``: the routes.
"""

from lollms_server.api.ollama_compat.routes import router
from lollms_server.api.ollama_compat.shape import OllamaErrorShape, is_ollama_path

__all__ = ["OllamaErrorShape", "is_ollama_path", "router"]
