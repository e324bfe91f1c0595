"""OpenAI-compatible API under ``/v1`` (DESIGN §4): the official ``openai`` SDK works unchanged.

``model`` selects ``<binding instance>`` or ``<binding instance>/<model>``. ``protocol``: the
request schemas; ``translate``: OpenAI <-> native; ``routes``: the routes.
"""

from lollms_server.api.openai_compat.routes import router

__all__ = ["router"]
