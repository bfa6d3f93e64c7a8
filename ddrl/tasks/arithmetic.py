"""Safe exact arithmetic for Countdown (docs/tasks.md): a checker that never calls ``eval``.

The widely used checker matches the answer against ``[\\d+\\-*/().\\s]+`` and then ``eval``s it;
``9**9**9**9`` passes that pattern and never finishes. Here an expression is accepted only if it
is short, made of integers, the four binary operators and parentheses; it is parsed with
``ast`` and evaluated on ``fractions.Fraction`` (exact, so ``6/4*2`` is exactly 3). Powers,
floor division, unary signs, decimals and names are rejected, which bounds both the size of
every intermediate value and the time spent.

Also here: turning a model's answer into such an expression (``\\boxed``, ``×``, ``\\div``,
``= 15``), and the exhaustive solver the generator uses to pick reachable targets.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from math import gcd
from typing import Iterable, Iterator, Sequence

from ddrl.tasks.protocol import ascii_operators, last_boxed

MAX_CHARS = 200  # longest expression looked at
MAX_ANSWER_CHARS = 1_000  # longest answer rewritten into an expression (\\frac, \\times, ...)
MAX_NUMBERS = 16  # most integer literals in one expression
MAX_DIGITS = 12  # longest integer literal
TOLERANCE = Fraction(1, 100_000)  # d1's |value - target| < 1e-5

_ALLOWED_CHARS = re.compile(r"[0-9+\-*/()\s]+")
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


class ExpressionError(ValueError):
    """An answer that is not an allowed arithmetic expression, or that cannot be evaluated."""


@dataclass(frozen=True)
class Evaluation:
    """The exact value of an expression and the integers it uses, in reading order."""

    value: Fraction
    numbers: tuple[int, ...]


def evaluate(expression: str) -> Evaluation:
    """Evaluate ``+ - * /``, parentheses and non-negative integers exactly.

    Raises ``ExpressionError`` for anything else: other characters, ``**`` or ``//``, unary
    signs, more than ``MAX_NUMBERS`` literals or literals over ``MAX_DIGITS`` digits, syntax
    errors, division by zero. Size limits are checked before parsing, so the cost is bounded
    by ``MAX_CHARS`` whatever the input.
    """
    text = expression.strip()
    if not text:
        raise ExpressionError("empty expression")
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"expression longer than {MAX_CHARS} characters")
    if not _ALLOWED_CHARS.fullmatch(text):
        raise ExpressionError("only integers, + - * / and parentheses are allowed")
    if "**" in text or "//" in text:
        raise ExpressionError("powers and floor division are not allowed")
    literals = re.findall(r"\d+", text)
    if len(literals) > MAX_NUMBERS or any(len(x) > MAX_DIGITS for x in literals):
        raise ExpressionError(f"at most {MAX_NUMBERS} integers of at most {MAX_DIGITS} digits")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise ExpressionError(f"not an expression: {err}") from None
    numbers: list[int] = []
    value = _evaluate_node(tree.body, numbers)
    return Evaluation(value, tuple(numbers))


def _evaluate_node(node: ast.AST, numbers: list[int]) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        numbers.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left = _evaluate_node(node.left, numbers)
        right = _evaluate_node(node.right, numbers)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise ExpressionError("division by zero")
        return left / right
    if isinstance(node, ast.UnaryOp):
        raise ExpressionError("unary signs are not allowed; combine the given numbers")
    raise ExpressionError(f"{type(node).__name__} is not allowed")


def try_evaluate(expression: str) -> Evaluation | None:
    """``evaluate`` returning None instead of raising."""
    try:
        return evaluate(expression)
    except ExpressionError:
        return None


def same_multiset(used: Iterable[int], given: Iterable[int]) -> bool:
    """Every given number used exactly once and nothing else (d1's rule)."""
    return Counter(int(x) for x in used) == Counter(int(x) for x in given)


def solves(expression: str, numbers: Sequence[int], target: float | int | Fraction) -> bool:
    """True when ``expression`` uses exactly ``numbers`` and evaluates to ``target`` ± 1e-5."""
    result = try_evaluate(expression)
    if result is None or not same_multiset(result.numbers, numbers):
        return False
    return abs(result.value - Fraction(target)) < TOLERANCE


# ------------------------------------------------------------------------------------------------
# from a model's answer to an expression


_FRAC = re.compile(r"\\[dt]?frac\{")


def _frac_to_division(text: str) -> str:
    """``\\frac{a}{b}`` (also ``dfrac``/``tfrac``) to ``(a)/(b)`` wherever both arguments are
    free of braces once their own fractions are rewritten (what repeating
    ``re.sub(r"\\\\[dt]?frac\\{([^{}]*)\\}\\{([^{}]*)\\}", r"(\\1)/(\\2)")`` until nothing
    changes gives), in two linear passes: braces are paired with a stack, then the rewritten
    fractions' four markers are replaced. The repeated substitution took time quadratic in the
    nesting depth (5 s on 80,000 characters of nested fractions)."""
    if "frac" not in text:
        return text
    frac_at = {m.end() - 1: m.start() for m in _FRAC.finditer(text)}  # "{" index -> "\\" index
    # stack entries: [open index, kind, clean]; kind "num" (a fraction's first argument),
    # "den" (its second), "plain" (any other group); clean: every group inside it is a rewritten
    # fraction's argument, so the group holds no braces once rewritten
    stack: list[list] = []
    pending: dict[int, tuple[int, int, bool]] = {}  # "{" of a denominator -> (start, "}" of num, clean)
    rewrite: dict[int, tuple[int, str]] = {}  # index -> (characters replaced, replacement)
    for i, c in enumerate(text):
        if c == "{":
            if i in frac_at:
                stack.append([i, "num", True])
            elif i in pending:
                stack.append([i, "den", True])
            else:
                stack.append([i, "plain", True])
        elif c == "}":
            if not stack:
                continue
            open_index, kind, clean = stack.pop()
            parent = stack[-1] if stack else None
            done = True  # whether this group's effect on its parent is settled now
            if kind == "num" and i + 1 < len(text) and text[i + 1] == "{":
                pending[i + 1] = (frac_at[open_index], i, clean)
                done = False
            elif kind == "den":
                start, num_close, num_clean = pending.pop(open_index)
                if num_clean and clean:
                    rewrite[start] = (_frac_head_length(text, start), "(")
                    rewrite[num_close] = (2, ")/(")
                    rewrite[i] = (1, ")")
                    done = False  # a rewritten fraction leaves its parent clean
            if done and parent is not None:
                parent[2] = False
    if not rewrite:
        return text
    out, i = [], 0
    while i < len(text):
        if i in rewrite:
            skip, replacement = rewrite[i]
            out.append(replacement)
            i += skip
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _frac_head_length(text: str, start: int) -> int:
    """Length of ``\\frac{`` / ``\\dfrac{`` / ``\\tfrac{`` at ``start``."""
    return len("\\frac{") if text[start + 1] == "f" else len("\\dfrac{")


def answer_expression(answer: str) -> str:
    """The expression a Countdown answer states, in the evaluator's alphabet.

    Takes the last ``\\boxed{…}`` if any; drops ``$``, ``\\(``/``\\)``, ``\\left``/``\\right``;
    maps ``×``/``\\times``/``\\cdot`` to ``*``, ``÷``/``\\div`` to ``/``, the unicode minus to
    ``-`` and ``\\frac{a}{b}`` to ``(a)/(b)``; keeps the expression side of ``expr = target``
    (or ``target = expr``); digits are ASCII ones only, as everywhere. An answer over ``MAX_ANSWER_CHARS`` characters is returned unchanged, before any work. Anything
    else is left for the evaluator to reject.
    """
    if len(answer) > MAX_ANSWER_CHARS:
        return answer  # not rewritten; longer than MAX_CHARS, so the evaluator rejects it
    boxed = last_boxed(answer)
    text = boxed if boxed is not None else answer
    text = ascii_operators(text)
    for latex, plain in (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("\\left", ""),
                         ("\\right", ""), ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""),
                         ("$", "")):
        text = text.replace(latex, plain)
    text = _frac_to_division(text).strip().rstrip(".").strip()
    sides = [s.strip() for s in text.split("=")]
    if len(sides) == 2:
        number = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
        if number.fullmatch(sides[1]):
            return sides[0]
        if number.fullmatch(sides[0]):
            return sides[1]
    return text


# ------------------------------------------------------------------------------------------------
# exhaustive solver (for generating puzzles that have a solution)

# Values are reduced (numerator, denominator > 0) pairs of ints: hashing them is far cheaper
# than hashing Fractions, and the search makes thousands per puzzle of 4 numbers.
Rational = tuple[int, int]
# How a value was made: (op, left subset, left value, right subset, right value); None = a leaf.
Origin = tuple[str, int, Rational, int, Rational] | None

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3


def _reduced(num: int, den: int) -> Rational:
    if den < 0:
        num, den = -num, -den
    g = gcd(num, den)
    return num // g, den // g


def _combine(a: Rational, b: Rational, operators: str = "+-*/") -> Iterator[tuple[str, bool, Rational]]:
    """``(op, swapped, value)`` for every way one of ``operators`` joins ``a`` and ``b``."""
    (p, q), (r, s) = a, b
    if "+" in operators:
        yield "+", False, _reduced(p * s + r * q, q * s)
    if "*" in operators:
        yield "*", False, _reduced(p * r, q * s)
    if "-" in operators:
        yield "-", False, _reduced(p * s - r * q, q * s)
        yield "-", True, _reduced(r * q - p * s, q * s)
    if "/" in operators and r != 0:
        yield "/", False, _reduced(p * s, q * r)
    if "/" in operators and p != 0:
        yield "/", True, _reduced(r * q, s * p)


@lru_cache(maxsize=4096)
def _subset_values(numbers: tuple[int, ...], operators: str = "+-*/") -> dict[int, dict[Rational, Origin]]:
    """For every subset (a bit mask) of ``numbers``, each value an expression using exactly that
    subset can take, with how it was first made.

    Dynamic programming over subsets: the root operator of any expression splits its numbers in
    two, so a subset's values are the combinations of its two parts' values.
    """
    table: dict[int, dict[Rational, Origin]] = {}
    for i, x in enumerate(numbers):
        table.setdefault(1 << i, {(x, 1): None})
    for mask in range(1, 1 << len(numbers)):  # a proper subset is a smaller number
        if mask in table:
            continue
        values: dict[Rational, Origin] = {}
        part = (mask - 1) & mask
        while part:
            other = mask ^ part
            if part < other:  # each unordered split once
                for va in table[part]:
                    for vb in table[other]:
                        for op, swapped, v in _combine(va, vb, operators):
                            if v not in values:
                                if swapped:
                                    values[v] = (op, other, vb, part, va)
                                else:
                                    values[v] = (op, part, va, other, vb)
            part = (part - 1) & mask
        table[mask] = values
    return table


def reachable_integers(numbers: Sequence[int], low: int, high: int, operators: str = "+-*/") -> list[int]:
    """The integers in ``[low, high]`` that some expression using each number once equals."""
    full = _subset_values(tuple(sorted(numbers)), operators)[(1 << len(numbers)) - 1]
    return sorted(n for n, d in full if d == 1 and low <= n <= high)


def solve(numbers: Sequence[int], target: int | Fraction, operators: str = "+-*/") -> str | None:
    """One expression using each of ``numbers`` once (and only ``operators``) that equals
    ``target``, or None.

    Exhaustive, so meant for 3–4 numbers; the expression has only the parentheses it needs.
    """
    key = tuple(sorted(int(x) for x in numbers))
    table = _subset_values(key, operators)
    value = Fraction(target)
    full = (1 << len(key)) - 1
    goal = (value.numerator, value.denominator)
    if goal not in table[full]:
        return None
    return _render(table, key, full, goal)[0]


def _render(
    table: dict[int, dict[Rational, Origin]], numbers: tuple[int, ...], mask: int, value: Rational
) -> tuple[str, int]:
    """Text and precedence of the stored expression of ``value`` over subset ``mask``."""
    origin = table[mask][value]
    if origin is None:
        return str(numbers[mask.bit_length() - 1]), _ATOM
    op, lm, lv, rm, rv = origin
    (left, lp), (right, rp) = _render(table, numbers, lm, lv), _render(table, numbers, rm, rv)
    p = _PRECEDENCE[op]
    left = f"({left})" if lp < p else left
    right = f"({right})" if rp < p or (rp == p and op in "-/") else right
    return f"{left}{op}{right}", p
