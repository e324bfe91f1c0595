"""Structured outputs: the grammar a request's ``json_schema`` or ``grammar`` parameter asks for.

JSON schemas become GBNF through llama-cpp-python's port of llama.cpp's own converter
(``llama_cpp.llama_grammar.json_schema_to_gbnf``; the port of the pinned version knows types,
``properties``/``required``, ``enum``/``const``, arrays, ``anyOf``/``oneOf``, ``$ref``, string
lengths, but not number ranges or ``pattern``); a GBNF grammar is taken as it is. Both are
checked by llama.cpp's parser before the request runs, so a bad one is a 400 naming the parameter.

llama.cpp's GBNF parser is recursive descent: each nested group ``( ... )`` takes a stack frame
(about 450 bytes), so a grammar nested deep enough kills the server process (SIGSEGV). Measured
with the pinned llama-cpp-python (0.3.x), one parse per subprocess: on an 8 MiB thread stack (the
Linux default) depth 15,000 parses and 20,000 crashes; on 1 MiB, 2,000 parses and 4,000 crashes;
on 256 KiB, 500 parses and 1,000 crashes. A grammar nested deeper than :data:`MAX_GRAMMAR_DEPTH`
is refused (400) by a scan that counts, without recursion, the groups open at each point.
Chains of rules referring to each other do not recurse in the parser (20,000 parse).
"""

from __future__ import annotations

import json
import re
from typing import Any

from lollms_server.core.bindings import BadRequestError

from .batching import GrammarError, check_grammar

MAX_GRAMMAR_CHARS = 100_000
MAX_GRAMMAR_DEPTH = 256
"""Nested groups a grammar may have: far under what llama.cpp survives on a small thread stack."""
# what the GBNF parser reads as a unit that cannot open a group: a string literal, a character
# class (both with backslash escapes), a comment; else a parenthesis
GRAMMAR_TOKENS = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|#[^\r\n]*|[()]', re.DOTALL)
CHAR_RULE = re.compile(r'^char ::= \[\^"\\\\\]', re.MULTILINE)  # char ::= [^"\\]
JSON_CHAR_RULE = r'char ::= [^"\\\x7F\x00-\x1F]'  # and no control characters, as llama.cpp's


def requested_grammar(parameters: dict[str, Any], vocab: Any) -> str | None:
    """The GBNF grammar of ``parameters`` (None: unconstrained); 400 when it is invalid."""
    schema = parameters.get("json_schema")
    grammar = parameters.get("grammar")
    if schema is not None and grammar is not None:
        raise BadRequestError("Give json_schema or grammar, not both.", param="parameters.grammar")
    if schema is not None:
        param = "parameters.json_schema"
        grammar = schema_grammar(schema)
    elif grammar is not None:
        param = "parameters.grammar"
        if not isinstance(grammar, str) or not grammar.strip():
            raise BadRequestError("The grammar must be a non-empty GBNF string.", param=param)
    else:
        return None
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise BadRequestError(f"The grammar is longer than {MAX_GRAMMAR_CHARS} characters.", param=param)
    if grammar_depth(grammar) > MAX_GRAMMAR_DEPTH:
        raise BadRequestError(
            f"The {param.split('.')[-1]} nests groups deeper than {MAX_GRAMMAR_DEPTH} levels.", param=param
        )
    try:
        check_grammar(vocab, grammar)
    except GrammarError:
        raise BadRequestError(
            f"Invalid {param.split('.')[-1]}: llama.cpp cannot parse it.", param=param
        ) from None
    return grammar


def grammar_depth(grammar: str) -> int:
    """The deepest nesting of ``( ... )`` groups in a GBNF text (parentheses inside strings,
    character classes and comments do not count; an unclosed string counts what follows it,
    which can only over-count)."""
    depth = deepest = 0
    for token in GRAMMAR_TOKENS.finditer(grammar):
        text = token.group()
        if text == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif text == ")":
            depth = max(0, depth - 1)
    return deepest


def schema_grammar(schema: Any) -> str:
    """GBNF for a JSON schema (a dict, ``True`` for any JSON, or its JSON text)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    param = "parameters.json_schema"
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError:
            raise BadRequestError("The JSON schema is not valid JSON.", param=param) from None
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise BadRequestError("The JSON schema must be an object.", param=param)
    try:
        grammar = str(json_schema_to_gbnf(json.dumps(schema)))
    except RecursionError:
        raise BadRequestError("The JSON schema nests too deeply.", param=param) from None
    except Exception as exc:  # noqa: BLE001 - the converter raises many kinds on bad schemas
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BadRequestError(f"Unsupported JSON schema: {detail}", param=param) from None
    # this converter's string characters allow raw control characters, which JSON does not
    return CHAR_RULE.sub(lambda _: JSON_CHAR_RULE, grammar)
