"""4×4 Sudoku: exact solver, unique-solution generator, d1's cell metric, validity metric."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ddrl.config import ConfigError
from ddrl.models.char_tokenizer import DEFAULT_CHARSET
from ddrl.rewards.sudoku import sudoku_correctness, sudoku_toy_correctness
from ddrl.tasks.base import Example
from ddrl.tasks.sudoku import SudokuConfig, SudokuTask, all_grids, count_solutions, is_valid_solution

SOLUTION = "1234341221434321"
AMBIGUOUS = "0034340200434320"  # cells 0, 1, 8, 9 may read 12/21 or 21/12
OTHER_SOLUTION = "2134341212434321"


def make(**options) -> SudokuTask:
    return SudokuTask(SudokuConfig(**{"num_generated_train": 64, "num_generated_test": 32, **options}))


def test_there_are_288_complete_4x4_grids():
    grids = all_grids()
    assert len(grids) == 288 and len(set(grids)) == 288
    assert all(is_valid_solution(g, "0" * 16) for g in grids)


def test_count_solutions_stops_at_the_limit():
    assert count_solutions(SOLUTION) == 1
    assert count_solutions(AMBIGUOUS) == 2
    assert count_solutions("0" * 16, limit=1000) == 288
    assert count_solutions("0" * 16) == 2
    assert count_solutions("1100000000000000") == 0  # a repeated given
    assert count_solutions("1200000000300040") == 0  # cell 2 can hold none of 1-4


def test_generated_puzzles_have_one_solution_and_the_requested_blanks():
    task = make(min_empty=8, max_empty=12)
    for example in task.load("train") + task.load("test"):
        puzzle, solution = example.columns["puzzle"], example.columns["solution"]
        assert count_solutions(puzzle) == 1
        assert 8 <= puzzle.count("0") <= 12
        assert is_valid_solution(solution, puzzle) and example.answer == solution


def test_generator_can_produce_ambiguous_puzzles_when_uniqueness_is_off():
    task = make(unique_solution=False, min_empty=12, max_empty=12)
    counts = {count_solutions(e.columns["puzzle"]) for e in task.load("test")}
    assert counts == {1, 2}


def test_generation_is_deterministic_and_splits_are_disjoint():
    a, b = make(seed=3), make(seed=3)
    assert a.load("test") == b.load("test")
    assert a.load("train") == b.load("train")
    train = {e.columns["puzzle"] for e in a.load("train")}
    assert not train & {e.columns["puzzle"] for e in a.load("test")}
    assert make(seed=4).load("test") != a.load("test")


def test_toy_prompt_is_the_puzzle_and_a_separator():
    task = make(variant="toy")
    example = task.load("train")[0]
    prompt = task.format_prompt(example)
    assert prompt == example.columns["puzzle"] + "="
    assert len(prompt) == 17 and len(example.answer) == 16
    assert set(prompt + example.answer) <= set(DEFAULT_CHARSET)


def test_d1_prompt_ends_with_the_puzzle():
    task = make()
    example = task.load("test")[0]
    prompt = task.format_prompt(example)
    assert prompt.startswith("Respond in the following format:")
    assert prompt.endswith(f"Sudoku puzzle: {example.columns['puzzle']}")


def test_loads_d1_csv_from_a_directory_by_split_name(fixtures):
    examples = make(data_path=str(fixtures / "sudoku")).load("test")
    assert len(examples) == 6
    assert examples[0].columns == {"puzzle": "3102020010202304", "solution": "3142423114232314"}
    assert examples[5].columns["puzzle"] == AMBIGUOUS
    with pytest.raises(ConfigError, match="no 'train' data"):
        make(data_path=str(fixtures / "sudoku")).load("train")


def test_loads_lowercase_columns_and_restores_lost_leading_zeros(fixtures, tmp_path):
    with pytest.warns(UserWarning):
        examples = make(data_path=str(fixtures / "sudoku_lowercase.csv")).load("test")
    assert [e.columns["puzzle"] for e in examples][:1] == ["3102020010202304"]
    path = tmp_path / "test.csv"
    path.write_text("Puzzle,Solution\n34340200434320,1234341221434321\n")  # written as integers
    assert make(data_path=str(tmp_path)).load("test")[0].columns["puzzle"] == AMBIGUOUS


def test_rejects_a_solution_that_does_not_solve_its_puzzle(tmp_path):
    (tmp_path / "test.csv").write_text("Puzzle,Solution\n0034340200434320,1234341221434312\n")
    with pytest.raises(ConfigError, match="does not solve"):
        make(data_path=str(tmp_path)).load("test")


def test_config_checks_the_blank_range():
    with pytest.raises(ValidationError):
        SudokuConfig(min_empty=9, max_empty=8)
    with pytest.raises(ValidationError):
        SudokuConfig(max_empty=13)
    with pytest.raises(ValidationError):
        SudokuConfig(unique=True)


# ------------------------------------------------------------------------------------------------
# rewards and scores: 6 empty cells in AMBIGUOUS, at 0, 1, 7, 8, 9, 15


@pytest.mark.parametrize(
    "completion, reward",
    [
        (f"<reasoning>\nr\n</reasoning>\n<answer>\n{SOLUTION}\n</answer>\n", 1.0),
        (f"<answer>{OTHER_SOLUTION}</answer>", 2 / 6),  # valid, but not the stored solution
        ("<answer>1234\n3412\n2143\n4321</answer>", 1.0),  # separators are dropped
        ("<answer>| 1 | 2 | 3 | 4 |\n3 4 1 2\n2143 4321</answer>", 1.0),
        (f"<answer>{SOLUTION}99</answer>", 1.0),  # cut to 16
        ("<answer>12</answer>", 2 / 6),  # padded with zeros
        (f"<answer>0000000000000000</answer> <answer>{SOLUTION}</answer>", 1.0),
        (f"<answer>{SOLUTION}</answer> <answer>0000000000000000</answer>", 0.0),
        ("<answer>no digits here</answer>", 0.0),
        ("<answer>[[1,2,3,4],[3,4,1,2],[2,1,4,3],[4,3,2,1]]</answer>", 1.0),  # brackets dropped
        ("<answer>\\boxed{1234341221434321}</answer>", 1.0),
        ("<answer>\t1 2 3 4\u00a03 4 1 2  2 1 4 3\n4 3 2 1 </answer>", 1.0),  # odd white space
        # every digit counts, as in d1: "1123423412" + zeros gets only cell 0 right
        ("<answer>Row 1: 1234, row 2: 3412 ...</answer>", 1 / 6),
        ("<answer>\n1234341221434321\n</answer>\nThe grid above is final.", 1.0),
        ("<answer>1234341221434321", 0.0),  # unclosed
        (SOLUTION, 0.0),  # no tags: no answer
        ("", 0.0),
    ],
)
def test_sudoku_correctness_is_the_fraction_of_empty_cells_right(completion, reward):
    assert sudoku_correctness(["p"], [completion], puzzle=[AMBIGUOUS], solution=[SOLUTION]) == [reward]


@pytest.mark.parametrize(
    "completion, reward", [(SOLUTION, 1.0), (OTHER_SOLUTION, 2 / 6), ("2143", 0.0), ("12", 2 / 6), ("", 0.0)]
)
def test_sudoku_toy_correctness_reads_the_bare_completion(completion, reward):
    assert sudoku_toy_correctness(["p"], [completion], puzzle=[AMBIGUOUS], solution=[SOLUTION]) == [reward]


def test_valid_accuracy_accepts_another_valid_solution():
    task = make()
    columns = {"puzzle": AMBIGUOUS, "solution": SOLUTION}
    example = Example(id="x", question="", answer=SOLUTION, columns=columns)
    other = task.score(example, f"<answer>{OTHER_SOLUTION}</answer>")
    assert other == {"accuracy": 2 / 6, "valid_accuracy": 1.0, "solved": 0.0}
    assert task.score(example, f"<answer>{SOLUTION}</answer>") == {
        "accuracy": 1.0, "valid_accuracy": 1.0, "solved": 1.0,
    }
    # a valid grid that changes a given digit is not a solution of this puzzle
    assert task.score(example, "<answer>4321214334121234</answer>")["valid_accuracy"] == 0.0
    assert task.score(example, "no answer") == {"accuracy": 0.0, "valid_accuracy": 0.0, "solved": 0.0}
