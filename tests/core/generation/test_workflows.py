"""Scripted personalities see a narrow facade (finding #27), never the managers or the keys."""

from __future__ import annotations

from pathlib import Path

from lollms_server.core.bindings import BindingManager, CancelToken
from lollms_server.core.config import config_from_dict
from lollms_server.core.functions import FunctionManager
from lollms_server.core.generation.workflows import WorkflowRun, WorkflowServices
from lollms_server.core.personalities import PersonalityManager
from lollms_server.core.security import KeyStore
from lollms_server.core.types import GenerateRequest, GenerateResponse
from tests.conftest import LIMITED_KEY, USER_BINDINGS

SECRET_KEY = "a-key-that-must-stay-in-the-server-0123"


async def test_a_workflow_gets_a_facade_without_managers_or_keys(tmp_path: Path) -> None:
    config = config_from_dict(
        {
            "security": {
                "api_keys": [
                    SECRET_KEY,
                    {
                        "key": LIMITED_KEY,
                        "name": "limited",
                        "scopes": ["generate"],
                        "allowed_bindings": ["echo"],
                    },
                ]
            },
            "paths": {"bindings_folder": str(USER_BINDINGS)},
            "bindings": {"echo": {"type": "scripted_binding"}, "other": {"type": "scripted_binding"}},
            "defaults": {"ttt_binding": "echo"},
        },
        base=tmp_path,
        environ={},
    )
    functions = FunctionManager([config.paths.zoos_folder / "functions"], call_timeout=2)
    personalities = PersonalityManager(config)

    async def generate(*_: object) -> GenerateResponse:
        raise AssertionError("not called here")

    services = WorkflowServices(config, BindingManager(config), functions, personalities, generate)
    principal = KeyStore.from_config(config).authenticate(LIMITED_KEY)
    run = WorkflowRun(
        services,
        personalities.get("artbot"),
        GenerateRequest(prompt="an idea"),
        principal,
        "request-1",
        CancelToken(),
    )
    context = run.context()
    assert set(context) == {
        "binding",
        "bindings",
        "personality",
        "config",
        "input_data",
        "request_info",
        "generate",
        "call_function",
        "cancel",
    }
    assert context["bindings"] == ["echo"], "the key's allow-list applies"
    assert set(context["config"]) == {"defaults", "limits"} and SECRET_KEY not in str(context["config"])
    ok, value = await context["call_function"]("utilities.calculate", {"expression": "6*7"})
    assert ok and "42" in str(value)
