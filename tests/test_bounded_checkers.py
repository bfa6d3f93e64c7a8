"""Bounded checkers (issue 16, item 7; docs/tasks.md "Bounded checkers").

The MATH500 reward honours ``task.verify_timeout`` and refuses expressions whose evaluation no
signal can interrupt; the format rewards and the ``\\frac`` rewriting are linear and capped;
rewards and evaluation scores read non-ASCII digits alike; an Ising/Potts lattice too large for
exact metrics says which ones it skips. Timing bounds are several times below what the
previous code took (noted per test) and far above what this code takes.
"""

from __future__ import annotations

import math
import random
import re
import time
import warnings

import pytest
import torch

from ddrl.rewards.countdown import countdown_correctness
from ddrl.rewards.format import MAX_FORMAT_CHARS, d1_soft_format, d1_strict_format
from ddrl.rewards.gsm8k import gsm8k_correctness, gsm8k_integer
from ddrl.rewards.math500 import math500_correctness
from ddrl.rewards.sudoku import sudoku_correctness
from ddrl.tasks.arithmetic import _frac_to_division
from ddrl.tasks.base import Example
from ddrl.tasks.countdown import CountdownConfig, CountdownTask
from ddrl.tasks.gsm8k import GSM8KConfig, GSM8KTask
from ddrl.tasks.math500 import Math500Config, Math500Task
from ddrl.tasks.protocol import (
    has_unicode_digit,
    math_equivalent,
    run_with_deadline,
    symbolic_hazard,
)
from ddrl.tasks.sudoku import SudokuConfig, SudokuTask

TOWER = "<answer>\n\\boxed{9^{9^{9^{9}}}}\n</answer>"


def _timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def _tagged(answer: str) -> str:
    return f"<reasoning>\nwork\n</reasoning>\n<answer>\n{answer}\n</answer>\n"


# ------------------------------------------------------------------------------------------------
# MATH500: the reward is bounded by the task's verify_timeout


def test_math500_reward_honours_verify_timeout():
    """Before: the reward ignored verify_timeout (math-verify's default 5 s per comparison) and
    took 5.0-7.6 s on this 22-character answer."""
    task = Math500Task(Math500Config(verify_timeout=1))
    example = Example("m", "q", "9")
    math_equivalent("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", 1)  # imports math-verify and sympy
    columns = task.reward_columns(example)
    assert columns["verify_timeout"] == 1
    values, seconds = _timed(lambda: math500_correctness([""], [TOWER], **{k: [v] for k, v in columns.items()}))
    assert values == [0.0]
    assert seconds < 1.5
    scores, seconds = _timed(task.score, example, TOWER)
    assert scores["accuracy"] == 0.0 and seconds < 1.5


@pytest.mark.parametrize(
    "answer",
    ["9^{9^{9^{9}}}", "\\binom{9^{9^{9}}}{2}", "9^{387420489}", "10^{100000}", "(10^{5})!", "x" * 5000],
    ids=["tower", "binom-tower", "long-exponent", "huge-power", "huge-factorial", "too-long"],
)
def test_pathological_answers_are_refused_quickly(answer):
    """Huge integer powers run inside one C call that no alarm interrupts (parsing alone evaluates
    ``\\binom{9^{9^{9}}}{2}``); they are refused before sympy builds them."""
    math_equivalent("\\frac{1}{2}", "0.5", 1)
    result, seconds = _timed(math_equivalent, answer, "3", 1)
    assert result is False
    assert seconds < 0.5


def test_symbolic_hazard_reasons_and_ordinary_answers():
    assert symbolic_hazard("9^{9^{9}}") == "a power tower"
    assert symbolic_hazard("2^{1234567}") == "an exponent over 6 digits"
    assert symbolic_hazard("y" * 1001) is not None
    for ordinary in ("2^{10}", "e^{x^2}", "\\frac{\\sqrt{3}}{2}", "(x+1)^2", "10^{100}", "3^{2^{x}}"):
        assert symbolic_hazard(ordinary) is None


def test_symbolic_equivalence_still_works_under_the_deadline():
    assert math_equivalent("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", 10)
    assert math_equivalent("x^2+2x+1", "(x+1)^2", 10)
    assert math_equivalent("2^{100}", "1267650600228229401496703205376", 10)
    assert not math_equivalent("2^{100}", "1267650600228229401496703205377", 10)


def test_run_with_deadline_stops_python_work_and_restores_an_outer_alarm():
    import signal

    result, seconds = _timed(run_with_deadline, lambda: time.sleep(5), 0.3, "late")
    assert result == "late" and seconds < 1.0

    def swallows() -> str:  # catches the first interruption and carries on: still "late"
        try:
            time.sleep(5)
        except BaseException:  # noqa: BLE001 - the point of the test
            time.sleep(0.5)
        return "finished"

    assert run_with_deadline(swallows, 0.2, "late") == "late"
    assert run_with_deadline(lambda: 7, 1.0, "late") == 7
    fired: list[float] = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(time.monotonic()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.6)
        run_with_deadline(lambda: 7, 5.0, "late")
        time.sleep(1.0)
        assert len(fired) == 1  # the outer alarm still went off
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------------------------------
# format rewards and \frac rewriting: linear and capped

D1_STRICT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", re.DOTALL)
D1_SOFT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)


def _adversarial(n: int) -> tuple[str, str]:
    strict = "<reasoning>\n" + "\n</reasoning>\n<answer>\n" * (n // 24)
    soft = "<reasoning>" + "</reasoning><answer>" * (n // 20)
    return strict[:n], soft[:n]


def test_format_rewards_are_linear_below_the_cap():
    """Before: d1's lazy regexes took ~0.3 s (strict) and ~0.6 s (soft) here, 0.9 s and 1.7 s at
    100,000 characters (quadratic)."""
    strict, soft = _adversarial(MAX_FORMAT_CHARS - 10)
    d1_strict_format([""], ["warm-up"])
    (a, b), seconds = _timed(lambda: (d1_strict_format([""], [strict]), d1_soft_format([""], [soft])))
    assert a == [0.0] and b == [0.0]
    assert seconds < 0.1


def test_format_rewards_cap_long_completions_before_matching():
    strict, soft = _adversarial(100_000)
    (a, b), seconds = _timed(lambda: (d1_strict_format([""], [strict]), d1_soft_format([""], [soft])))
    assert a == [0.0] and b == [0.0] and seconds < 0.1
    ok = _tagged("42")
    assert d1_strict_format([""], [ok]) == [0.5] and d1_soft_format([""], [ok]) == [0.5]
    padded = ok + " " * MAX_FORMAT_CHARS
    assert d1_soft_format([""], [padded]) == [0.0]  # over the cap: 0 before any matching


def test_format_rewards_match_d1s_regexes():
    rng = random.Random(0)
    pieces = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", "\n", " ", "x", "\t",
              "\n</reasoning>\n<answer>\n", "\n</answer>\n"]
    matched = [0, 0]
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        if rng.random() < 0.5:
            text = "<reasoning>\n" + text
        if rng.random() < 0.4:
            text += "\n</answer>\n" + rng.choice(["", "\n", "\n\n", "x"])
        strict, soft = bool(D1_STRICT.match(text)), bool(D1_SOFT.match(text))
        assert d1_strict_format([""], [text]) == [0.5 if strict else 0.0], text
        assert d1_soft_format([""], [text]) == [0.5 if soft else 0.0], text
        matched[0] += strict
        matched[1] += soft
    assert min(matched) > 100  # both sides of each rule were exercised


def _nested_fracs(n: int) -> str:
    depth = n // 12
    return "\\frac{" * depth + "1" + "}{2}" * depth


def test_frac_rewriting_is_linear():
    """Before: one re.sub per nesting level, 5 s on these 83,000 characters."""
    text = _nested_fracs(100_000)
    out, seconds = _timed(_frac_to_division, text)
    assert out.startswith("((((") and "frac" not in out
    assert seconds < 0.5


def test_countdown_reward_caps_the_answer_before_rewriting():
    """Before: 5.3 s for this completion (the rewriting ran before the 200-character cap)."""
    completion = f"<answer>{_nested_fracs(100_000)}</answer>"
    values, seconds = _timed(countdown_correctness, [""], [completion], [[1, 2]], [3])
    assert values == [0.1] and seconds < 0.5
    assert countdown_correctness([""], ["<answer>\\frac{6}{2}+4</answer>"], [[6, 2, 4]], [7]) == [1.0]


def _old_frac_to_division(text: str) -> str:
    previous = None
    while previous != text:
        previous = text
        text = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", text)
    return text


def test_frac_rewriting_matches_the_repeated_substitution():
    rng = random.Random(1)
    pieces = ["\\frac", "\\dfrac", "\\tfrac", "{", "}", "{", "}", "1", "a", "\\", "frac", "\\frac{1}{2}", " "]
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert _frac_to_division(text) == _old_frac_to_division(text), text


# ------------------------------------------------------------------------------------------------
# non-ASCII digits: rewards and evaluation scores agree (digits are ASCII 0-9 for both)

ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def test_has_unicode_digit():
    assert has_unicode_digit("٤٢") and has_unicode_digit("x = ４")
    assert not has_unicode_digit("x² = 42")  # a superscript is not a decimal digit
    assert not has_unicode_digit("plain 12")


@pytest.mark.parametrize("digits", [ARABIC_INDIC, FULLWIDTH], ids=["arabic-indic", "fullwidth"])
def test_gsm8k_reward_and_score_agree_on_unicode_digits(digits):
    """Before: the reward compared strings (0) while the score read the number (accuracy 1)."""
    task = GSM8KTask(GSM8KConfig())
    example = Example("g", "q", "42")
    for answer in ("42", "\\boxed{42}", "$42", "42 apples"):
        completion = _tagged(answer.translate(digits))
        assert gsm8k_correctness([""], [completion], ["42"]) == [0.0]
        assert gsm8k_integer([""], [completion]) == [0.0]
        assert task.score(example, completion)["accuracy"] == 0.0
    mixed = _tagged("The total is ٤٢, so 42")  # the ASCII number still counts for the score
    assert task.score(example, mixed)["accuracy"] == 1.0


@pytest.mark.parametrize("digits", [ARABIC_INDIC, FULLWIDTH], ids=["arabic-indic", "fullwidth"])
def test_other_tasks_reward_and_score_agree_on_unicode_digits(digits):
    """Before: MATH500 accepted ``\\boxed{٣/٤}`` (``\\d`` and ``Fraction`` read any digit) while
    Countdown and Sudoku rejected Unicode digits."""
    countdown = CountdownTask(CountdownConfig())
    example = Example("c", "q", "3+4", {"numbers": [3, 4], "target": 7})
    for answer in ("3+4", "3+4 = 7", "\\boxed{3+4}"):
        completion = _tagged(answer.translate(digits))
        assert countdown_correctness([""], [completion], [[3, 4]], [7]) == [0.1]
        assert countdown.score(example, completion)["accuracy"] == 0.0
    assert countdown_correctness([""], [_tagged("3+4 = " + "7".translate(digits))], [[3, 4]], [7]) == [0.1]

    sudoku = SudokuTask(SudokuConfig())
    solution = "1234341221434321"
    puzzle = "0" + solution[1:]
    example = Example("s", "q", solution, {"puzzle": puzzle, "solution": solution})
    completion = _tagged(solution.translate(digits))
    assert sudoku_correctness([""], [completion], [puzzle], [solution]) == [0.0]
    assert sudoku.score(example, completion)["accuracy"] == 0.0

    task = Math500Task(Math500Config(verify_timeout=2))
    example = Example("m", "q", "\\frac{3}{4}")
    for answer in ("\\boxed{\\frac{3}{4}}", "\\boxed{3/4}", "\\boxed{0.75}"):
        completion = _tagged(answer.translate(digits))
        assert math500_correctness([""], [completion], ["\\frac{3}{4}"], verify_timeout=[2]) == [0.0]
        assert task.score(example, completion)["accuracy"] == 0.0
        ascii_completion = _tagged(answer)
        assert math500_correctness([""], [ascii_completion], ["\\frac{3}{4}"], verify_timeout=[2]) == [2.0]
        assert task.score(example, ascii_completion)["accuracy"] == 1.0


# ------------------------------------------------------------------------------------------------
# Ising/Potts: a lattice too large for exact metrics says which it skips


def test_large_lattice_names_the_exact_metrics_it_skips():
    """Before: the exact metrics disappeared from the results without a word."""
    from ddrl.models.tiny import TinyArchitecture, TinyPolicy
    from ddrl.tasks.ising_potts import IsingConfig, IsingTask

    torch.manual_seed(0)
    task = IsingTask(IsingConfig(L=5, eval_samples=4))
    assert set(task.skipped_exact_metrics()) == {"log_z", "log_z_error", "kl_path", "kl_hist", "tv_hist"}
    arch = TinyArchitecture(vocab_size=3, d_model=16, n_layers=1, n_heads=2, ffn_hidden=16, max_seq_len=25)
    policy = TinyPolicy.fresh(arch, None, seed=0).eval()
    with pytest.warns(UserWarning, match=r"skipping the exact metrics log_z, log_z_error, kl_path, kl_hist, tv_hist"):
        metrics = task.measure_policy(policy, None, seed=0)
    assert not set(task.skipped_exact_metrics()) & set(metrics)
    assert math.isfinite(metrics["ess"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task.measure_policy(policy, None, seed=1)  # said once per task

    small = IsingTask(IsingConfig(L=3, eval_samples=4))
    assert small.skipped_exact_metrics() == ()
    arch9 = TinyArchitecture(vocab_size=3, d_model=16, n_layers=1, n_heads=2, ffn_hidden=16, max_seq_len=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = small.measure_policy(TinyPolicy.fresh(arch9, None, seed=0).eval(), None, seed=0)
    assert "kl_hist" in metrics
