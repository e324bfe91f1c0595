"""The error hierarchy, re-exported for the core (it lives in :mod:`lollms_server.errors`, a
leaf module every layer may import, ``utils`` included)."""

from lollms_server.errors import *  # noqa: F403
from lollms_server.errors import __all__  # noqa: F401
