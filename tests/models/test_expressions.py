"""ELV expressions: parsing, values, gradients and clear rejection of anything outside the whitelist."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tlgnn.models.heads.expressions import ExpressionError, compile_expression

NAMES = {"gap_dft", "shift", "a", "b", "c", "d_band_center", "d_band_width", "z_ts", "z_int", "x"}


def env(**values):
    return {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in values.items()}


def test_documented_examples_evaluate_to_the_right_numbers():
    e = env(gap_dft=[0.5, 1.2], shift=[-1.0, 2.0])
    out = compile_expression("gap_dft + softplus(shift)", "gap_exp", NAMES)(e)
    expected = [0.5 + math.log1p(math.exp(-1.0)), 1.2 + math.log1p(math.exp(2.0))]
    assert out.tolist() == pytest.approx(expected)

    e = env(a=0.7, b=-0.2, c=0.1, d_band_center=[-2.0, -1.5], d_band_width=[3.0, 4.0])
    out = compile_expression("a * d_band_center + b * d_band_width + c", "ead", NAMES)(e)
    assert out.tolist() == pytest.approx([0.7 * -2.0 - 0.2 * 3.0 + 0.1, 0.7 * -1.5 - 0.2 * 4.0 + 0.1])

    e = env(z_ts=[1.0, 0.4], z_int=[0.25, -0.5])
    assert compile_expression("z_ts - z_int", "barrier", NAMES)(e).tolist() == pytest.approx([0.75, 0.9])


@pytest.mark.parametrize(
    "text, value",
    [
        ("-x ** 2 / 4", -(1.5**2) / 4),
        ("x ** -1 + +x", 1 / 1.5 + 1.5),
        ("exp(x) - log(x) + sqrt(x)", math.exp(1.5) - math.log(1.5) + math.sqrt(1.5)),
        ("abs(-x) * relu(x - 2) + sigmoid(x) + tanh(x)", 0 + 1 / (1 + math.exp(-1.5)) + math.tanh(1.5)),
        ("min(x, 1) + max(x, 2.5e0)", 1 + 2.5),
        ("(x + 1) * (x - 1)", 1.5**2 - 1),
    ],
)
def test_operators_and_functions(text, value):
    out = compile_expression(text, "t", NAMES)(env(x=1.5))
    assert out.item() == pytest.approx(value)


def test_gradient_matches_hand_computed():
    e = env(a=0.7, gap_dft=[0.5, 1.2], shift=[-1.0, 2.0])
    expr = compile_expression("a * gap_dft ** 2 + softplus(shift) / a", "t", NAMES)
    assert expr.names == {"a", "gap_dft", "shift"}
    expr(e).sum().backward()
    a, g, s = 0.7, torch.tensor([0.5, 1.2], dtype=torch.float64), torch.tensor([-1.0, 2.0], dtype=torch.float64)
    assert torch.allclose(e["gap_dft"].grad, 2 * a * g)
    assert torch.allclose(e["shift"].grad, torch.sigmoid(s) / a)
    assert float(e["a"].grad) == pytest.approx(float((g**2).sum() - (F.softplus(s) / a**2).sum()))


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("gap_dft + shfit", r"task 'gap_exp'.*unknown name 'shfit'.*did you mean 'shift'"),
        ("gap_dft.real", r"task 'gap_exp'.*attribute access 'gap_dft.real' is not allowed"),
        ("__import__('os')", r"task 'gap_exp'.*function '__import__' is not allowed"),
        ("softmax(gap_dft)", r"function 'softmax' is not allowed.*did you mean .*'softplus'"),
        ("gap_dft + 'eV'", r"constant 'eV' is not allowed"),
        ("(lambda q: q)(gap_dft)", r"call '\(lambda q: q\)' is not allowed|lambda"),
        ("gap_dft +* 2", r"task 'gap_exp'.*syntax error at column \d+"),
        ("gap_dft ** shift", r"exponent 'shift' in 'gap_dft \*\* shift' must be a number"),
        ("gap_dft // 2", r"operator '//'"),
        ("gap_dft if shift else 0", r"conditional expression"),
        ("gap_dft[0]", r"subscript 'gap_dft\[0\]'"),
        ("max(gap_dft)", r"function 'max' takes 2 argument\(s\), got 1"),
        ("exp(gap_dft, base=2)", r"takes 1 argument|keyword argument 'base'"),
        ("exp + gap_dft", r"function 'exp' must be called"),
        ("gap_dft > 1", r"comparison 'gap_dft > 1' is not allowed"),
        ("True + gap_dft", r"constant True is not allowed"),
        ("", r"empty expression"),
    ],
)
def test_bad_input_names_task_and_token(text, pattern):
    with pytest.raises(ExpressionError, match=pattern) as info:
        compile_expression(text, "gap_exp", NAMES)
    assert isinstance(info.value, ValueError) and info.value.task == "gap_exp"


def test_missing_value_at_evaluation_is_a_clear_error():
    expr = compile_expression("z_ts - z_int", "barrier", NAMES)
    with pytest.raises(KeyError, match="needs values for \\['z_int'\\]"):
        expr(env(z_ts=[1.0]))
