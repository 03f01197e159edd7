"""The plugin's own tests: episode logic and reward, no training."""

from agent_lightning.types import Trajectory, Turn
from agent_lightning_countdown import CountdownEnv, countdown_progress


def _play(env, task, actions):
    env.reset(task)
    turns = []
    for action in actions:
        result = env.step(action)
        turns.append(Turn(action=action, action_token_ids=(1,), action_logprobs=(-0.1,), info=result.info))
        if result.done:
            return result, turns
    return result, turns


def test_perfect_countdown_succeeds():
    env = CountdownEnv(max_start=5)
    task = [t for t in env.tasks("train") if t.reference["start"] == 4][0]
    result, turns = _play(env, task, ["3", "2", "1"])
    assert result.done and result.info["success"] and result.reward == 1.0
    traj = Trajectory(id="x", task=task, group=0, prompt_token_ids=(1,), turns=tuple(turns), success=True)
    assert countdown_progress()(traj) == 1.0


def test_wrong_number_ends_with_partial_progress():
    env = CountdownEnv(max_start=5)
    task = [t for t in env.tasks("eval") if t.reference["start"] == 5][0]
    result, turns = _play(env, task, ["4", "3", "7"])
    assert result.done and not result.info["success"] and result.info["progress"] == 2
    traj = Trajectory(id="x", task=task, group=0, prompt_token_ids=(1,), turns=tuple(turns))
    assert countdown_progress()(traj) == 0.5
