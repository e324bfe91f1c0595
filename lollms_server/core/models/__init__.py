"""Models on disk: pulling them from the hub, listing and deleting them.

- ``refs``: what a user types (``owner/repo/file.gguf``, ``owner/repo:QUANT``, ``owner/repo``) and
  the ``allowed_sources`` check;
- ``hub``: the file list of a repo (``huggingface_hub``) turned into the files one pull fetches;
- ``transfer``: one file's bytes, resumed and verified;
- ``installed``: a binding instance's installed models (list, locate, delete);
- ``pulls``: :class:`PullManager` (``app.state.pulls``, ``lollms-server pull``) and :class:`Pull`.
"""

from lollms_server.core.models.installed import installed_models, model_files_of
from lollms_server.core.models.pulls import Pull, PullManager
from lollms_server.core.models.refs import ModelRef, parse_ref

__all__ = ["ModelRef", "Pull", "PullManager", "installed_models", "model_files_of", "parse_ref"]
