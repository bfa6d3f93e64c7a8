"""The safe Countdown evaluator: exact values, everything else rejected, bounded time."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest

from ddrl.tasks.arithmetic import (
    ExpressionError,
    answer_expression,
    evaluate,
    reachable_integers,
    solve,
    solves,
    try_evaluate,
)


@pytest.mark.parametrize(
    "expression, value, numbers",
    [
        ("3*7-5", Fraction(16), (3, 7, 5)),
        ("6/4*2", Fraction(3), (6, 4, 2)),  # exact: no float rounding
        ("(1 + 2) * 3", Fraction(9), (1, 2, 3)),
        ("8/(3-8/3)", Fraction(24), (8, 3, 8, 3)),
        ("((((7))))", Fraction(7), (7,)),
        ("1/3", Fraction(1, 3), (1, 3)),
        ("0", Fraction(0), (0,)),
    ],
)
def test_evaluate_is_exact_and_lists_numbers_in_order(expression, value, numbers):
    result = evaluate(expression)
    assert result.value == value
    assert result.numbers == numbers


@pytest.mark.parametrize(
    "expression",
    [
        "9**9**9**9",  # the classic eval-checker hang
        "2**3",
        "7//2",
        "-3+5",  # unary signs are not Countdown moves
        "+3",
        "3.5+1",
        "1e5",
        "1_000",
        "007",
        "True",
        "__import__('os')",
        "abs(3)",
        "3*(7-5",
        "",
        "   ",
        "(3+5)/0",
        "4/(2-2)",
        "3 % 2",
        "x+1",
        "1" * 13,  # a literal over 12 digits
        "+".join(["1"] * 17),  # more than 16 literals
        "(" * 150 + "1" + ")" * 150,  # longer than 200 characters
    ],
)
def test_evaluate_rejects_anything_but_integer_arithmetic(expression):
    with pytest.raises(ExpressionError):
        evaluate(expression)
    assert try_evaluate(expression) is None


def test_huge_power_is_rejected_without_computing_it():
    start = time.perf_counter()
    assert try_evaluate("9**9**9**9") is None
    assert try_evaluate("(9*9*9*9*9*9*9*9*9*9*9*9*9*9*9*9)") is not None
    assert time.perf_counter() - start < 0.1


def test_largest_allowed_product_is_exact_and_fast():
    start = time.perf_counter()
    result = evaluate("*".join(["999999999999"] * 15))  # 194 characters
    assert result.value == 999999999999**15
    assert time.perf_counter() - start < 0.1


def test_solves_needs_every_number_exactly_once_and_the_target_within_1e_5():
    assert solves("3*7-5", [3, 5, 7], 16)
    assert solves("3*7-5", [7, 5, 3], 16.000001)
    assert not solves("3*7-5", [3, 5, 7], 16.0001)
    assert not solves("3*7", [3, 5, 7], 21)  # 5 unused
    assert not solves("3*7-5+5", [3, 5, 7], 21)  # 5 used twice
    assert not solves("3*8-5", [3, 5, 7], 19)  # 8 not given
    assert solves("5-5+2", [5, 5, 2], 2)  # repeated numbers count as a multiset


@pytest.mark.parametrize(
    "answer, expression",
    [
        ("3*7-5", "3*7-5"),
        ("\\boxed{3 \\times 7 - 5}", "3 * 7 - 5"),
        ("3 × 7 − 5 = 16", "3 * 7 - 5"),
        ("16 = 3*7-5", "3*7-5"),
        ("$3*7-5$", "3*7-5"),
        ("\\( (7 \\div 7) + 3 \\)", "(7 / 7) + 3"),
        ("\\frac{21}{3}+5", "(21)/(3)+5"),
        ("3 \\cdot 7 - 5.", "3 * 7 - 5"),
        ("3*7-5 = 16 = 16", "3*7-5 = 16 = 16"),  # left for the evaluator to reject
    ],
)
def test_answer_expression_reads_common_model_notations(answer, expression):
    assert answer_expression(answer) == expression


def test_solver_finds_a_minimal_parenthesised_solution():
    assert solve([3, 5, 7], 16) == "3*7-5"
    assert solve([3, 3, 8, 8], 24) == "8/(3-8/3)"
    assert solve([1, 2, 3], 100) is None
    for numbers, target in [([4, 4, 7, 7], 24), ([1, 5, 5, 5], 24), ([25, 4, 3, 9], 97)]:
        assert solves(solve(numbers, target), numbers, target)


def test_reachable_integers_of_1_1_1():
    # 1+1+1, 1+1-1 = 1*1*1, (1+1)*1, 1-1*1 = 0 (out of range)
    assert reachable_integers([1, 1, 1], 1, 99) == [1, 2, 3]
    assert reachable_integers([1, 1, 1], -5, 99) == [-1, 0, 1, 2, 3]
