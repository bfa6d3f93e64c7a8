"""d1's format rewards reproduced value for value (docs/tasks.md)."""

from __future__ import annotations

import pytest

from ddrl.rewards.format import d1_soft_format, d1_strict_format, d1_tag_count, tag_count

GOOD = "<reasoning>\nthink\n</reasoning>\n<answer>\n42\n</answer>\n"


@pytest.mark.parametrize(
    "completion, strict, soft",
    [
        (GOOD, 0.5, 0.5),
        (GOOD + "\n", 0.5, 0.5),  # `$` also matches before one final newline, as in d1
        (GOOD + "more", 0.0, 0.5),
        (GOOD[:-1], 0.0, 0.5),  # no final newline
        ("<reasoning>think</reasoning><answer>42</answer>", 0.0, 0.5),
        ("<reasoning>\nthink\n</reasoning>\n\n<answer>\n42\n</answer>\n", 0.0, 0.5),
        (" " + GOOD, 0.0, 0.0),  # must start with the reasoning tag
        ("<answer>\n42\n</answer>\n", 0.0, 0.0),
        ("<reasoning>\na\nb\n</reasoning>\n<answer>\nx\ny\n</answer>\n", 0.5, 0.5),  # multi-line
        ("", 0.0, 0.0),
    ],
)
def test_strict_and_soft_format(completion, strict, soft):
    assert d1_strict_format([""], [completion]) == [strict]
    assert d1_soft_format([""], [completion]) == [soft]


def test_tag_count_is_half_for_the_exact_template():
    assert tag_count(GOOD) == 0.5


def test_tag_count_charges_trailing_text_twice_as_d1_does():
    # 3 characters after "\n</answer>\n": 0.003 on the first charge, 4 - 1 = 3 on the second
    assert tag_count(GOOD + "abc") == pytest.approx(0.5 - 0.006)
    assert d1_tag_count([""], [GOOD + "abc"]) == [0.125 + 0.125 + 0.125 - 0.003 + 0.125 - 0.003]


def test_tag_count_without_final_newline_charges_the_whole_text():
    text = GOOD[:-1]  # ends with "\n</answer>": the first split finds no "\n</answer>\n"
    expected = 0.125 + 0.125 + 0.125 - len(text) * 0.001 + 0.125 - (0 - 1) * 0.001
    assert tag_count(text) == expected


def test_tag_count_rewards_each_tag_only_when_written_once():
    assert tag_count("") == 0.0
    assert tag_count("<reasoning>\n") == 0.125
    assert tag_count("<reasoning>\n<reasoning>\n") == 0.0
    assert tag_count("<reasoning>\nx\n</reasoning>\n") == 0.25
    doubled = GOOD + "<answer>\n1\n</answer>\n"
    # "\n<answer>\n" and "\n</answer>" now occur twice: only the reasoning tags count
    assert tag_count(doubled) == 0.25


def test_format_rewards_accept_and_ignore_extra_columns():
    out = d1_tag_count(["p", "p"], [GOOD, ""], answer=["1", "2"], completion_ids=[[1], [2]])
    assert out == [0.5, 0.0]
