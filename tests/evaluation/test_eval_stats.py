"""The evaluation's statistics against independent computations: the Wilson interval by
inverting the score test numerically, pass@k by enumerating every k-subset of samples."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from agent_lightning.evaluation.stats import Z_95, pass_at_k, pass_ks, summarize, tracker_metrics, wilson_interval
from agent_lightning.types import Task, Trajectory, Turn


def _score_test_bounds(x: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The p where the score statistic (x - n p) / sqrt(n p (1 - p)) equals +-z, by bisection."""

    def excess(p: float) -> float:
        return (x - n * p) ** 2 - z * z * n * p * (1 - p)

    def bisect(lo: float, hi: float) -> float:
        for _ in range(200):
            mid = (lo + hi) / 2
            if (excess(lo) > 0) == (excess(mid) > 0):
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    phat = x / n
    low = 0.0 if x == 0 else bisect(0.0, phat)
    high = 1.0 if x == n else bisect(phat, 1.0)
    return low, high


def test_wilson_matches_published_values():
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Statistics
    # in Medicine 17:857-872, table I, method 3 (score interval without continuity correction).
    published = {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611), (1, 29): (0.0061, 0.1718)}
    for (x, n), (low, high) in published.items():
        assert wilson_interval(x, n) == (pytest.approx(low, abs=5e-5), pytest.approx(high, abs=5e-5)), (x, n)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0  # exact at the edges


def test_wilson_inverts_the_score_test():
    rng = random.Random(7)
    cases = [(0, 1), (1, 1), (0, 60), (3, 60), (60, 60), (6, 36)] + [
        (x, n) for n in (rng.randint(2, 500) for _ in range(30)) for x in (rng.randint(0, n),)]
    for x, n in cases:
        low, high = wilson_interval(x, n)
        ref_low, ref_high = _score_test_bounds(x, n)
        assert low == pytest.approx(ref_low, abs=1e-9), (x, n)
        assert high == pytest.approx(ref_high, abs=1e-9), (x, n)
        assert 0.0 <= low <= x / n <= high <= 1.0


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError, match="successes=11"):
        wilson_interval(11, 10)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_pass_at_k_equals_the_subset_average():
    for n in range(1, 8):
        for c in range(n + 1):
            outcomes = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                expected = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_by_hand():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pass_at_k(4, 2, 5)
    assert pass_ks(1) == [1]
    assert pass_ks(6) == [1, 2, 4, 6]
    assert pass_ks(8) == [1, 2, 4, 8]


def _traj(task: str, success: bool, *, turns: int = 1, failure: str | None = None, reward: float = 0.0) -> Trajectory:
    turn = Turn(action="x", action_token_ids=(9,), action_logprobs=(-0.5,), observation_token_ids=(3, 4))
    return Trajectory(id=f"{task}/{random.random()}", task=Task(id=task, prompt=()), group=0, prompt_token_ids=(1, 2, 3),
                      turns=(turn,) * turns, final_reward=reward, success=success, failure=failure)


def test_summarize_counts_and_averages():
    trajs = [_traj("a", True, reward=1.0), _traj("a", False, turns=3), _traj("b", False, turns=2),
             _traj("b", False, failure="environment step timed out")]
    result = summarize(trajs, samples=2)
    assert result["episodes"] == 4 and result["tasks"] == 2 and result["successes"] == 1
    assert result["success_rate"] == 0.25
    assert result["success_ci"] == list(wilson_interval(1, 4))
    assert result["mean_reward"] == pytest.approx(1 / 3)  # the failed episode's reward is not a reward
    assert result["pass_at_k"] == {"1": pytest.approx(0.25), "2": pytest.approx(0.5)}
    assert result["mean_turns"] == pytest.approx((1 + 3 + 2 + 1) / 4)
    assert result["tokens_per_episode"] == pytest.approx((6 + 12 + 9 + 6) / 4)  # 3 prompt + 3 per turn
    assert result["policy_tokens_per_episode"] == pytest.approx(7 / 4)
    assert result["failed_episodes"] == 1
    assert result["outcomes"] == {"no success": 2, "environment step timed out": 1}
    with pytest.raises(ValueError, match="task 'a' has 2"):
        summarize(trajs, samples=3)
    flat = tracker_metrics(result)
    assert flat["ckpt_eval/pass_at_2"] == pytest.approx(0.5)
    assert flat["ckpt_eval/success_ci_high"] == result["success_ci"][1]
    assert all("@" not in key and math.isfinite(v) for key, v in flat.items())
