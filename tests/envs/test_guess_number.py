"""The quickstart environment: multi-turn logic, splits, and that feedback matters."""

from __future__ import annotations

import random

from agent_lightning.envs.guess_number import GuessNumberEnv


def _play(env, task, policy):
    env.reset(task)
    history = []
    while True:
        guess = policy(history)
        result = env.step(str(guess))
        history.append((guess, result.observation.messages[0]["content"] if result.observation else None))
        if result.done:
            return result, len(history)


def binary_search(max_number):
    def policy(history):
        low, high = 1, max_number
        for guess, hint in history:
            if hint == f"higher than {guess}":
                low = guess + 1
            elif hint == f"lower than {guess}":
                high = guess - 1
        return (low + high) // 2

    return policy


def test_feedback_and_success():
    env = GuessNumberEnv(max_number=10, max_turns=5)
    task = env.tasks("train")[6]  # secret 7
    env.reset(task)
    assert env.step("3").observation.messages[0]["content"] == "higher than 3"
    assert env.step("9").observation.messages[0]["content"] == "lower than 9"
    bad = env.step("banana")
    assert bad.info["invalid"] == 1.0 and "invalid" in bad.observation.messages[0]["content"]
    win = env.step("i guess 7")
    assert win.done and win.reward == 1.0 and win.info["success"]


def test_out_of_turns_ends_without_success():
    env = GuessNumberEnv(max_number=10, max_turns=2)
    env.reset(env.tasks("eval")[0])  # secret 1
    assert not env.step("5").done
    last = env.step("4")
    assert last.done and not last.info["success"] and last.reward == 0.0


def test_splits_have_distinct_ids_and_cover_every_secret():
    env = GuessNumberEnv(max_number=6, eval_repeats=2)
    train, held_out = env.tasks("train"), env.tasks("eval")
    assert {t.reference["secret"] for t in train} == {t.reference["secret"] for t in held_out} == set(range(1, 7))
    assert not {t.id for t in train} & {t.id for t in held_out}
    assert len(held_out) == 12 and all(t.split == "eval" for t in held_out)


def test_binary_search_always_wins_and_random_guessing_rarely_does():
    env = GuessNumberEnv(max_number=10, max_turns=5)
    tasks = env.tasks("eval")
    assert all(_play(env, task, binary_search(10))[0].info["success"] for task in tasks)
    rng = random.Random(0)
    wins = sum(_play(env, task, lambda h: rng.randint(1, 40))[0].info["success"] for task in tasks * 20)
    assert wins / (len(tasks) * 20) < 0.25


def test_wasted_guess_penalty_counts_ruled_out_guesses():
    env = GuessNumberEnv(max_number=10, max_turns=5, wasted_guess_penalty=0.25)
    env.reset(env.tasks("train")[7])  # secret 8
    assert env.step("5").reward == 0.0          # consistent
    again = env.step("4")                       # ruled out by "higher" after 5
    assert again.reward == -0.25 and again.info["wasted"] == 1.0
    assert env.step("zz").reward == -0.25       # invalid
