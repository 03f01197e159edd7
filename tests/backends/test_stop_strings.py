"""Stop strings: a reply ends at the token that completes one, and the turn is closed after it."""

from __future__ import annotations

import concurrent.futures as futures

import pytest
import torch

from agent_lightning.backends.transformers.stop_strings import StopStrings


class CharTokenizer:
    """id -> the text of that id (ids index a fixed list of pieces)."""

    pieces = ["<", "tool", "_call", ">", "x", "</", "tool_call", ">", "y"]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.pieces[i] for i in ids)


def test_a_stop_string_spanning_tokens_ends_the_row_on_its_last_token():
    stops = StopStrings(CharTokenizer(), ["</tool_call>"], batch=2)
    finished = torch.zeros(2, dtype=torch.bool)
    rows = [[5, 6, 7, 8], [0, 1, 2, 3]]  # row 0 writes "</" "tool_call" ">" ...; row 1 never does
    hits = [stops.update(torch.tensor([rows[0][t], rows[1][t]]), finished).tolist() for t in range(4)]
    assert hits == [[False, False], [False, False], [True, False], [False, False]]
    assert stops.hit == [True, False]


def test_finished_rows_are_skipped_and_bad_stops_are_rejected():
    stops = StopStrings(CharTokenizer(), [">"], batch=1)
    assert stops.update(torch.tensor([3]), torch.tensor([True])).tolist() == [False]
    with pytest.raises(ValueError, match="sampling.stop: expected non-empty strings"):
        StopStrings(CharTokenizer(), [""], batch=1)


def test_config_rejects_an_empty_stop_string():
    from agent_lightning.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="stop"):
        load_config(None, ['sampling.stop=["</answer>", ""]'])


@pytest.fixture(scope="module")
def backend():
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, ModelConfig

    return TransformersBackend(ModelConfig(preset="tiny", preset_options={"hidden_size": 32, "num_layers": 1, "num_heads": 2}),
                               BackendConfig(device="cpu"), seed=0)


def _generate(backend, prompt, **kwargs):
    return backend.generate([prompt], temperature=1.0, max_new_tokens=12,
                            generator=[torch.Generator().manual_seed(7)], **kwargs)[0]


def test_backend_generation_stops_at_the_first_occurrence(backend):
    prompt = backend.encode_prompt([{"role": "user", "content": "hello"}])
    free = _generate(backend, prompt)
    assert free.finish_reason in ("length", "stop") and len(free.token_ids) >= 4
    # A stop string made of the text of sampled tokens 2 and 3 ends the same sample at token 3
    # (or earlier, where that text already occurs).
    text = backend.tokenizer.decode(list(free.token_ids[2:4]))
    stopped = _generate(backend, prompt, stop=(text,))
    assert stopped.finish_reason == "stop_string"
    assert stopped.token_ids == free.token_ids[:len(stopped.token_ids)]
    assert stopped.logprobs == pytest.approx(free.logprobs[:len(stopped.token_ids)])
    assert len(stopped.token_ids) <= 4
    assert text in backend.tokenizer.decode(list(stopped.token_ids))
    assert text not in backend.tokenizer.decode(list(stopped.token_ids[:-1]))


def test_rollout_closes_the_turn_after_a_stop_string(backend):
    from agent_lightning.config import SamplingConfig
    from agent_lightning.envs.guess_number import GuessNumberEnv
    from agent_lightning.loop.rollout import EnvPool, play

    # Any single character stops the reply at its first token: every turn ends on a stop string.
    letters = [chr(c) for c in range(32, 127)]
    sampling = SamplingConfig(max_new_tokens=6, max_turns=3, stop=letters)
    env = GuessNumberEnv(max_number=6, max_turns=3)
    with futures.ThreadPoolExecutor(2) as executor:
        trajs = play(backend, EnvPool(lambda: GuessNumberEnv(max_number=6, max_turns=3)),
                     [(f"e{i}", env.tasks("train")[i], i) for i in range(3)], sampling=sampling,
                     temperature=1.0, step_timeout_s=5.0, policy_version=0, executor=executor)
    turns = [turn for traj in trajs for turn in traj.turns[:-1]]
    assert turns
    for turn in turns:
        # The policy never sampled the end-of-turn token, so the observation starts by closing it.
        closed = backend.encode_observation(
            [{"role": "user", "content": "x"}], after_stop=False)[:2]
        assert list(turn.observation_token_ids[:2]) == closed
