"""What a fresh install tells its user when the default text model is not there yet: the one
command that gets one, and the folder to copy a model file into instead (logged at start-up,
printed by ``lollms-server models`` and ``scripts/run.sh``, shown by the web UI)."""

from __future__ import annotations

import os

from lollms_server.core.bindings import BindingManager
from lollms_server.core.config import AppConfig
from lollms_server.core.errors import LollmsError
from lollms_server.core.models.installed import installed_models, model_files_of, model_path

EXAMPLE_GGUF = "Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M"
EXAMPLE_SNAPSHOT = "Qwen/Qwen2.5-0.5B-Instruct"
DEFAULT_MODEL_ENV = "LOLLMS_DEFAULT_MODEL"


def default_ref(config: AppConfig, kind: str = "gguf") -> str:
    """The model a first run pulls: ``[models] default_model``, else ``$LOLLMS_DEFAULT_MODEL``,
    else a small chat model (Qwen2.5 0.5B Instruct, Apache-2.0, ~0.4 GB as Q4_K_M)."""
    chosen = config.models.default_model or os.environ.get(DEFAULT_MODEL_ENV, "").strip()
    return chosen or (EXAMPLE_GGUF if kind == "gguf" else EXAMPLE_SNAPSHOT)


def missing_default_model(config: AppConfig, bindings: BindingManager) -> str | None:
    """A sentence with the command that gets the default text model, or None when it is there
    (or the default binding keeps no model files: a remote API). Blocking: looks at the disk."""
    name = config.defaults.ttt_binding
    if name is None or name not in bindings.instances:
        return None
    instance = bindings.instances[name]
    try:
        kind = model_files_of(instance)
    except LollmsError:
        return None
    model = config.defaults.ttt_model or instance.config.model_name
    drop = (
        f"; or copy a .gguf file into {instance.models_folder}/ (served without a restart)"
        if kind == "gguf"
        else f"; or copy a model folder into {instance.models_folder}/"
    )
    where = f"--config {config.config_path} " if config.config_path else ""
    config_file = f"{config.config_path} " if config.config_path else ""
    if model is None:
        if installed_models(instance):
            return None  # the server serves the first installed model (core.models.first_run)
        example = default_ref(config, kind)
        return (
            f"No default text model is configured for binding '{name}': get one with  "
            f"lollms-server init {config_file}--model {example}  (pulls it and sets defaults.ttt_model)"
            + drop
        )
    try:
        model_path(instance, model)
        return None
    except LollmsError:
        pass
    if model.count("/") >= (2 if kind == "gguf" else 1):  # a hub name: pull exactly that
        command = f"lollms-server pull {where}--binding {name} {model}"
    else:
        example = default_ref(config, kind)
        command = f"lollms-server init {config_file}--model {example}  (pulls it and sets defaults.ttt_model)"
    return (
        f"The default text model '{model}' of binding '{name}' is not installed: get it with  {command}"
        + drop.replace(" (served without a restart)", "")
    )
