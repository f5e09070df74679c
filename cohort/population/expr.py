"""A tiny, safe arithmetic-expression evaluator for filters and covariate effects in specs.

Specs are data, never code: expressions such as ``0.693 * V / CL`` or ``1 + 0.16 * (APGR < 5)``
are parsed with :mod:`ast` and only numbers, names, arithmetic, comparisons, ``and``/``or``/
``not`` and a few numpy functions are allowed (no attribute access, calls of arbitrary
objects, subscripts or lambdas), then evaluated elementwise on numpy arrays.
"""

from __future__ import annotations

import ast
import operator

import numpy as np

from cohort.errors import CohortError

_BIN = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_CMP = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_FUNCS = {
    "log": np.log,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "log10": np.log10,
    "minimum": np.minimum,
    "maximum": np.maximum,
}
# Arguments each function takes: numpy's ufuncs take one more positional argument as their
# output array, so minimum(CRCL, 150, WT) wrote CRCL's capped values over WT (a probe).
_ARITY = {"minimum": 2, "maximum": 2}


class ExpressionError(CohortError, ValueError):
    """An expression in a spec is not allowed or refers to unknown names."""


def names_in(expr: str) -> set[str]:
    """Variable names an expression reads (function names excluded)."""
    tree = _parse(expr)
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - calls


def _parse(expr: str) -> ast.Expression:
    try:
        tree = ast.parse(str(expr), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"cannot parse expression {expr!r}: {exc.msg}") from None
    for node in ast.walk(tree):
        ok = isinstance(
            node,
            (
                ast.Expression,
                ast.BinOp,
                ast.UnaryOp,
                ast.Compare,
                ast.BoolOp,
                ast.Name,
                ast.Load,
                ast.Constant,
                ast.Call,
                ast.And,
                ast.Or,
                ast.Not,
                ast.USub,
                ast.UAdd,
                *_BIN,
                *_CMP,
            ),
        )
        if not ok:
            raise ExpressionError(f"expression {expr!r}: {type(node).__name__} is not allowed")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            raise ExpressionError(f"expression {expr!r}: only numeric constants are allowed")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
                raise ExpressionError(
                    f"expression {expr!r}: only the functions {sorted(_FUNCS)} may be called"
                )
            want = _ARITY.get(node.func.id, 1)
            if len(node.args) != want or any(isinstance(a, ast.Starred) for a in node.args):
                raise ExpressionError(
                    f"expression {expr!r}: {node.func.id}() takes {want} argument"
                    f"{'s' if want > 1 else ''}, got {len(node.args)}"
                )
    return tree


def evaluate(expr: str, env: dict[str, np.ndarray]) -> np.ndarray:
    """Evaluate ``expr`` elementwise with variables from ``env``."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            if node.id not in env:
                raise ExpressionError(
                    f"expression {expr!r}: unknown name {node.id!r}; known: {sorted(env)}"
                )
            return env[node.id]
        if isinstance(node, ast.BinOp):
            return _BIN[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp):
            v = ev(node.operand)
            return (
                np.logical_not(v)
                if isinstance(node.op, ast.Not)
                else (-v if isinstance(node.op, ast.USub) else v)
            )
        if isinstance(node, ast.Compare):
            left, out = ev(node.left), True
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp)
                out = np.logical_and(out, _CMP[type(op)](left, right))
                left = right
            return out
        if isinstance(node, ast.BoolOp):
            vals = [ev(v) for v in node.values]
            f = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            out = vals[0]
            for v in vals[1:]:
                out = f(out, v)
            return out
        if isinstance(node, ast.Call):
            return _FUNCS[node.func.id](*(ev(a) for a in node.args))
        raise ExpressionError(f"expression {expr!r}: unsupported syntax")  # pragma: no cover

    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(ev(_parse(expr)), dtype=float)
