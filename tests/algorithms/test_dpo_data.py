"""Preference JSONL: parsing, errors, splits, and the token streams DPO and reward models train on."""

from __future__ import annotations

import json

import pytest

from agent_lightning.backends.transformers.chat_tokens import ChatTokens
from agent_lightning.backends.transformers.tiny import build_tokenizer
from agent_lightning.envs.guess_number import GuessNumberEnv
from agent_lightning.preferences.data import (ConversationEncoder, PreferenceDataError, load_preferences, resolve_path,
                                         split_pairs)
from agent_lightning.presets.guess_number_preferences import build_pairs


def _write(tmp_path, rows):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_strings_and_message_lists_both_parse(tmp_path):
    path = _write(tmp_path, [
        {"prompt": "guess my number", "chosen": "3", "rejected": "9"},
        "",
        {"id": "multi", "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
         "chosen": [{"role": "assistant", "content": "3"}, {"role": "user", "content": "higher than 3"},
                    {"role": "assistant", "content": "5"}],
         "rejected": [{"role": "assistant", "content": "1"}]},
    ])
    first, second = load_preferences(path)
    assert first.id == "p.jsonl:1"
    assert first.prompt == ({"role": "user", "content": "guess my number"},)
    assert first.chosen == ({"role": "assistant", "content": "3"},)
    assert second.id == "multi" and len(second.chosen) == 3 and second.prompt[0]["role"] == "system"


@pytest.mark.parametrize("row, message", [
    ('{"prompt": "a", "chosen": "b"}', r"p.jsonl:1: missing key\(s\) rejected"),
    ('{"prompt": "a", "chosen": "b", ', r"p.jsonl:1: not valid JSON"),
    ('{"prompt": "a", "chosen": [{"role": "user", "content": "b"}], "rejected": "c"}',
     r"p.jsonl:1: 'chosen' must start and end with an assistant message"),
    ('{"prompt": "a", "chosen": "b", "rejected": [{"role": "assistant"}]}',
     r"p.jsonl:1: 'rejected\[0\]' must be an object with string 'role' and 'content'"),
    ('[1, 2]', r"p.jsonl:1: expected an object"),
])
def test_malformed_rows_name_file_and_line(tmp_path, row, message):
    with pytest.raises(PreferenceDataError, match=message):
        load_preferences(_write(tmp_path, [row]))


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(PreferenceDataError, match=r"^algorithm.dataset: '.*nope.jsonl' is neither a file"):
        load_preferences(tmp_path / "nope.jsonl")


def test_split_is_seeded_disjoint_and_sized():
    pairs = build_pairs(20, seed=3)
    train, held = split_pairs(pairs, 0.25, seed=1)
    assert (len(train), len(held)) == (15, 5)
    assert not {p.id for p in train} & {p.id for p in held}
    assert split_pairs(pairs, 0.25, seed=1) == (train, held)
    assert split_pairs(pairs, 0.25, seed=2)[1] != held


def test_encoding_shares_the_prompt_and_masks_only_assistant_turns():
    tokenizer = build_tokenizer(max_number=6)
    encoder = ConversationEncoder(tokenizer)
    chat = ChatTokens(tokenizer)
    prompt = ({"role": "user", "content": "guess my number between 1 and 6 ."},)
    chosen = encoder.encode(prompt, ({"role": "assistant", "content": "3"}, {"role": "user", "content": "higher than 3"},
                                     {"role": "assistant", "content": "5"}), id="p/chosen")
    rejected = encoder.encode(prompt, ({"role": "assistant", "content": "1"},), id="p/rejected")
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    assert encoder.stop_id == end
    prompt_ids = chat.prompt(prompt)
    assert chosen.prompt_token_ids == rejected.prompt_token_ids == tuple(prompt_ids)
    # Exactly the stream a rollout builds when the policy samples "3 <|end|>", then "5 <|end|>".
    three, five = tokenizer.convert_tokens_to_ids(["3", "5"])
    feedback = chat.observation([{"role": "user", "content": "higher than 3"}], after_stop=True)
    assert chosen.token_ids == prompt_ids + [three, end] + feedback + [five, end]
    assert chosen.policy_mask == [False] * len(prompt_ids) + [True, True] + [False] * len(feedback) + [True, True]
    assert [t.action for t in chosen.turns] == ["3", "5"]


def test_packaged_preset_data_resolves_from_the_package():
    path = resolve_path("agent_lightning/presets/guess-number-preferences.jsonl")
    pairs = load_preferences(path)
    assert len(pairs) == 400


def _replay(secret, conversation):
    """Play the conversation's guesses in the real environment; its hints must be the conversation's."""
    env = GuessNumberEnv(max_number=6, max_turns=3)
    env.reset(next(t for t in env.tasks("train") if t.reference["secret"] == secret))
    guesses = [m["content"] for m in conversation if m["role"] == "assistant"]
    hints = [m["content"] for m in conversation if m["role"] == "user"]
    for i, guess in enumerate(guesses):
        result = env.step(guess)
        if result.done:
            assert i == len(guesses) - 1
            return result.info["success"]
        assert result.observation.messages[0]["content"] == hints[i]
    raise AssertionError("the conversation ended before the game did")


def test_guess_number_pairs_prefer_winning_binary_search_to_losing_hint_blind_play():
    for pair in build_pairs(60, seed=11):
        secret = int(pair.chosen[-1]["content"])  # binary search ends on the secret
        assert _replay(secret, pair.chosen) is True
        assert _replay(secret, pair.rejected) is False
