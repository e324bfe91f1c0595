"""Routing: which binding instance and model serve a request, and its merged parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lollms_server.core.bindings import BindingManager
from lollms_server.core.config import AppConfig, config_from_dict
from lollms_server.core.errors import BadRequestError, NotFoundError, PermissionDeniedError
from lollms_server.core.generation.routing import Target, merged_parameters, resolve
from lollms_server.core.personalities import Personality, PersonalityConfig
from lollms_server.core.security import KeyStore, Principal
from tests.conftest import GOOD_KEY, LIMITED_KEY, USER_BINDINGS

ANYONE = Principal(name="anyone")

# Instances over real cards: scripted_binding (tests/fixtures/user_bindings, ttt) and the zoo's
# llamacpp (ttt) and diffusers (tti, i2i, ttv). Only cards are read: no binding code runs.
BINDINGS: dict[str, Any] = {
    "echo": {"type": "scripted_binding", "model_name": "echo-own"},
    "llm": {"type": "llamacpp_binding", "model_name": "llm-own.gguf"},
    "bare": {"type": "llamacpp_binding"},
    "painter": {"type": "diffusers_binding", "model_name": "painter-own"},
}


def make_config(tmp_path: Path, bindings_folder: Path = USER_BINDINGS, **sections: Any) -> AppConfig:
    data: dict[str, Any] = {
        "server": {"auto_install_requirements": False},
        "paths": {"bindings_folder": str(bindings_folder), "models_folder": str(tmp_path / "models")},
        "security": {
            "api_keys": [
                {"key": GOOD_KEY, "name": "user", "scopes": ["generate"]},
                {"key": LIMITED_KEY, "name": "limited", "scopes": ["generate"], "allowed_bindings": ["echo"]},
            ]
        },
        "bindings": BINDINGS,
        **sections,
    }
    return config_from_dict(data, base=tmp_path, environ={})


def route(
    config: AppConfig,
    generation_type: str = "ttt",
    binding_name: str | None = None,
    model_name: str | None = None,
    personality: Personality | None = None,
    principal: Principal = ANYONE,
) -> Target:
    return resolve(
        config, BindingManager(config), principal, generation_type, binding_name, model_name, personality
    )


def personality(**fields: Any) -> Personality:
    return Personality(
        folder_name="tuned", folder=Path("tuned"), config=PersonalityConfig(name="Tuned", **fields)
    )


RECOMMENDS_LLM = {"recommended_binding": "llm", "recommended_model": "recommended.gguf"}
TTT_DEFAULTS = {"ttt_binding": "echo", "ttt_model": "default-model"}


# ---- resolve: precedence ------------------------------------------------------------------
def test_request_binding_and_model_win_over_personality_and_defaults(tmp_path: Path) -> None:
    config = make_config(tmp_path, defaults=TTT_DEFAULTS)
    target = route(
        config, binding_name="bare", model_name="asked.gguf", personality=personality(**RECOMMENDS_LLM)
    )
    assert (target.name, target.model) == ("bare", "asked.gguf"), "the request names both"
    assert target.generation_type == "ttt"
    assert target.pool == "default", "an instance that names no pool runs in the default pool"


def test_personality_recommendation_wins_over_defaults(tmp_path: Path) -> None:
    config = make_config(tmp_path, defaults=TTT_DEFAULTS)
    target = route(config, personality=personality(**RECOMMENDS_LLM))
    assert (target.name, target.model) == ("llm", "recommended.gguf")


def test_request_model_is_kept_with_the_personality_binding(tmp_path: Path) -> None:
    config = make_config(tmp_path, defaults=TTT_DEFAULTS)
    target = route(config, model_name="asked.gguf", personality=personality(**RECOMMENDS_LLM))
    assert (target.name, target.model) == ("llm", "asked.gguf")


def test_personality_binding_without_model_falls_back_to_the_instance_model(tmp_path: Path) -> None:
    config = make_config(tmp_path, defaults=TTT_DEFAULTS)
    target = route(config, personality=personality(recommended_binding="llm"))
    assert (target.name, target.model) == ("llm", "llm-own.gguf")


def test_request_binding_ignores_the_personality_model(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with pytest.raises(BadRequestError) as excinfo:
        route(config, binding_name="bare", personality=personality(**RECOMMENDS_LLM))
    assert excinfo.value.param == "model_name", "the request named the binding: no recommended model"


def test_personality_without_recommendation_leaves_the_defaults(tmp_path: Path) -> None:
    config = make_config(tmp_path, defaults=TTT_DEFAULTS)
    target = route(config, personality=personality())
    assert (target.name, target.model) == ("echo", "default-model")


def test_personality_recommendation_applies_to_text_only(tmp_path: Path) -> None:
    config = make_config(tmp_path, defaults={"tti_binding": "painter"})
    target = route(config, "tti", personality=personality(**RECOMMENDS_LLM))
    assert (target.name, target.model) == ("painter", "painter-own")


def test_defaults_binding_and_model_are_used_when_nothing_names_them(tmp_path: Path) -> None:
    config = make_config(tmp_path, defaults={**TTT_DEFAULTS, "tti_binding": "painter", "tti_model": "sd"})
    assert (route(config).name, route(config).model) == ("echo", "default-model")
    image = route(config, "tti")
    assert (image.name, image.model, image.generation_type) == ("painter", "sd", "tti")


def test_default_model_applies_when_the_request_names_the_default_binding(tmp_path: Path) -> None:
    config = make_config(tmp_path, defaults=TTT_DEFAULTS)
    assert route(config, binding_name="echo").model == "default-model"


def test_default_model_does_not_apply_to_another_binding(tmp_path: Path) -> None:
    config = make_config(tmp_path, defaults=TTT_DEFAULTS)
    assert route(config, binding_name="llm").model == "llm-own.gguf", "the instance's own model_name"


def test_instance_model_name_is_the_last_resort(tmp_path: Path) -> None:
    config = make_config(tmp_path, defaults={"ttt_binding": "echo"})
    assert route(config).model == "echo-own"


# ---- resolve: errors ----------------------------------------------------------------------
def test_no_binding_anywhere_is_a_400_naming_binding_name(tmp_path: Path) -> None:
    with pytest.raises(BadRequestError, match="ttv_binding") as excinfo:
        route(make_config(tmp_path), "ttv")
    assert excinfo.value.status_code == 400
    assert excinfo.value.param == "binding_name"


def test_no_model_anywhere_is_a_400_naming_model_name(tmp_path: Path) -> None:
    with pytest.raises(BadRequestError, match="No model for binding 'bare'") as excinfo:
        route(make_config(tmp_path), binding_name="bare")
    assert excinfo.value.param == "model_name"


def test_unknown_binding_is_a_404(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="Binding 'ghost' not found") as excinfo:
        route(make_config(tmp_path), binding_name="ghost", model_name="m")
    assert excinfo.value.status_code == 404
    assert excinfo.value.param == "binding_name"


def test_key_limited_to_other_bindings_gets_a_403(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    limited = KeyStore.from_config(config).authenticate(LIMITED_KEY)
    with pytest.raises(PermissionDeniedError, match="may not use binding 'llm'") as excinfo:
        route(config, binding_name="llm", principal=limited)
    assert excinfo.value.status_code == 403
    assert route(config, binding_name="echo", principal=limited).name == "echo", "its allowed binding works"


def test_key_limit_applies_to_the_default_and_the_recommended_binding(tmp_path: Path) -> None:
    config = make_config(tmp_path, defaults={"ttt_binding": "llm"})
    limited = Principal(name="limited", allowed_bindings=frozenset({"echo"}))
    with pytest.raises(PermissionDeniedError):
        route(config, principal=limited)
    with pytest.raises(PermissionDeniedError):
        route(config, personality=personality(recommended_binding="llm"), principal=limited)


def test_key_without_binding_limit_may_use_any_binding(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    user = KeyStore.from_config(config).authenticate(GOOD_KEY)
    assert route(config, binding_name="llm", principal=user).name == "llm"


def test_binding_without_the_generation_type_is_a_400(tmp_path: Path) -> None:
    with pytest.raises(BadRequestError, match="does not support generation_type 'tti'") as excinfo:
        route(make_config(tmp_path), "tti", binding_name="echo")
    assert excinfo.value.param == "generation_type"


def test_image_edit_is_allowed_on_a_binding_whose_card_declares_only_tti(tmp_path: Path) -> None:
    cards = tmp_path / "cards"
    (cards / "paint_binding").mkdir(parents=True)
    (cards / "paint_binding" / "binding_card.yaml").write_text(
        "type_name: paint_binding\ngeneration_types: [tti]\n"
    )
    (cards / "paint_binding" / "__init__.py").write_text("raise RuntimeError('routing imports no code')\n")
    config = make_config(tmp_path, cards, bindings={"paint": {"type": "paint_binding", "model_name": "sd"}})
    target = route(config, "i2i", binding_name="paint")
    assert (target.name, target.model, target.generation_type) == ("paint", "sd", "i2i")
    with pytest.raises(BadRequestError, match="does not support generation_type 'ttv'"):
        route(config, "ttv", binding_name="paint")


@pytest.mark.parametrize(
    "model_name",
    [
        "../escape.gguf",
        "family/../../escape",
        "/etc/passwd",
        "C:model",
        "back\\slash",
        "nul\x00byte",
        "x" * 513,
    ],
)
def test_unsafe_model_names_are_a_400(tmp_path: Path, model_name: str) -> None:
    with pytest.raises(BadRequestError) as excinfo:
        route(make_config(tmp_path), binding_name="llm", model_name=model_name)
    assert excinfo.value.param == "model_name"


def test_unsafe_recommended_model_is_a_400(tmp_path: Path) -> None:
    with pytest.raises(BadRequestError) as excinfo:
        route(
            make_config(tmp_path),
            personality=personality(recommended_binding="llm", recommended_model="../x"),
        )
    assert excinfo.value.param == "model_name"


def test_model_in_a_subfolder_is_allowed(tmp_path: Path) -> None:
    assert (
        route(make_config(tmp_path), binding_name="llm", model_name="family/tiny.gguf").model
        == "family/tiny.gguf"
    )


# ---- merged_parameters ----------------------------------------------------------------------
def test_text_parameters_layer_server_defaults_personality_and_request(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, defaults={"parameters": {"temperature": 0.9, "top_p": 0.5, "max_tokens": 10, "top_k": 1}}
    )
    tuned = personality(model_temperature=0.3, model_n_predicts=77, model_top_k=12)
    parameters = merged_parameters(config, "ttt", {"top_k": 3, "custom": "kept"}, tuned)
    assert parameters["top_p"] == 0.5, "server default"
    assert parameters["temperature"] == 0.3 and parameters["max_tokens"] == 77, "personality over defaults"
    assert parameters["top_k"] == 3, "request over personality"
    assert parameters["custom"] == "kept", "unknown parameters pass through to the binding"


def test_text_parameters_without_personality_layer_defaults_and_request(tmp_path: Path) -> None:
    config = make_config(tmp_path, defaults={"parameters": {"temperature": 0.9, "max_tokens": 10}})
    parameters = merged_parameters(config, "ttt", {"temperature": 0.2})
    assert (parameters["temperature"], parameters["max_tokens"]) == (0.2, 10)


def test_legacy_n_predict_becomes_max_tokens(tmp_path: Path) -> None:
    assert merged_parameters(make_config(tmp_path), "ttt", {"n_predict": 5})["max_tokens"] == 5


def test_anti_prompts_join_the_request_stop_list_once(tmp_path: Path) -> None:
    tuned = personality(anti_prompts=["STOP", "</s>"])
    parameters = merged_parameters(make_config(tmp_path), "ttt", {"stop": ["A", "STOP"]}, tuned)
    assert parameters["stop"] == ["A", "STOP", "</s>"]


def test_anti_prompts_join_a_string_stop(tmp_path: Path) -> None:
    parameters = merged_parameters(
        make_config(tmp_path), "ttt", {"stop": "A"}, personality(anti_prompts=["B"])
    )
    assert parameters["stop"] == ["A", "B"]


def test_anti_prompts_become_the_stop_list_when_the_request_has_none(tmp_path: Path) -> None:
    parameters = merged_parameters(make_config(tmp_path), "ttt", {}, personality(anti_prompts=["B"]))
    assert parameters["stop"] == ["B"]


def test_anti_prompts_join_the_server_default_stop(tmp_path: Path) -> None:
    config = make_config(tmp_path, defaults={"parameters": {"stop": ["DEFAULT"]}})
    parameters = merged_parameters(config, "ttt", {}, personality(anti_prompts=["B"]))
    assert parameters["stop"] == ["DEFAULT", "B"]


def test_repeated_anti_prompts_are_added_once(tmp_path: Path) -> None:
    parameters = merged_parameters(make_config(tmp_path), "ttt", {}, personality(anti_prompts=["B", "B"]))
    assert parameters["stop"] == ["B"]


def test_stop_is_untouched_without_anti_prompts(tmp_path: Path) -> None:
    parameters = merged_parameters(make_config(tmp_path), "ttt", {"stop": "A"}, personality())
    assert parameters["stop"] == "A"


@pytest.mark.parametrize("generation_type", ["ttt", "tti", "tts"])
def test_a_random_seed_is_added_when_missing(tmp_path: Path, generation_type: str) -> None:
    config = make_config(tmp_path)
    seeds = {merged_parameters(config, generation_type, {})["seed"] for _ in range(8)}
    assert all(isinstance(seed, int) and 0 <= seed < 2**31 for seed in seeds)
    assert len(seeds) > 1, "each request gets its own seed"


@pytest.mark.parametrize("generation_type", ["ttt", "tti"])
def test_the_request_seed_is_kept(tmp_path: Path, generation_type: str) -> None:
    assert merged_parameters(make_config(tmp_path), generation_type, {"seed": 42})["seed"] == 42


def test_server_default_seed_is_kept_for_text(tmp_path: Path) -> None:
    config = make_config(tmp_path, defaults={"parameters": {"seed": 7}})
    assert merged_parameters(config, "ttt", {})["seed"] == 7


def test_request_parameters_are_not_mutated(tmp_path: Path) -> None:
    request = {"stop": ["A"]}
    merged_parameters(make_config(tmp_path), "ttt", request, personality(anti_prompts=["B"]))
    assert request == {"stop": ["A"]}


@pytest.mark.parametrize(
    ("parameters", "param"),
    [({"temperature": -1}, "parameters.temperature"), ({"max_tokens": "many"}, "parameters.max_tokens")],
)
def test_text_parameters_are_validated(tmp_path: Path, parameters: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as excinfo:
        merged_parameters(make_config(tmp_path), "ttt", parameters)
    assert excinfo.value.param == param


@pytest.mark.parametrize(
    ("parameters", "param"),
    [
        ({"width": 8}, "parameters.width"),
        ({"steps": 0}, "parameters.steps"),
        ({"seed": -1}, "parameters.seed"),
        ({"num_inference_steps": 10_000}, "parameters.steps"),
    ],
)
def test_media_parameters_are_validated(tmp_path: Path, parameters: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as excinfo:
        merged_parameters(make_config(tmp_path), "tti", parameters)
    assert excinfo.value.status_code == 400
    assert excinfo.value.param == param


def test_media_parameters_take_only_the_request(tmp_path: Path) -> None:
    config = make_config(tmp_path, defaults={"parameters": {"temperature": 0.9}})
    parameters = merged_parameters(
        config, "tti", {"num_inference_steps": 20, "width": 64}, personality(model_temperature=0.3)
    )
    assert parameters["steps"] == 20 and parameters["width"] == 64, "legacy steps name is mapped"
    assert "temperature" not in parameters, "text defaults and the personality stay out of media requests"
