"""Bindings: the contract every binding implements, its cards, and the registry of instances.

``from lollms_server.core.bindings import Binding, TextRequest, ...`` is the binding author's
import line (its ``__all__`` is the public API). Inside the package:

- ``contract``: the value types of a call (requests, chunks, results, outputs, cancel token);
- ``cards``: ``binding_card.yaml`` and settings validation;
- ``base``: the :class:`Binding` base class;
- ``threads``: blocking calls off the event loop;
- ``text``: :class:`StopTextBuffer`;
- ``manager``: :class:`BindingManager`, instances from the config (knows nothing of pool hosts);
- ``torch``: helpers for PyTorch bindings (imported on its own: it is not loaded here).
"""

from lollms_server.core.bindings.base import Binding, BindingContext
from lollms_server.core.bindings.cards import BindingCard, SettingSpec
from lollms_server.core.bindings.contract import (
    MEDIA_METHODS,
    CancelToken,
    GenerationCancelled,
    MediaOutput,
    MediaRequest,
    Progress,
    TextChunk,
    TextRequest,
    TextResult,
)
from lollms_server.core.bindings.manager import BindingInstance, BindingManager
from lollms_server.core.bindings.text import StopTextBuffer
from lollms_server.core.bindings.threads import with_progress
from lollms_server.core.streams import wait_through_cancellation
from lollms_server.errors import BadRequestError, BindingError, NotFoundError, error_for_status
from lollms_server.utils.media import png_bytes, wav_bytes
from lollms_server.utils.paths import safe_join, without_userinfo

__all__ = [  # the public API bindings build on
    "BadRequestError",
    "Binding",
    "BindingCard",
    "BindingContext",
    "BindingError",
    "CancelToken",
    "GenerationCancelled",
    "MediaOutput",
    "MediaRequest",
    "NotFoundError",
    "Progress",
    "StopTextBuffer",
    "SettingSpec",
    "TextChunk",
    "TextRequest",
    "TextResult",
    "error_for_status",
    "png_bytes",
    "safe_join",
    "wait_through_cancellation",
    "wav_bytes",
    "without_userinfo",
    # for the server itself
    "BindingInstance",
    "BindingManager",
    "MEDIA_METHODS",
    "with_progress",
]
