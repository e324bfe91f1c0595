"""llamacpp_binding: request parameters that reach llama.cpp's C code are bounded before they get
there (hardening round 3, T3-01): a grammar nested past llama.cpp's recursive parser is a 400,
not a SIGSEGV of the server process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lollms_server.core.errors import BadRequestError

DEEP = "root ::= " + "(" * 20_000 + '"a"' + ")" * 20_000  # the finding's trigger: 40,012 chars


def test_the_findings_deep_grammar_is_a_400_and_the_process_lives(models_folder: Path) -> None:
    """In a subprocess: before the fix, llama.cpp's parser overflows the stack (rc -11)."""
    script = textwrap.dedent(
        f"""
        import llama_cpp
        from lollms_server.core.errors import BadRequestError
        from zoos.bindings.llamacpp_binding.structured import requested_grammar
        llama = llama_cpp.Llama(model_path={str(models_folder / "llamacpp_binding" / "tiny.gguf")!r},
                                n_ctx=256, verbose=False)
        try:
            requested_grammar({{"grammar": {DEEP!r}}}, llama._model.vocab)
        except BadRequestError as exc:
            print("400", exc.param, exc.message)
        else:
            print("accepted")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=Path.cwd()
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("400 parameters.grammar"), done.stdout
    assert "deeper than 256" in done.stdout


def test_grammar_depth_ignores_parentheses_in_strings_classes_and_comments() -> None:
    from zoos.bindings.llamacpp_binding.structured import grammar_depth

    assert grammar_depth('root ::= ("a" ("b" | "c"))') == 2
    assert grammar_depth('root ::= "(((((" [(((] ")" # ((((\n x ::= ("y")') == 1
    assert grammar_depth(r'root ::= "\"((" [\]((] (x)') == 1
    assert grammar_depth("root ::= " + "(" * 300 + '"a"' + ")" * 300) == 300


def test_a_grammar_at_the_cap_parses_and_one_past_it_is_refused(models_folder: Path) -> None:
    import llama_cpp

    from zoos.bindings.llamacpp_binding.structured import MAX_GRAMMAR_DEPTH, requested_grammar

    llama = llama_cpp.Llama(
        model_path=str(models_folder / "llamacpp_binding" / "tiny.gguf"), n_ctx=256, verbose=False
    )
    try:
        vocab = llama._model.vocab
        at_cap = "root ::= " + "(" * MAX_GRAMMAR_DEPTH + '"a"' + ")" * MAX_GRAMMAR_DEPTH
        assert requested_grammar({"grammar": at_cap}, vocab) == at_cap
        past = "root ::= " + "(" * (MAX_GRAMMAR_DEPTH + 1) + '"a"' + ")" * (MAX_GRAMMAR_DEPTH + 1)
        with pytest.raises(BadRequestError) as caught:
            requested_grammar({"grammar": past}, vocab)
        assert caught.value.param == "parameters.grammar"
    finally:
        llama.close()
