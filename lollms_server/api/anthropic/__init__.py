"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``): Claude Code and
the official ``anthropic`` SDK work unchanged (README "Claude Code").

``model`` selects ``<binding instance>`` or ``<binding instance>/<model>``; a ``claude-...``
name naming no instance is the default text model. ``protocol``: the request bodies;
``translate``: Anthropic <-> native, and the error shape; ``routes``: the routes. Registered in
``api.families``; ``/v1/models`` stays the OpenAI family's and serves both SDKs.
"""

from lollms_server.api.anthropic.routes import router
from lollms_server.api.anthropic.translate import error_shape
from lollms_server.api.kit.family import Family

FAMILY = Family(
    name="anthropic",
    prefixes=("/v1/messages",),
    routers=(router,),
    validation_status=400,
    error_shape=error_shape,
)
"""``/v1/messages...`` (carved out of OpenAI's ``/v1``): 400 for a body that fails its schema,
``{"type": "error", "error": {...}}`` errors, a busy server's 503 as 529 ``overloaded_error``."""

__all__ = ["FAMILY", "router"]
