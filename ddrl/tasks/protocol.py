"""The d1 zero-shot protocol (docs/tasks.md): its system prompt and the parsers every task shares.

"The answer" of a completion is the text inside its last ``<answer>…</answer>`` pair; a
completion without a complete pair has no answer. (d1's GSM8K reward split on the last
``<answer>`` and took everything after it when the closing tag was missing; ddrl takes
the last pair (docs/tasks.md), so a truncated ``<answer>\\n42`` counts as no answer here.)

Also here, because tasks score and rewards reward with the same rules and rewards must not
import tasks: the last ``\\boxed{…}`` (nested braces), numeric normalisation for GSM8K, d1's
Sudoku cell metric, and MATH answer equivalence through math-verify.
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction

logger = logging.getLogger(__name__)

# d1's format block (docs/tasks.md); every d1-variant prompt starts with it.
D1_SYSTEM_PROMPT = (
    "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n"
)

OPEN_ANSWER, CLOSE_ANSWER = "<answer>", "</answer>"


def d1_prompt(question: str) -> str:
    """The prompt text of a d1-variant example: system prompt, blank line, question."""
    return f"{D1_SYSTEM_PROMPT}\n{question}"


# ------------------------------------------------------------------------------------------------
# tags and boxes


def extract_answer(completion: str) -> str | None:
    """Stripped text inside the last ``<answer>…</answer>`` pair, or None without a pair.

    The pair is the last closing tag and the nearest opening tag before it, so
    ``<answer>a<answer>b</answer>`` answers ``b``.
    """
    close = completion.rfind(CLOSE_ANSWER)
    if close < 0:
        return None
    start = completion.rfind(OPEN_ANSWER, 0, close)
    if start < 0:
        return None
    return completion[start + len(OPEN_ANSWER) : close].strip()


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` (or ``\\fbox{…}``) with nested braces matched.

    ``\\boxed 5`` (argument without braces) gives ``5``. An unclosed last box gives None, as in
    the MATH reference parser: a truncated answer is no answer.
    """
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z])", text)]
    if not starts:
        return None
    i = starts[-1].end()
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        token = re.match(r"[^\s$]+", text[i:])
        return token.group(0) if token else None
    return _braced(text, i)


def _braced(text: str, open_index: int) -> str | None:
    """Content of the group opening at ``text[open_index] == "{"``; escapes like ``\\{`` skip."""
    depth, i = 0, open_index
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : i].strip()
        i += 1
    return None


# ------------------------------------------------------------------------------------------------
# numbers (GSM8K)

_UNICODE_OPERATORS = {"\u2212": "-", "\u2013": "-", "\u00d7": "*", "\u00f7": "/", "\u00b7": "*"}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def ascii_operators(text: str) -> str:
    """Unicode minus/dash, ×, ÷ and · replaced by ``- * / *`` (models write them often)."""
    for bad, good in _UNICODE_OPERATORS.items():
        text = text.replace(bad, good)
    return text


def parse_number(text: str | None) -> Fraction | None:
    """The number an answer states, as an exact fraction, or None.

    Takes the last ``\\boxed`` if any; drops ``$``, thousands commas, spaces, ``%`` and LaTeX
    spacing; reads ``\\frac{a}{b}`` and ``a/b``; when the text is not a bare number (units,
    ``x = 5``, a sentence) uses its last number, as d1's evaluation does.
    """
    if text is None:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        text = boxed
    text = ascii_operators(text)
    text = re.sub(r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}", r"\1/\2", text)
    text = re.sub(r"\\[,!;: ]|\\\$|\$|\\%|%", "", text)
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    text = re.sub(r"^-\s+(?=\d)", "-", text.strip())
    cleaned = text.rstrip(".").strip()
    if _NUMBER.fullmatch(cleaned):
        return _to_fraction(cleaned)
    found = _NUMBER.findall(text)
    return _to_fraction(found[-1]) if found else None


def _to_fraction(token: str) -> Fraction | None:
    try:
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


def same_number(prediction: str | None, gold: str) -> bool:
    """True when both texts state the same number (``"$1,000.00"`` equals ``"1000"``)."""
    a, b = parse_number(prediction), parse_number(gold)
    return a is not None and b is not None and a == b


# ------------------------------------------------------------------------------------------------
# Sudoku (d1's cell metric)

SUDOKU_CELLS = 16


def answer_grid(answer: str | None) -> str | None:
    """The digits of an answer, padded with ``0`` or cut to 16 (d1); None without any digit."""
    if answer is None:
        return None
    digits = "".join(c for c in answer if c in "0123456789")
    if not digits:
        return None
    return digits[:SUDOKU_CELLS].ljust(SUDOKU_CELLS, "0")


def cell_accuracy(grid: str | None, puzzle: str, solution: str) -> float:
    """Fraction of the puzzle's empty cells (``0``) whose digit in ``grid`` matches ``solution``."""
    empty = [i for i in range(SUDOKU_CELLS) if puzzle[i] == "0"]
    if grid is None or not empty:
        return 0.0
    return sum(grid[i] == solution[i] for i in empty) / len(empty)


# ------------------------------------------------------------------------------------------------
# MATH answers

_LATEX_NOISE = (r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\displaystyle", "$")


def normalize_latex(text: str) -> str:
    """A string form of a LaTeX answer for exact comparison (the fallback of ``math_equivalent``).

    Removes spacing, ``\\left``/``\\right``, ``$``, degree marks, ``\\text{…}`` wrappers, a leading
    ``x =``, a trailing period; maps ``dfrac``/``tfrac`` to ``frac`` and ``\\frac12`` to
    ``\\frac{1}{2}``.
    """
    s = ascii_operators(text.strip())
    for noise in _LATEX_NOISE:
        s = s.replace(noise, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\^\{?\\circ\}?", "", s)
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"^[A-Za-z]\s*=", "", s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    return s


def _same_rational(a: str, b: str) -> bool:
    x, y = parse_number(a), parse_number(b)
    exact = re.compile(r"-?\d+(?:\.\d+)?|-?\d+/\d+|-?\\frac\{\d+\}\{\d+\}")
    return x is not None and x == y and bool(exact.fullmatch(a)) and bool(exact.fullmatch(b))


def math_equivalent(prediction: str | None, gold: str, timeout_seconds: int = 5) -> bool:
    """Whether a predicted MATH answer equals the gold one (both without ``\\boxed``).

    First a cheap exact check (normalised strings, or two plain rational numbers). Then
    math-verify's symbolic check — but only on the main thread: math-verify bounds its time
    with ``SIGALRM``, which Python allows only there, and an unbounded sympy call can hang.
    Off the main thread ddrl keeps the string result (documented choice: deterministic and
    never blocking; a process pool would add seconds of start-up to every worker) and logs
    a warning once.
    """
    if prediction is None or not prediction.strip():
        return False
    a, b = normalize_latex(prediction), normalize_latex(gold)
    if a == b or _same_rational(a, b):
        return True
    if threading.current_thread() is not threading.main_thread():
        _warn_off_main_thread()
        return False
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a dependency
        logger.warning("math-verify is not installed; MATH answers are compared as strings")
        return False
    gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout_seconds)
    pred_parsed = parse(f"\\boxed{{{prediction}}}", parsing_timeout=timeout_seconds)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_seconds))


_warned_threads = False


def _warn_off_main_thread() -> None:
    global _warned_threads
    if not _warned_threads:
        _warned_threads = True
        logger.warning(
            "math_equivalent called off the main thread: math-verify needs SIGALRM for its time "
            "bound, so MATH answers are compared by normalised strings here"
        )
