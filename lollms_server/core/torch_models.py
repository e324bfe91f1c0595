"""The PyTorch binding helpers' public path (``from lollms_server.core.torch_models import
TorchBinding``); they live in :mod:`lollms_server.core.bindings.torch`."""

from lollms_server.core.bindings.torch import *  # noqa: F403
from lollms_server.core.bindings.torch import __all__  # noqa: F401
