"""lollms_client bindings dropped in unchanged.

A folder copied from the ``lollms_client`` package into ``<bindings folder>/<modality>_bindings/``
becomes the binding type ``lc_<modality>_<folder>``:

- ``cards``: its card, built from ``description.yaml`` without importing its code;
- ``loading``: importing the folder and constructing the object the way LollmsClient does;
- ``adapter``: :class:`LollmsClientBinding`, our Binding methods mapped to the object's;
- ``results``: error dicts to BindingError, media bytes to MediaOutput (mime type sniffed).

lollms_client itself is imported only when such an instance starts (the ``lollms_client`` extra).
"""

from lollms_server.core.bindings.lollms_client_adapter.cards import (
    discover_lollms_client_cards,
    is_lollms_client_card,
    lollms_client_info,
)

__all__ = ["discover_lollms_client_cards", "is_lollms_client_card", "lollms_client_info"]
