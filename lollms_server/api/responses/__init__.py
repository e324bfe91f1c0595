"""OpenAI's Responses API (``/v1/responses``): routes, protocol (request models), dialect
(request -> native call, events -> response object and SSE frames), compressed bodies and the
stored responses of ``previous_response_id``."""

from lollms_server.api.responses.routes import router

__all__ = ["router"]
