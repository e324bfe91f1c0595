"""The native API as a registered family (``api.families``): ``/api/v1`` and ``/lollms/v1``,
the server's own error shape, 422 for a body that fails its schema. Its routers are mounted by
``main.create_app`` (which of them depends on the configuration: jobs, pool workers, the UI)."""

from lollms_server.api.kit.family import Family

FAMILY = Family(name="native", prefixes=("/api/v1", "/lollms/v1"))
