"""Functions the models and scripted personalities may call (DESIGN §7).

A function module is a ``.py`` file in ``zoos/functions/`` or the user functions folder (a user
module overrides a zoo module of the same name). Every public ``async def`` *defined* in the
module is a function named ``module.function``; its JSON schema comes from the type hints and
the docstring (``Args:`` section). Calls are validated against the signature and run with a
timeout; a failing function returns an error the model can read, never a crash.

How the timeout (``call_timeout``) works, and what it cannot do:

* A synchronous function (a plain ``def`` given to :func:`build_spec`; modules export only
  ``async def``) runs in its own daemon thread, never on the event loop. At the timeout the caller
  stops waiting and the model is told; the thread itself cannot be killed and runs to its end.
  At most :data:`MAX_RUNNING_THREADS` such threads run at once: a call beyond that is refused at
  once rather than queued, so a runaway function cannot pile up threads.
* An ``async def`` function runs on the server's event loop under ``asyncio.wait_for``. The
  timeout cancels it at its next ``await``; code that never awaits (CPU-bound work, blocking I/O)
  cannot be interrupted and stalls the whole server meanwhile, so such work belongs in a thread
  (``await asyncio.to_thread(...)``), as ``utilities.calculate`` does.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

from pydantic import ConfigDict, ValidationError, create_model

from lollms_server.core.errors import BadRequestError, NotFoundError
from lollms_server.utils.modules import import_file
from lollms_server.utils.paths import is_safe_name

logger = logging.getLogger(__name__)

ARG_LINE = re.compile(r"^\s{2,}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")
MAX_RUNNING_THREADS = 16  # synchronous function calls running at once (timed-out ones included)


@dataclass
class FunctionSpec:
    """One callable function: its name, description, JSON schema and the function itself."""

    name: str
    description: str
    parameters: dict[str, Any]
    call: Callable[..., Awaitable[Any]] | Callable[..., Any]
    validator: Any

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    def tool(self) -> dict[str, Any]:
        """The OpenAI-style tool definition."""
        return {"type": "function", "function": self.public()}


def _describe(function: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The summary of a docstring and the descriptions of its ``Args:`` entries."""
    doc = inspect.getdoc(function) or ""
    summary_lines: list[str] = []
    arguments: dict[str, str] = {}
    section = "summary"
    last = ""
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            section = "args"
            continue
        if stripped.lower() in ("returns:", "raises:", "example:", "examples:"):
            section = "other"
            continue
        if section == "summary":
            summary_lines.append(stripped)
        elif section == "args":
            match = ARG_LINE.match("  " + line if not line.startswith("  ") else line)
            if match:
                last = match.group(1)
                arguments[last] = match.group(2).strip()
            elif stripped and arguments:  # a continuation line of the previous argument
                arguments[last] += " " + stripped
    summary = " ".join(part for part in summary_lines if part).strip()
    return summary, arguments


def build_spec(name: str, function: Callable[..., Awaitable[Any]] | Callable[..., Any]) -> FunctionSpec:
    """Schema and validator from the signature: every parameter needs a type hint.

    ``function`` is an ``async def`` (run on the event loop) or a plain ``def`` (run in a thread).
    """
    description, argument_docs = _describe(function)
    hints = get_type_hints(function)
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"{name}: *args/**kwargs are not allowed in functions")
        if parameter.name not in hints:
            raise TypeError(f"{name}: parameter '{parameter.name}' has no type hint")
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (hints[parameter.name], default)
    model = create_model(  # type: ignore[call-overload]
        f"Arguments_{name.replace('.', '_')}", __config__=ConfigDict(extra="forbid"), **fields
    )
    schema = model.model_json_schema()
    schema.pop("title", None)
    for key, value in schema.get("properties", {}).items():
        value.pop("title", None)
        if key in argument_docs:
            value["description"] = argument_docs[key]
    return FunctionSpec(name=name, description=description, parameters=schema, call=function, validator=model)


class FunctionManager:
    """Discovers function modules and runs calls with validation and a timeout."""

    def __init__(self, folders: list[Path], call_timeout: float = 30.0) -> None:
        self.call_timeout = call_timeout
        self._threads = threading.BoundedSemaphore(MAX_RUNNING_THREADS)
        self.functions: dict[str, FunctionSpec] = {}
        modules: dict[str, Path] = {}
        for folder in folders:  # later folders (the user's) win
            if folder.is_dir():
                for path in sorted(folder.glob("*.py")):
                    if not path.name.startswith("_") and is_safe_name(path.stem):
                        modules[path.stem] = path
        for module_name, path in modules.items():
            try:
                self._load_module(module_name, path)
            except Exception as exc:  # noqa: BLE001 - a broken module is skipped, not fatal
                logger.error("Skipping function module %s: %s: %s", path.name, type(exc).__name__, exc)

    def _load_module(self, module_name: str, path: Path) -> None:
        qualified = f"lollms_functions.{module_name}"
        module = import_file(qualified, path)
        for attribute, value in vars(module).items():
            if attribute.startswith("_") or not inspect.iscoroutinefunction(value):
                continue
            if getattr(value, "__module__", None) != qualified:
                continue  # imported from elsewhere: not exported
            name = f"{module_name}.{attribute}"
            self.functions[name] = build_spec(name, value)

    def public(self) -> list[dict[str, Any]]:
        return [spec.public() for spec in self.functions.values()]

    def get(self, name: str) -> FunctionSpec:
        spec = self.functions.get(name)
        if spec is None:
            raise NotFoundError(f"Function '{name[:100]}' not found.", param="functions")
        return spec

    def require(self, names: list[str]) -> list[FunctionSpec]:
        """The specs of the functions a request names (404 for an unknown one)."""
        return [self.get(name) for name in names]

    async def call(self, name: str, arguments: Any) -> Any:
        """Validate and run one call; raises BadRequestError for bad arguments.

        Raises ``asyncio.TimeoutError`` after ``call_timeout`` seconds; a synchronous function's
        thread keeps running after that (see the module docstring), the event loop never waits on it.
        """
        spec = self.get(name)
        if not isinstance(arguments, dict):
            raise BadRequestError(f"Arguments of '{name}' must be a JSON object.")
        try:
            checked = spec.validator.model_validate(arguments)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "arguments"
            raise BadRequestError(f"Invalid arguments for '{name}': {where}: {first['msg']}.") from None
        values = {key: getattr(checked, key) for key in type(checked).model_fields}
        if inspect.iscoroutinefunction(spec.call):
            return await asyncio.wait_for(spec.call(**values), self.call_timeout)
        return await asyncio.wait_for(self._in_thread(name, spec.call, values), self.call_timeout)

    async def _in_thread(self, name: str, function: Callable[..., Any], values: dict[str, Any]) -> Any:
        """Run a synchronous function in a daemon thread; the caller may stop waiting at any time.

        A daemon thread (not an executor's) so that a function still running at shutdown does not
        hold the process, and a bounded number of them so that runaway calls cannot pile up.
        """
        if not self._threads.acquire(blocking=False):
            raise RuntimeError(f"{MAX_RUNNING_THREADS} earlier function calls are still running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()

        def deliver(ok: bool, value: Any) -> None:
            if not future.done():  # the caller may have stopped waiting (timeout, cancellation)
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

        def work() -> None:
            try:
                outcome: tuple[bool, Any] = (True, context.run(function, **values))
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who reports it
                outcome = (False, RuntimeError(repr(exc)) if isinstance(exc, StopIteration) else exc)
            except BaseException as exc:  # SystemExit and the like must not reach the event loop
                outcome = (False, RuntimeError(f"{type(exc).__name__}: {exc}"))
            finally:
                self._threads.release()
            try:
                loop.call_soon_threadsafe(deliver, *outcome)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        try:
            threading.Thread(target=work, name=f"lollms-function-{name}"[:60], daemon=True).start()
        except BaseException:
            self._threads.release()
            raise
        return await future

    async def safe_call(self, name: str, arguments: Any) -> tuple[bool, Any]:
        """(ok, result or error message): what a model is told, whatever happened."""
        try:
            return True, await self.call(name, arguments)
        except (BadRequestError, NotFoundError) as exc:
            return False, exc.message
        except asyncio.TimeoutError:
            return False, f"'{name}' did not finish within {self.call_timeout:g} s."
        except Exception as exc:  # noqa: BLE001 - reported to the model, logged here
            logger.warning("Function %s failed: %s", name, type(exc).__name__)
            return False, f"'{name}' failed ({type(exc).__name__}: {str(exc)[:200]})."
