"""OpenAI-compatible API under ``/v1`` (DESIGN §4): the official ``openai`` SDK works unchanged.

``model`` selects ``<binding instance>`` or ``<binding instance>/<model>``. ``protocol``: the
request schemas; ``translate``: OpenAI <-> native; ``routes``: the routes. Registered in
``api.families``; ``videos`` (jobs) is mounted by ``main.create_app`` when jobs are enabled.
"""

from lollms_server.api.kit.family import Family
from lollms_server.api.openai_compat.routes import router

FAMILY = Family(name="openai", prefixes=("/v1",), routers=(router,), validation_status=400)
"""``/v1/...``: 400 for a body that fails its schema (OpenAI clients expect it), the server's
error shape (``{"error": {"type", "message", "param"}}`` is OpenAI's)."""

__all__ = ["FAMILY", "router"]
