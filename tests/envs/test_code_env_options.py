"""Options of the code environment for small models: problem levels and worked examples."""

from __future__ import annotations

import json

import pytest

from agent_lightning.envs.code import LEVELS, SYSTEM_PROMPT, CodeEnv, extract_code, problems
from agent_lightning.envs.code_demos import DEMOS
from agent_lightning.envs.data import build_code_tasks

STANDARD_TRAIN = [
    "sum_of_squares", "reverse_words", "is_palindrome", "count_vowels", "fizzbuzz", "second_largest",
    "run_length_encode", "flatten", "digit_sum", "gcd", "is_prime", "merge_sorted", "char_frequency",
    "rotate_list", "longest_common_prefix", "binary_to_int", "capitalize_words", "unique_in_order", "pascal_row",
    "transpose", "collatz_steps", "caesar_shift", "dedupe", "chunk", "fibonacci", "count_bits"]
STANDARD_EVAL = [
    "roman_to_int", "valid_ipv4", "compress_ranges", "spiral_order", "anagram_groups", "max_subarray_sum",
    "balanced_brackets", "median", "count_islands", "two_sum_indices"]


def _ids(tasks):
    return [t.id for t in tasks]


def test_default_tasks_are_the_standard_problems_unchanged():
    env = CodeEnv()
    train, evals = env.tasks("train"), env.tasks("eval")
    assert _ids(train) == [f"code-{e}" for e in STANDARD_TRAIN] and len(train) == 26
    assert _ids(evals) == [f"code-{e}" for e in STANDARD_EVAL] and len(evals) == 10
    assert all(len(t.prompt) == 2 and t.prompt[0]["content"] == SYSTEM_PROMPT for t in train + evals)
    explicit = CodeEnv(levels=["standard"])
    assert _ids(explicit.tasks("train")) == _ids(train) and _ids(explicit.tasks("eval")) == _ids(evals)


def test_levels_select_problems():
    by_level = {p["id"]: p["level"] for p in problems()}
    assert set(by_level.values()) == set(LEVELS)
    basic = CodeEnv(levels=["basic"])
    train, evals = basic.tasks("train"), basic.tasks("eval")
    assert len(train) == 36 and len(evals) == 12
    assert all(by_level[t.id] == "basic" for t in train + evals)
    assert not {t.reference["entry_point"] for t in train} & {t.reference["entry_point"] for t in evals}
    assert _ids(CodeEnv(levels="basic").tasks("eval")) == _ids(evals)  # a lone string is one level
    both = CodeEnv(levels=("standard", "basic"))
    assert len(both.tasks("train")) == 62 and len(both.tasks("eval")) == 22


@pytest.mark.parametrize("levels", [["expert"], ["basic", "Basic"], []])
def test_unknown_level_is_rejected(levels):
    with pytest.raises(ValueError, match="environment.levels") as err:
        CodeEnv(levels=levels)
    assert "standard, basic" in str(err.value)
    for bad in set(levels) - set(LEVELS):
        assert repr(bad) in str(err.value)


def test_basic_problems_are_small_and_their_expected_values_recompute():
    """The shipped file is what the build script writes, and each expected value is the reference's output."""
    assert build_code_tasks.build() == list(problems())
    basic = [p for p in problems() if p["level"] == "basic"]
    assert len(basic) == 48 and sum(p["split"] == "eval" for p in basic) == 12
    standard_names = {p["entry_point"] for p in problems() if p["level"] == "standard"}
    assert not {p["entry_point"] for p in basic} & (standard_names | {d["entry_point"] for d in DEMOS})
    for p in basic:
        assert 4 <= len(p["tests"]) <= 6 and p["num_public"] == 2, p["id"]
        assert "\n" not in p["description"] and p["description"].endswith("."), p["id"]
        assert p["reference"].count("\n") <= 6, p["id"]  # def line + at most a few body lines
        namespace: dict = {}
        exec(p["reference"], namespace)
        for t in p["tests"]:
            got = namespace[p["entry_point"]](*json.loads(json.dumps(t["args"])))
            assert json.dumps(got) == json.dumps(t["expected"]), (p["id"], t)


def test_every_demo_solution_passes_its_examples_and_is_no_task():
    names = {p["entry_point"] for p in problems()}
    for demo in DEMOS:
        assert demo["entry_point"] not in names
        assert len(demo["tests"]) >= demo["num_public"] == 2
        namespace: dict = {}
        exec(demo["solution"], namespace)
        for t in demo["tests"]:
            got = namespace[demo["entry_point"]](*t["args"])
            assert type(got) is type(t["expected"]) and got == t["expected"], (demo["entry_point"], t, got)


def test_demonstrations_are_chat_turns_before_the_task():
    plain = CodeEnv(levels=["basic"]).tasks("eval")
    env = CodeEnv(levels=["basic"], demonstrations=2)
    tasks = env.tasks("eval")
    for task, bare in zip(tasks, plain):
        assert [m["role"] for m in task.prompt] == ["system", "user", "assistant", "user", "assistant", "user"]
        assert task.prompt[0] == bare.prompt[0] and task.prompt[-1] == bare.prompt[-1]
    prompt = tasks[0].prompt
    assert prompt[1]["content"] == ("Write a Python function `add_one`.\nReturn the integer n plus one.\n"
                                    "Examples (JSON notation):\n    add_one(4) == 5\n    add_one(-1) == 0")
    assert prompt[2]["content"] == "```python\ndef add_one(n):\n    return n + 1\n```"
    assert prompt[3]["content"].startswith("Write a Python function `shout`.\n")
    assert '    shout("hi") == "HI!"' in prompt[3]["content"]
    for demo, reply in zip(DEMOS, (prompt[2], prompt[4])):
        assert reply["content"].count("```") == 2
        assert extract_code(reply["content"], demo["entry_point"]) == demo["solution"]
    every = CodeEnv(demonstrations=len(DEMOS)).tasks("train")[0].prompt
    assert len(every) == 2 + 2 * len(DEMOS)


@pytest.mark.parametrize("count", [-1, len(DEMOS) + 1])
def test_demonstrations_out_of_range_are_rejected(count):
    with pytest.raises(ValueError, match=rf"environment\.demonstrations .*got {count}"):
        CodeEnv(demonstrations=count)


def test_basic_episode_with_a_demonstration_pays_through_the_sandbox():
    env = CodeEnv(levels=["basic"], demonstrations=1, max_attempts=1)
    task = next(t for t in env.tasks("eval") if t.id == "code-product_list")
    assert len(env.reset(task).messages) == 4
    reply = ("```python\ndef product_list(nums):\n    result = 1\n    for x in nums:\n        result *= x\n"
             "    return result\n```")
    result = env.step(reply)
    assert result.done and result.reward == 1.0 and result.info["success"] is True
    assert result.info["tests_passed"] == result.info["tests_total"] == 5
    env.reset(task)
    wrong = env.step("```python\ndef product_list(nums):\n    return nums[0] * nums[1]\n```")  # fails [] and [7]
    assert wrong.done and 0 < wrong.reward < 1 and wrong.info["success"] is False
