"""Shared parsers of the d1 protocol: answer tags, boxes, numbers, MATH equivalence."""

from __future__ import annotations

import concurrent.futures
from fractions import Fraction

import pytest

from ddrl.tasks.protocol import (
    D1_SYSTEM_PROMPT,
    answer_grid,
    cell_accuracy,
    d1_prompt,
    extract_answer,
    last_boxed,
    math_equivalent,
    normalize_latex,
    parse_number,
    same_number,
)


def test_d1_prompt_is_the_format_block_a_blank_line_and_the_question():
    assert D1_SYSTEM_PROMPT == (
        "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n"
    )
    assert d1_prompt("Q?") == D1_SYSTEM_PROMPT + "\nQ?"


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("<reasoning>\nr\n</reasoning>\n<answer>\n42\n</answer>\n", "42"),
        ("<answer>1</answer> then <answer> 2 </answer>", "2"),  # the last pair
        ("<answer>1</answer> then <answer>2", "1"),  # an unclosed tag is not a pair
        ("<answer>a<answer>b</answer>", "b"),  # nearest opening tag before the last closing
        ("<answer>\n\n</answer>", ""),  # an empty answer is still an answer
        ("no tags at all, 42", None),
        ("<answer>\n42", None),  # truncated: no answer
        ("42</answer>", None),
        ("", None),
        ("<ANSWER>42</ANSWER>", None),  # tags are case-sensitive, as in d1
        ("<answer>\n  x = 5  \n</answer> trailing", "x = 5"),
    ],
)
def test_extract_answer_reads_the_last_complete_pair(completion, answer):
    assert extract_answer(completion) == answer


@pytest.mark.parametrize(
    "text, content",
    [
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("a \\boxed{1} b \\boxed{2}", "2"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("\\boxed{x^{2^{3}}}", "x^{2^{3}}"),
        ("so \\boxed 5$.", "5"),
        ("\\boxed{unclosed \\frac{1}{2}", None),
        ("\\fbox{3}", "3"),
        ("\\boxedx{3}", None),
        ("no box", None),
        ("\\boxed{ 7 }", "7"),
    ],
)
def test_last_boxed_matches_nested_braces(text, content):
    assert last_boxed(text) == content


@pytest.mark.parametrize(
    "text, number",
    [
        ("42", Fraction(42)),
        ("$1,000.00", Fraction(1000)),
        ("1,000,000", Fraction(1000000)),
        ("18 dollars", Fraction(18)),
        ("The answer is 42.", Fraction(42)),
        ("\u22125", Fraction(-5)),  # unicode minus
        ("- 5", Fraction(-5)),
        ("\\boxed{72}", Fraction(72)),
        ("x = 3/4", Fraction(3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("5%", Fraction(5)),
        ("-.5", Fraction(-1, 2)),
        ("10 - 5", Fraction(5)),  # not a bare number: its last number
        ("72.0", Fraction(72)),
        ("no number", None),
        (None, None),
    ],
)
def test_parse_number_normalises_units_commas_and_signs(text, number):
    assert parse_number(text) == number


def test_same_number_compares_values_not_strings():
    assert same_number("$2,880", "2880")
    assert same_number("2880.00 dollars", "2880")
    assert not same_number("2881", "2880")
    assert not same_number(None, "2880")


def test_normalize_latex_removes_presentation_only_differences():
    assert normalize_latex("\\left( \\dfrac{1}{2} \\right)") == "(\\frac{1}{2})"
    assert normalize_latex("x = \\frac12") == "\\frac{1}{2}"
    assert normalize_latex("120^\\circ") == "120"
    assert normalize_latex("\\text{(C)}.") == "(C)"


@pytest.mark.parametrize(
    "prediction, gold, equal",
    [
        ("0.5", "\\frac{1}{2}", True),
        ("\\dfrac{7}{8}", "\\frac{7}{8}", True),
        ("x^2+2x+1", "(x+1)^2", True),  # symbolic: needs math-verify
        ("\\sqrt{12}", "2\\sqrt{3}", True),
        ("3", "4", False),
        ("", "4", False),
        (None, "4", False),
    ],
)
def test_math_equivalent_on_the_main_thread_uses_math_verify(prediction, gold, equal):
    assert math_equivalent(prediction, gold) is equal


def test_math_equivalent_off_the_main_thread_falls_back_to_strings():
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(math_equivalent, "\\frac12", "0.5").result() is True
        assert pool.submit(math_equivalent, "x^2+2x+1", "(x+1)^2").result() is False


def test_answer_grid_pads_and_cuts_to_16_digits():
    assert answer_grid("1234 3412\n2143 4321") == "1234341221434321"
    assert answer_grid("12") == "1200000000000000"
    assert answer_grid("1" * 20) == "1" * 16
    assert answer_grid("no digits") is None
    assert answer_grid(None) is None


def test_cell_accuracy_counts_only_empty_cells():
    puzzle, solution = "0034340200434320", "1234341221434321"
    assert cell_accuracy(solution, puzzle, solution) == 1.0
    assert cell_accuracy("2134341212434321", puzzle, solution) == 2 / 6  # cells 0, 1, 8, 9 differ
    assert cell_accuracy(None, puzzle, solution) == 0.0
    assert cell_accuracy(solution, solution, solution) == 0.0  # nothing to fill
