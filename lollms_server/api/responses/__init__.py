"""OpenAI's Responses API (``/v1/responses``): routes, protocol (request models), dialect
(request -> native call, events -> response object and SSE frames), compressed bodies and the
stored responses of ``previous_response_id``. Registered in ``api.families``."""

from lollms_server.api.kit.family import Family
from lollms_server.api.responses.routes import router

FAMILY = Family(name="responses", prefixes=("/v1/responses",), routers=(router,), validation_status=400)
"""``/v1/responses...`` (carved out of OpenAI's ``/v1``): 400 for a body that fails its schema and
OpenAI's error shape (the server's own), as for the rest of ``/v1``."""

__all__ = ["FAMILY", "router"]
