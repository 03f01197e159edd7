"""The ``reward-model`` reward: sequence-classifier and agent-lightning directories, batching,
normalisation, clipping, and the scorer's batch hook."""

from __future__ import annotations

import math

import pytest
import torch

from agent_lightning.backends.transformers.tiny import build_model, build_tokenizer
from agent_lightning.loop.scoring import score
from agent_lightning.plugins import get_plugin_manager
from agent_lightning.preferences.data import ConversationEncoder
from agent_lightning.preferences.reward_model import ScalarRewardModel, build_head, save_reward_model
from agent_lightning.types import Task, Trajectory, Turn


def _create(**options):
    return get_plugin_manager().rewards.create("reward-model", **options)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A tiny random-init LlamaForSequenceClassification (one label) and the tiny tokenizer."""
    import transformers

    folder = tmp_path_factory.mktemp("seqcls")
    tokenizer = build_tokenizer(max_number=6)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = transformers.LlamaForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def native_dir(tmp_path_factory):
    """An (untrained) agent-lightning reward model: tiny Llama backbone plus a random head."""
    folder = tmp_path_factory.mktemp("native")
    tokenizer = build_tokenizer(max_number=6)
    backbone = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=1)
    model = ScalarRewardModel(backbone, build_head(32, seed=1), ConversationEncoder(tokenizer).stop_id)
    save_reward_model(model, tokenizer, str(folder))
    return folder


TASK = Task(id="t", prompt=({"role": "user", "content": "guess my number between 1 and 6 ."},))


def _traj(tid, actions, tokenizer, *, stop=False):
    """A rollout-shaped trajectory: one token per action (no stop token unless ``stop``)."""
    encoder = ConversationEncoder(tokenizer)
    prompt = encoder.chat.prompt(TASK.prompt)
    turns = []
    for i, action in enumerate(actions):
        ids = tokenizer.convert_tokens_to_ids([action]) + ([encoder.stop_id] if stop else [])
        obs = () if i == len(actions) - 1 else tuple(encoder.chat.observation(
            [{"role": "user", "content": f"higher than {action}"}], after_stop=stop))
        turns.append(Turn(action=action, action_token_ids=tuple(ids), action_logprobs=(-1.0,) * len(ids), observation_token_ids=obs))
    return Trajectory(id=tid, task=TASK, group=0, prompt_token_ids=tuple(prompt), turns=tuple(turns))


def _expected_classifier_score(folder, traj):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    messages = list(traj.task.prompt) + [{"role": "assistant", "content": t.action} for t in traj.turns]
    ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


def test_sequence_classifier_scores_the_rendered_conversation_batched(classifier_dir):
    tokenizer = build_tokenizer(max_number=6)
    reward = _create(path=str(classifier_dir), batch_size=2)
    trajs = [_traj("a", ["3"], tokenizer), _traj("b", ["3", "5"], tokenizer), _traj("c", ["1", "2", "4"], tokenizer)]
    batched = reward.batch(trajs)
    assert batched == pytest.approx([_expected_classifier_score(classifier_dir, t) for t in trajs], abs=1e-5)
    assert [reward(t) for t in trajs] == pytest.approx(batched, abs=1e-5)
    assert len(set(round(v, 6) for v in batched)) == 3


def test_fixed_normalisation_and_clipping(classifier_dir):
    tokenizer = build_tokenizer(max_number=6)
    trajs = [_traj("a", ["3"], tokenizer), _traj("b", ["3", "5"], tokenizer)]
    raw = _create(path=str(classifier_dir)).batch(trajs)
    mean, std = raw[0] + 0.01, 0.005
    normalised = _create(path=str(classifier_dir), normalize="fixed", mean=mean, std=std).batch(trajs)
    assert normalised == pytest.approx([(r - mean) / std for r in raw], abs=1e-3)
    clipped = _create(path=str(classifier_dir), normalize="fixed", mean=mean, std=std, clip=1.5).batch(trajs)
    assert clipped == pytest.approx([max(-1.5, min(1.5, (r - mean) / std)) for r in raw], abs=1e-3)
    assert any(abs(v) == pytest.approx(1.5) for v in clipped)


def test_running_normalisation_uses_every_score_so_far(classifier_dir):
    tokenizer = build_tokenizer(max_number=6)
    first = [_traj("a", ["3"], tokenizer), _traj("b", ["3", "5"], tokenizer)]
    second = [_traj("c", ["1", "2", "4"], tokenizer)]
    raw = _create(path=str(classifier_dir)).batch(first + second)
    reward = _create(path=str(classifier_dir), normalize="running")
    out_first = reward.batch(first)
    m1, s1 = (raw[0] + raw[1]) / 2, abs(raw[0] - raw[1]) / 2
    assert out_first == pytest.approx([(raw[0] - m1) / s1, (raw[1] - m1) / s1], abs=1e-4)
    out_second = reward.batch(second)
    m2 = sum(raw) / 3
    s2 = math.sqrt(sum((r - m2) ** 2 for r in raw) / 3)
    assert out_second == pytest.approx([(raw[2] - m2) / s2], abs=1e-4)


def test_native_model_reads_the_token_stream_closed_with_the_stop_token(native_dir):
    from agent_lightning.preferences.reward_model import load_reward_model

    tokenizer = build_tokenizer(max_number=6)
    model, _, meta = load_reward_model(native_dir)
    reward = _create(path=str(native_dir))
    open_traj = _traj("a", ["3", "5"], tokenizer)               # the policy never sampled <|end|>
    closed_traj = _traj("b", ["3", "5"], tokenizer, stop=True)  # it did, after each action
    with torch.no_grad():
        expected = model.score_ids([open_traj.token_ids + [meta["stop_id"]], closed_traj.token_ids]).tolist()
    assert reward.batch([open_traj, closed_traj]) == pytest.approx(expected, abs=1e-5)
    # The same conversation written as preference data scores the same as the closed rollout.
    encoded = ConversationEncoder(tokenizer).encode(TASK.prompt, (
        {"role": "assistant", "content": "3"}, {"role": "user", "content": "higher than 3"},
        {"role": "assistant", "content": "5"}), id="x")
    assert encoded.token_ids == closed_traj.token_ids


def test_out_of_vocabulary_ids_fail_that_episode_only(native_dir):
    tokenizer = build_tokenizer(max_number=6)
    good = _traj("good", ["3"], tokenizer)
    bad = Trajectory(id="bad", task=TASK, group=0, prompt_token_ids=(1, 2),
                     turns=(Turn(action="x", action_token_ids=(10_000,), action_logprobs=(-1.0,)),))
    scored = score([good, bad], _create(path=str(native_dir)))
    assert scored[0].failure is None and scored[0].final_reward != 0.0
    assert scored[1].failure.startswith("reward failed: ValueError: trajectory 'bad': token id 10000 is outside")


def test_directory_errors_name_the_key(tmp_path, classifier_dir):
    from agent_lightning.config import ConfigError

    with pytest.raises(ValueError, match=r"^reward.path: '.*missing' is not a directory"):
        _create(path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"needs reward.mean and reward.std"):
        _create(path=str(classifier_dir), normalize="fixed")
    with pytest.raises(ConfigError, match=r"unknown key 'reward.normalise'"):
        _create(path=str(classifier_dir), normalise="fixed")


def test_a_two_label_classifier_is_refused(tmp_path):
    import transformers

    tokenizer = build_tokenizer(max_number=6)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_labels=2, pad_token_id=tokenizer.pad_token_id)
    transformers.LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"has 2 labels; a reward model has exactly one"):
        _create(path=str(tmp_path))


class BatchedReward:
    def __init__(self, fail_batch=False):
        self.batch_calls, self.single_calls, self.fail_batch = 0, 0, fail_batch

    def batch(self, trajectories):
        self.batch_calls += 1
        if self.fail_batch:
            raise RuntimeError("model server down")
        return [ValueError("no score") if t.id == "b" else float(len(t.id)) for t in trajectories]

    def __call__(self, traj):
        self.single_calls += 1
        return 7.0


def test_scorer_calls_batch_once_and_fails_only_the_flagged_episode():
    tokenizer = build_tokenizer(max_number=6)
    trajs = [_traj("a", ["3"], tokenizer), _traj("b", ["3"], tokenizer), _traj("ccc", ["3"], tokenizer)]
    failed = Trajectory(id="dd", task=TASK, group=0, prompt_token_ids=(1,), turns=(), failure="environment reset timed out")
    reward = BatchedReward()
    out = score(trajs + [failed], reward)
    assert (reward.batch_calls, reward.single_calls) == (1, 0)
    assert [t.final_reward for t in out[:3]] == [1.0, 0.0, 3.0]
    assert out[1].failure == "reward failed: ValueError: no score"
    assert out[3].failure == "environment reset timed out"


def test_scorer_falls_back_to_single_calls_when_batch_raises():
    tokenizer = build_tokenizer(max_number=6)
    reward = BatchedReward(fail_batch=True)
    out = score([_traj("a", ["3"], tokenizer), _traj("b", ["3"], tokenizer)], reward)
    assert (reward.batch_calls, reward.single_calls) == (1, 2)
    assert [t.final_reward for t in out] == [7.0, 7.0]
