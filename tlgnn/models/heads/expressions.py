"""Safe arithmetic expressions for the ELV head, parsed with ``ast`` against a whitelist.

Allowed: numbers; names of latents and parameters; ``+ - * /``; ``x ** c`` with a numeric exponent ``c``;
unary ``-``/``+``; parentheses; the functions ``softplus exp log sqrt abs relu sigmoid tanh`` (one
argument) and ``min max`` (two arguments). Anything else (attribute access, other calls, strings,
comparisons, lambdas, subscripts, keyword arguments) is rejected with an :class:`ExpressionError` that names
the task and the offending token. A compiled expression is a differentiable function of torch tensors.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping, Union

import torch
import torch.nn.functional as F

from tlgnn.errors import TlgnnError
from tlgnn.models.registry import close_matches

Value = Union[torch.Tensor, float]

FUNCTIONS: dict[str, tuple[int, Callable[..., torch.Tensor]]] = {
    "softplus": (1, F.softplus),
    "exp": (1, torch.exp),
    "log": (1, torch.log),
    "sqrt": (1, torch.sqrt),
    "abs": (1, torch.abs),
    "relu": (1, torch.relu),
    "sigmoid": (1, torch.sigmoid),
    "tanh": (1, torch.tanh),
    "min": (2, torch.minimum),
    "max": (2, torch.maximum),
}

_BINARY: dict[type, Callable[[Value, Value], Value]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}

_DESCRIPTIONS = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscript",
    ast.Lambda: "lambda",
    ast.Compare: "comparison",
    ast.BoolOp: "boolean operator",
    ast.IfExp: "conditional expression",
    ast.List: "list",
    ast.Tuple: "tuple",
    ast.Dict: "dict",
    ast.Set: "set",
    ast.JoinedStr: "f-string",
    ast.NamedExpr: "assignment",
    ast.Starred: "starred argument",
}


class ExpressionError(TlgnnError, ValueError):
    """An ELV expression that cannot be compiled; the message names the task and the offending token."""

    def __init__(self, task: str, text: str, reason: str) -> None:
        self.task, self.text, self.reason = task, text, reason
        super().__init__(f"task {task!r}: expression {text!r}: {reason}")


@dataclass
class CompiledExpression:
    """A parsed expression: ``expr(env)`` evaluates it with ``env[name]`` tensors (broadcasting)."""

    task: str
    text: str
    names: frozenset[str]
    _fn: Callable[[Mapping[str, torch.Tensor]], Value] = field(repr=False)

    def __call__(self, env: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = sorted(self.names - set(env))
        if missing:
            raise KeyError(f"task {self.task!r}: expression {self.text!r} needs values for {missing}")
        out = self._fn(env)
        if not isinstance(out, torch.Tensor):
            ref = next(iter(env.values()))
            out = torch.as_tensor(out, dtype=ref.dtype, device=ref.device)
        return out


def compile_expression(text: str, task: str, names: Collection[str]) -> CompiledExpression:
    """Parse ``text`` (the expression of ``task``) allowing the variables ``names``; raise ``ExpressionError``."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError(task, str(text), "empty expression")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        column = err.offset if err.offset is not None else "?"
        raise ExpressionError(task, text, f"syntax error at column {column}: {err.msg}") from None
    compiler = _Compiler(task, text.strip(), set(names))
    fn = compiler.visit(tree.body)
    return CompiledExpression(task=task, text=text.strip(), names=frozenset(compiler.used), _fn=fn)


def _as_tensor(x: Value, env: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    ref = next(iter(env.values()))
    return torch.as_tensor(x, dtype=ref.dtype, device=ref.device)


def _number(node: ast.AST) -> float | None:
    """The value of a numeric literal (optionally with unary sign), else ``None``."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _number(node.operand)
        if inner is None:
            return None
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    return None


class _Compiler:
    """Turns a whitelisted AST into nested closures ``env -> value``."""

    def __init__(self, task: str, text: str, names: set[str]) -> None:
        self.task, self.text, self.names = task, text, names
        self.used: set[str] = set()

    def fail(self, node: ast.AST, reason: str) -> ExpressionError:
        return ExpressionError(self.task, self.text, reason)

    def segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.text, node) or type(node).__name__

    def visit(self, node: ast.AST) -> Callable[[Mapping[str, torch.Tensor]], Value]:
        if isinstance(node, ast.Constant):
            value = _number(node)
            if value is None:
                raise self.fail(node, f"constant {self.segment(node)} is not allowed (only numbers)")
            return lambda env, v=value: v
        if isinstance(node, ast.Name):
            return self.visit_name(node)
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                raise self.fail(node, f"operator in {self.segment(node)!r} is not allowed (only unary - and +)")
            inner = self.visit(node.operand)
            if isinstance(node.op, ast.USub):
                return lambda env: -inner(env)
            return inner
        if isinstance(node, ast.BinOp):
            return self.visit_binop(node)
        if isinstance(node, ast.Call):
            return self.visit_call(node)
        kind = _DESCRIPTIONS.get(type(node), type(node).__name__)
        raise self.fail(node, f"{kind} {self.segment(node)!r} is not allowed")

    def visit_name(self, node: ast.Name) -> Callable[[Mapping[str, torch.Tensor]], Value]:
        name = node.id
        if name in FUNCTIONS and name not in self.names:
            raise self.fail(node, f"function {name!r} must be called, e.g. {name}(x)")
        if name not in self.names:
            known = ", ".join(sorted(self.names)) or "(none)"
            raise self.fail(node, f"unknown name {name!r}{close_matches(name, self.names)}; known: {known}")
        self.used.add(name)
        return lambda env: env[name]

    def visit_binop(self, node: ast.BinOp) -> Callable[[Mapping[str, torch.Tensor]], Value]:
        left = self.visit(node.left)
        if isinstance(node.op, ast.Pow):
            exponent = _number(node.right)
            if exponent is None:
                raise self.fail(
                    node, f"exponent {self.segment(node.right)!r} in {self.segment(node)!r} must be a number"
                )
            return lambda env: left(env) ** exponent
        op = _BINARY.get(type(node.op))
        if op is None:
            symbol = {ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|",
                      ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>"}.get(type(node.op), type(node.op).__name__)
            raise self.fail(node, f"operator {symbol!r} in {self.segment(node)!r} is not allowed (only + - * / **)")
        right = self.visit(node.right)
        return lambda env: op(left(env), right(env))

    def visit_call(self, node: ast.Call) -> Callable[[Mapping[str, torch.Tensor]], Value]:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, f"call {self.segment(node.func)!r} is not allowed (only {', '.join(FUNCTIONS)})")
        name = node.func.id
        if name not in FUNCTIONS:
            raise self.fail(
                node,
                f"function {name!r} is not allowed{close_matches(name, list(FUNCTIONS))}; "
                f"allowed: {', '.join(FUNCTIONS)}",
            )
        arity, fn = FUNCTIONS[name]
        if node.keywords:
            raise self.fail(node, f"keyword argument {node.keywords[0].arg!r} in {name}(...) is not allowed")
        if len(node.args) != arity:
            raise self.fail(node, f"function {name!r} takes {arity} argument(s), got {len(node.args)}")
        args = [self.visit(a) for a in node.args]
        return lambda env: fn(*(_as_tensor(a(env), env) for a in args))
