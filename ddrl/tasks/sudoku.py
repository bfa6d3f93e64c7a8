"""`sudoku`: 4×4 puzzles as 16-digit strings, 0 for an empty cell (docs/tasks.md).

Scoring follows d1: the digits of the answer, padded with ``0`` or cut to 16, and the fraction
of the puzzle's empty cells whose digit matches the stored solution. About a quarter of the
commonly used 4×4 test puzzles have several solutions, where that metric marks another valid
grid wrong, so ``score`` also reports ``valid_accuracy``: 1.0 when the answer is a complete valid
grid (rows, columns and 2×2 boxes each hold 1–4) that keeps every given digit.

Variants: ``d1`` (system prompt, rules, ``<answer>`` tags; reward ``sudoku_correctness``) and
``toy`` for the ``tiny`` model (prompt ``<puzzle>=``, completion the 16 digits; reward
``sudoku_toy_correctness``). Generated puzzles have exactly one solution unless
``unique_solution`` is off; CSV files with ``Puzzle``/``Solution`` columns (d1's) load too.
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from ddrl.config import ConfigError
from ddrl.tasks.base import Example, Task, TaskConfig
from ddrl.tasks.data import field, generate_split, read_split
from ddrl.tasks.protocol import answer_grid, cell_accuracy, d1_prompt, extract_answer

SIZE, CELLS = 4, 16
DIGITS = "1234"
# The cells that share a row, a column or a 2×2 box with each cell.
_UNITS = [
    [[r * SIZE + c for c in range(SIZE)] for r in range(SIZE)],
    [[r * SIZE + c for r in range(SIZE)] for c in range(SIZE)],
    [[(br + r) * SIZE + bc + c for r in range(2) for c in range(2)] for br in (0, 2) for bc in (0, 2)],
]
PEERS = [
    sorted({p for kind in _UNITS for unit in kind if i in unit for p in unit} - {i}) for i in range(CELLS)
]

D1_INSTRUCTIONS = (
    "Solve this 4x4 Sudoku. The puzzle is a 16-character string read row by row, left to right, "
    "top to bottom; 0 marks an empty cell. Fill every empty cell with a digit from 1 to 4 so that "
    "each row, each column and each 2x2 box holds 1, 2, 3 and 4 exactly once. Inside the answer "
    "tags write only the solved grid as 16 digits, without spaces or separators."
)


class SudokuConfig(TaskConfig):
    """Options of the `sudoku` task."""

    model_config = ConfigDict(extra="forbid")

    name: str = "sudoku"
    variant: Literal["d1", "toy"] = Field("d1", description="d1 protocol, or bare prompts for tiny")
    num_generated_train: int = Field(2000, ge=1, description="generated train puzzles")
    num_generated_test: int = Field(256, ge=1, description="generated test puzzles")
    min_empty: int = Field(6, ge=1, le=12, description="fewest empty cells of a generated puzzle")
    max_empty: int = Field(10, ge=1, le=12, description="most empty cells of a generated puzzle")
    unique_solution: bool = Field(True, description="generate only puzzles with one solution")
    data_path: str | None = Field(None, description="CSV/JSONL/parquet file or directory; null = generate")

    @model_validator(mode="after")
    def _check_empty_range(self) -> SudokuConfig:
        if self.min_empty > self.max_empty:
            raise ValueError(f"min_empty={self.min_empty} is larger than max_empty={self.max_empty}")
        return self


class SudokuTask(Task):
    """4×4 Sudoku, generated from ``seed`` or loaded from ``data_path``."""

    Config = SudokuConfig
    config: SudokuConfig
    default_rewards = ("sudoku_correctness",)

    def __init__(self, config: SudokuConfig) -> None:
        super().__init__(config)
        if config.variant == "toy":
            self.default_rewards = ("sudoku_toy_correctness",)  # type: ignore[misc]

    def load(self, split: str) -> list[Example]:
        cfg = self.config
        if cfg.data_path is not None:
            pairs = [_from_record(r) for r in read_split(cfg.data_path, split, what="sudoku")]
        else:
            count = cfg.num_generated_train if split == "train" else cfg.num_generated_test
            pairs = generate_split(
                lambda rng: draw_puzzle(rng, cfg.min_empty, cfg.max_empty, cfg.unique_solution),
                namespace=f"sudoku-{cfg.min_empty}-{cfg.max_empty}-{int(cfg.unique_solution)}",
                split=split,
                seed=cfg.seed,
                count=count,
            )
        return [
            Example(
                id=f"sudoku-{split}-{i}",
                question=puzzle if cfg.variant == "toy" else f"Sudoku puzzle: {puzzle}",
                answer=solution,
                columns={"puzzle": puzzle, "solution": solution},
            )
            for i, (puzzle, solution) in enumerate(pairs)
        ]

    def format_prompt(self, example: Example) -> str:
        if self.config.variant == "toy":
            return f"{example.question}="
        return d1_prompt(f"{D1_INSTRUCTIONS}\n{example.question}")

    @classmethod
    def eval_lengths(cls, config: SudokuConfig) -> list[int] | None:  # type: ignore[override]
        return [16, 24] if config.variant == "toy" else None

    def reference_completion(self, example: Example) -> str | None:
        """The solution grid: bare for `toy`, in the d1 tag format otherwise."""
        solution = example.columns["solution"]
        if self.config.variant == "toy":
            return solution
        return f"<reasoning>\nFill every row, column and box with 1-4.\n</reasoning>\n<answer>\n{solution}\n</answer>\n"

    def corrupt_completion(self, example: Example, rng: random.Random) -> str | None:
        """The solution with one to three empty cells set to another digit."""
        puzzle, grid = example.columns["puzzle"], list(example.columns["solution"])
        empty = [i for i, c in enumerate(puzzle) if c == "0"]
        if not empty:
            return None
        for i in rng.sample(empty, min(len(empty), rng.randint(1, 3))):
            grid[i] = rng.choice([d for d in "1234" if d != grid[i]])
        wrong = "".join(grid)
        if self.config.variant == "toy":
            return wrong
        return f"<reasoning>\nFill every row, column and box with 1-4.\n</reasoning>\n<answer>\n{wrong}\n</answer>\n"

    def score(self, example: Example, completion: str) -> dict[str, float]:
        """``accuracy`` (d1's cell fraction), ``valid_accuracy`` and ``solved`` (all cells right)."""
        if self.config.variant == "toy":
            answer: str | None = completion
        else:
            answer = extract_answer(completion)
        puzzle, solution = example.columns["puzzle"], example.columns["solution"]
        grid = answer_grid(answer)
        fraction = cell_accuracy(grid, puzzle, solution)
        return {
            "accuracy": fraction,
            "valid_accuracy": float(grid is not None and is_valid_solution(grid, puzzle)),
            "solved": float(fraction == 1.0),
        }


# ------------------------------------------------------------------------------------------------
# validity (docs/tasks.md: the extra metric)


def is_valid_solution(grid: str, puzzle: str) -> bool:
    """A complete valid 4×4 grid that keeps every given digit of ``puzzle``."""
    if len(grid) != CELLS or any(c not in DIGITS for c in grid):
        return False
    if any(p != "0" and p != g for p, g in zip(puzzle, grid)):
        return False
    return all(sorted(grid[i] for i in unit) == list(DIGITS) for kind in _UNITS for unit in kind)


# ------------------------------------------------------------------------------------------------
# exact solver and generator


def count_solutions(puzzle: str, limit: int = 2) -> int:
    """Number of completions of ``puzzle`` (a 16-character string, 0 = empty), stopping at
    ``limit``: ``limit=2`` tells "none / unique / several" with the least search."""
    cells = list(puzzle)
    for i, c in enumerate(cells):
        if c != "0" and any(cells[p] == c for p in PEERS[i]):
            return 0

    def search() -> int:
        best, best_options = -1, DIGITS
        for i in range(CELLS):
            if cells[i] == "0":
                options = [d for d in DIGITS if all(cells[p] != d for p in PEERS[i])]
                if len(options) < len(best_options) or best < 0:
                    best, best_options = i, options
        if best < 0:
            return 1
        total = 0
        for d in best_options:
            cells[best] = d
            total += search()
            if total >= limit:
                break
        cells[best] = "0"
        return total

    return min(search(), limit)


@lru_cache(maxsize=1)
def all_grids() -> tuple[str, ...]:
    """The 288 complete valid 4×4 grids, in lexicographic order."""
    grids: list[str] = []

    def fill(cells: list[str], i: int) -> None:
        if i == CELLS:
            grids.append("".join(cells))
            return
        for d in DIGITS:
            if all(cells[p] != d for p in PEERS[i]):
                cells[i] = d
                fill(cells, i + 1)
        cells[i] = "0"

    fill(["0"] * CELLS, 0)
    return tuple(grids)


def draw_puzzle(
    rng: random.Random, min_empty: int, max_empty: int, unique: bool
) -> tuple[str, str, tuple[str, str]] | None:
    """``(group, key, (puzzle, solution))``, group and key both the puzzle string.

    A uniformly drawn grid with cells emptied in random order, keeping a removal only while the
    solution stays unique (when ``unique``); None when the drawn number of empty cells cannot
    be reached.
    """
    solution = rng.choice(all_grids())
    want = rng.randint(min_empty, max_empty)
    cells = list(solution)
    order = list(range(CELLS))
    rng.shuffle(order)
    emptied = 0
    for i in order:
        if emptied == want:
            break
        cells[i] = "0"
        if unique and count_solutions("".join(cells)) != 1:
            cells[i] = solution[i]
        else:
            emptied += 1
    if emptied < want:
        return None
    puzzle = "".join(cells)
    return puzzle, puzzle, (puzzle, solution)


def _from_record(record: dict[str, Any]) -> tuple[str, str]:
    """``(puzzle, solution)`` of a file record, columns ``Puzzle``/``Solution`` in any case.

    Digit strings shorter than 16 get their leading zeros back (a CSV written through an integer
    column loses them)."""
    puzzle = str(field(record, "puzzle", "quizzes", what="sudoku")).strip()
    solution = str(field(record, "solution", "solutions", what="sudoku")).strip()
    puzzle, solution = puzzle.zfill(CELLS), solution.zfill(CELLS)
    if len(puzzle) != CELLS or any(c not in "01234" for c in puzzle):
        raise ConfigError(f"sudoku: puzzle {puzzle!r} is not 16 digits 0-4")
    if not is_valid_solution(solution, puzzle):
        raise ConfigError(f"sudoku: solution {solution!r} does not solve puzzle {puzzle!r}")
    return puzzle, solution
