"""The d1 zero-shot protocol (docs/tasks.md): its system prompt and the parsers every task shares.

"The answer" of a completion is the text inside its last ``<answer>…</answer>`` pair; a
completion without a complete pair has no answer. (d1's GSM8K reward split on the last
``<answer>`` and took everything after it when the closing tag was missing; ddrl takes
the last pair (docs/tasks.md), so a truncated ``<answer>\\n42`` counts as no answer here.)

Also here, because tasks score and rewards reward with the same rules and rewards must not
import tasks: the last ``\\boxed{…}`` (nested braces), numeric normalisation for GSM8K, d1's
Sudoku cell metric and MATH answer equivalence through math-verify. Digits are ASCII ``0``-``9``
everywhere: a Unicode decimal digit (``٣``, ``３``) is no digit to any checker, so a training
reward and the evaluation score of one completion agree on it (``has_unicode_digit``).
"""

from __future__ import annotations

import logging
import math
import re
import signal
import threading
import time
from fractions import Fraction
from typing import Any

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
# digits


def has_unicode_digit(text: str) -> bool:
    """Whether ``text`` holds a decimal digit other than ASCII ``0``-``9`` (Arabic-Indic ``٣``,
    fullwidth ``３``, …: what ``int()`` or a ``\\d`` regex would read as a digit).

    Every checker reads only ASCII digits (docs/tasks.md): such a character is no digit in a
    reward nor in an evaluation score, so the two agree on it.
    """
    return not text.isascii() and any(not c.isascii() and c.isdecimal() for c in text)


# ------------------------------------------------------------------------------------------------
# numbers (GSM8K)

_UNICODE_OPERATORS = {"\u2212": "-", "\u2013": "-", "\u00d7": "*", "\u00f7": "/", "\u00b7": "*"}
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:/[0-9]+)?|-?\.[0-9]+")  # ASCII digits only


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
    text = re.sub(r"\\[dt]?frac\{(-?[0-9]+)\}\{([0-9]+)\}", r"\1/\2", text)
    text = re.sub(r"\\[,!;: ]|\\\$|\$|\\%|%", "", text)
    text = re.sub(r"(?<=[0-9]),(?=[0-9]{3}(?![0-9]))", "", text)
    text = re.sub(r"^-\s+(?=[0-9])", "-", text.strip())
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
    s = re.sub(r"\\frac([0-9])([0-9])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"^[A-Za-z]\s*=", "", s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    return s


def _same_rational(a: str, b: str) -> bool:
    x, y = parse_number(a), parse_number(b)
    exact = re.compile(r"-?[0-9]+(?:\.[0-9]+)?|-?[0-9]+/[0-9]+|-?\\frac\{[0-9]+\}\{[0-9]+\}")
    return x is not None and x == y and bool(exact.fullmatch(a)) and bool(exact.fullmatch(b))


# Bounds of the symbolic check (docs/tasks.md, "Bounded checkers"). Past them an answer is judged
# by the normalised-string comparison alone.
MAX_MATH_ANSWER_CHARS = 1_000  # longest answer math-verify parses (MATH500 gold answers: < 200)
MAX_EXPONENT_DIGITS = 6  # longest integer literal in an exponent (9^{999999} has 3.2M bits)
MAX_NUMBER_BITS = 1 << 17  # largest exact number a parsed expression may denote (~40,000 digits)
DEFAULT_VERIFY_TIMEOUT = 5  # seconds; Math500Config.verify_timeout's default


def math_equivalent(prediction: str | None, gold: str, timeout_seconds: float = DEFAULT_VERIFY_TIMEOUT) -> bool:
    """Whether a predicted MATH answer equals the gold one (both without ``\\boxed``).

    First a cheap exact check (normalised strings, or two plain rational numbers). Then
    math-verify's symbolic check, bounded in two ways (docs/tasks.md): answers that would make
    sympy build huge numbers in C code, which no signal interrupts, are refused before any
    evaluation (``symbolic_hazard``: over ``MAX_MATH_ANSWER_CHARS`` characters, power towers
    such as ``9^{9^{9}}``, exponents over ``MAX_EXPONENT_DIGITS`` digits, parsed expressions
    denoting more than ``MAX_NUMBER_BITS`` bits); everything else runs under one deadline of
    ``timeout_seconds`` for parsing and comparing together (``SIGALRM`` through ``setitimer``,
    math-verify's own per-step alarms off), and a comparison that reaches it is not equivalent.

    ``SIGALRM`` exists only on the main thread: off it ddrl keeps the string result
    (documented choice: deterministic and never blocking; a process pool would add seconds of
    start-up to every worker) and logs a warning once.
    """
    if prediction is None or not prediction.strip():
        return False
    a, b = normalize_latex(prediction), normalize_latex(gold)
    if a == b or _same_rational(a, b):
        return True
    if threading.current_thread() is not threading.main_thread():
        _warn_off_main_thread()
        return False
    if has_unicode_digit(prediction) or has_unicode_digit(gold):
        return False  # math-verify would read them as digits; no other checker does
    if symbolic_hazard(prediction) or symbolic_hazard(gold):
        return False
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a dependency
        logger.warning("math-verify is not installed; MATH answers are compared as strings")
        return False
    _quiet_math_verify()

    def compare() -> bool:
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
        pred_parsed = parse(f"\\boxed{{{prediction}}}", parsing_timeout=None)
        if not gold_parsed or not pred_parsed:
            return False
        if any(_too_many_bits(x) for x in (*gold_parsed, *pred_parsed)):
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))

    return bool(run_with_deadline(compare, timeout_seconds, default=False))


_POWER = re.compile(r"\^\s*")
_COMMAND = re.compile(r"\\[A-Za-z]+")


def symbolic_hazard(answer: str) -> str | None:
    """Why math-verify must not see ``answer`` (None: it may): too long, a power tower, or an
    exponent literal over ``MAX_EXPONENT_DIGITS`` digits. Parsing alone evaluates some of these
    (``\\binom{9^{9^{9}}}{2}`` computes 9^387420489 inside one C call). Linear in the length."""
    if len(answer) > MAX_MATH_ANSWER_CHARS:
        return f"longer than {MAX_MATH_ANSWER_CHARS} characters"
    for m in _POWER.finditer(answer):
        i = m.end()
        if i >= len(answer):
            break
        if answer[i] == "{":
            exponent = _braced(answer, i)
            if exponent is None:
                continue
        else:
            digits = re.match(r"[0-9]+", answer[i:])
            exponent = digits.group(0) if digits else answer[i]
        if "^" in exponent and not re.search("[A-Za-z]", _COMMAND.sub("", exponent)):
            return "a power tower"
        if any(len(x) > MAX_EXPONENT_DIGITS for x in re.findall(r"[0-9]+", exponent)):
            return f"an exponent over {MAX_EXPONENT_DIGITS} digits"
    return None


_FACTORIAL_LIKE = ("factorial", "factorial2", "gamma", "subfactorial", "RisingFactorial", "FallingFactorial")
_EXPONENTIAL_LIKE = ("binomial", "fibonacci", "lucas", "catalan", "bell", "primorial")


def _too_many_bits(expr: Any) -> bool:
    """Whether a parsed answer may denote an exact number over ``MAX_NUMBER_BITS`` bits."""
    try:
        return _bits(expr) > MAX_NUMBER_BITS
    except RecursionError:
        return True


def _bits(expr: Any) -> float:
    """An upper bound of the bits of the exact numbers ``expr`` denotes (a symbol counts 1)."""
    import sympy

    if isinstance(expr, str):
        return 0.0
    if isinstance(expr, sympy.Integer):
        return float(max(1, int(expr).bit_length()))
    if isinstance(expr, sympy.Rational):
        return float(int(expr.p).bit_length() + int(expr.q).bit_length())
    if isinstance(expr, sympy.Float):
        return 64.0
    args = getattr(expr, "args", ())
    if not args:
        return 1.0
    if isinstance(expr, sympy.Pow):
        base, exponent = _bits(args[0]), _bits(args[1])
        return _pow2(exponent) * max(base, 1.0)  # |e| < 2^bits(e): |b^e| has < |e| bits(b) bits
    name = type(expr).__name__
    inner = sum(_bits(a) for a in args)
    if name in _FACTORIAL_LIKE:
        value = _pow2(inner)
        return value * max(math.log2(value + 1.0), 1.0) if math.isfinite(value) else math.inf
    if name in _EXPONENTIAL_LIKE:
        return 2.0 * _pow2(inner)
    return max(inner, 1.0)


def _pow2(x: float) -> float:
    return math.inf if x > 1000 else 2.0**x


class _DeadlineReached(BaseException):
    """Raised by ``run_with_deadline``'s alarm; a BaseException so that library code that
    catches ``Exception`` (math-verify, sympy) lets it through."""


def run_with_deadline(fn: Any, seconds: float, default: Any) -> Any:
    """``fn()``, or ``default`` once ``seconds`` (wall clock) have passed (also when ``fn``
    caught the interruption and returned later).

    Main thread only (``SIGALRM``). The alarm repeats every 50 ms until ``fn`` has been left, in
    case code swallows the first interruption; a previously armed alarm and handler are restored
    (with its remaining time less the time spent here). Work in one C call (a huge integer power)
    is interrupted only when the call returns: keep such work out (``symbolic_hazard``).
    """
    state = {"armed": True, "fired": False}

    def on_alarm(signum: int, frame: Any) -> None:
        if state["armed"]:
            state["fired"] = True
            raise _DeadlineReached()

    start = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_delay, previous_interval = 0.0, 0.0
    try:
        try:
            previous_delay, previous_interval = signal.setitimer(
                signal.ITIMER_REAL, max(float(seconds), 1e-3), 0.05
            )
            result = fn()
            return default if state["fired"] else result  # the deadline passed, yet fn went on
        finally:
            state["armed"] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_handler)
            if previous_delay > 0:
                remaining = previous_delay - (time.monotonic() - start)
                signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-3), previous_interval)
    except _DeadlineReached:
        return default


class _DropTimeoutDisabled(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


_quieted = False


def _quiet_math_verify() -> None:
    """Drop math-verify's "timeout is disabled" warning: ``run_with_deadline`` bounds it instead."""
    global _quieted
    if not _quieted:
        _quieted = True
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropTimeoutDisabled())


_warned_threads = False


def _warn_off_main_thread() -> None:
    global _warned_threads
    if not _warned_threads:
        _warned_threads = True
        logger.warning(
            "math_equivalent called off the main thread: math-verify needs SIGALRM for its time "
            "bound, so MATH answers are compared by normalised strings here"
        )
