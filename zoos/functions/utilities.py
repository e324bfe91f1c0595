"""Safe, useful functions: arithmetic (parsed with ``ast``, never ``eval``), dates, units."""

from __future__ import annotations

import ast
import asyncio
import datetime as _datetime
import math
import operator
from collections.abc import Callable
from typing import Any

# Bounds that keep every step of ``calculate`` cheap (microseconds), whatever the expression:
_MAX_BITS = 4096  # the largest integer operand or result (about 1233 digits)
_MAX_EXPONENT = 1000  # the largest |exponent| of **
_MAX_NDIGITS = 1000  # the largest |ndigits| of round(x, ndigits): round(1, -10**7) builds 10**(10**7)


def _round(number: Any, ndigits: Any = None) -> Any:
    if ndigits is None:
        return round(number)
    if isinstance(ndigits, int) and abs(ndigits) > _MAX_NDIGITS:
        raise ValueError(f"round: ndigits must be between -{_MAX_NDIGITS} and {_MAX_NDIGITS}")
    return round(number, ndigits)


_OPERATORS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "log": math.log,
    "exp": math.exp,
    "abs": abs,
    "round": _round,
    "floor": math.floor,
    "ceil": math.ceil,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_LENGTH_M = {
    "mm": 0.001,
    "cm": 0.01,
    "m": 1.0,
    "km": 1000.0,
    "in": 0.0254,
    "ft": 0.3048,
    "yd": 0.9144,
    "mi": 1609.344,
}
_MASS_KG = {"mg": 1e-6, "g": 0.001, "kg": 1.0, "t": 1000.0, "oz": 0.028349523125, "lb": 0.45359237}
_VOLUME_L = {"ml": 0.001, "l": 1.0, "m3": 1000.0, "gal": 3.785411784, "qt": 0.946352946, "cup": 0.2365882365}


def _checked(value: Any) -> Any:
    """``value`` if it is a real number of bounded size (every operand and result passes here)."""
    if isinstance(value, complex):
        raise ValueError("the result is not a real number")
    if isinstance(value, int) and value.bit_length() > _MAX_BITS:
        raise ValueError(f"number too large (more than {_MAX_BITS} bits)")
    return value


def _power(base: Any, exponent: Any) -> Any:
    if abs(exponent) > _MAX_EXPONENT:
        raise ValueError("exponent too large")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        # Checked before the power is computed: base**exponent has between (bits - 1) * exponent
        # and bits * exponent bits, so what passes costs at most _MAX_BITS + _MAX_EXPONENT bits.
        if (base.bit_length() - 1) * exponent >= _MAX_BITS:
            raise ValueError(f"number too large (more than {_MAX_BITS} bits)")
    return operator.pow(base, exponent)


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return _checked(node.value)
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _checked(_power(left, right))
        return _checked(_OPERATORS[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _checked(_OPERATORS[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
        if node.keywords:
            raise ValueError("keyword arguments are not supported")
        return _checked(_FUNCTIONS[node.func.id](*[_evaluate(argument) for argument in node.args]))
    raise ValueError(f"unsupported expression element: {type(node).__name__}")


def _calculate(expression: str) -> float:
    if len(expression) > 500:
        raise ValueError("expression too long")
    return _evaluate(ast.parse(expression, mode="eval"))


async def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression exactly as written.

    Args:
        expression: Numbers, + - * / // % **, parentheses, pi, e and sqrt, sin, cos, tan, log, exp,
            abs, round, floor, ceil. For example "2 * (3 + 4) ** 2".
    """
    # Integers are limited to 4096 bits, exponents to 1000 and round's ndigits to +-1000, so every
    # step is cheap; the walk still runs in a thread, off the server's event loop.
    return await asyncio.to_thread(_calculate, expression)


async def current_datetime(utc_offset_hours: float = 0.0) -> str:
    """The current date and time in ISO 8601.

    Args:
        utc_offset_hours: Offset from UTC in hours (for example 2 or -5.5).
    """
    zone = _datetime.timezone(_datetime.timedelta(hours=utc_offset_hours))
    return _datetime.datetime.now(zone).isoformat(timespec="seconds")


async def days_between(start_date: str, end_date: str) -> int:
    """Number of days from one date to another.

    Args:
        start_date: First date, YYYY-MM-DD.
        end_date: Second date, YYYY-MM-DD.
    """
    start = _datetime.date.fromisoformat(start_date)
    end = _datetime.date.fromisoformat(end_date)
    return (end - start).days


async def convert_units(value: float, from_unit: str, to_unit: str) -> float:
    """Convert a length, mass, volume or temperature between units.

    Args:
        value: The amount to convert.
        from_unit: Unit of the value: mm cm m km in ft yd mi, mg g kg t oz lb, ml l m3 gal qt cup, C F K.
        to_unit: Unit to convert to (same family).
    """
    if from_unit in ("C", "F", "K") and to_unit in ("C", "F", "K"):
        celsius = {"C": value, "F": (value - 32) * 5 / 9, "K": value - 273.15}[from_unit]
        return {"C": celsius, "F": celsius * 9 / 5 + 32, "K": celsius + 273.15}[to_unit]
    for table in (_LENGTH_M, _MASS_KG, _VOLUME_L):
        if from_unit in table and to_unit in table:
            return value * table[from_unit] / table[to_unit]
    raise ValueError(f"cannot convert {from_unit} to {to_unit}")
