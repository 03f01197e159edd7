"""Preference pairs for the guess-number game (the packaged offline DPO example's data).

``chosen`` plays binary search (a random midpoint when two are equally good) and always wins
within ``max_turns`` when ``2**max_turns > max_number``; ``rejected`` ignores the hints (a
fresh random guess each turn, repeats allowed) and loses. Both open with the same guess when
that guess is not already the secret, so a pair differs where the hints start to matter.
Prompts and hints are worded exactly as ``agent_lightning.envs.guess_number`` words them.

    python -m agent_lightning.presets.guess_number_preferences OUT.jsonl [--pairs 400] [--seed 0]

writes the file the ``dpo-offline`` preset reads.
"""

from __future__ import annotations

import argparse
import random

from agent_lightning.preferences.data import PreferencePair, write_preferences


def _hint(secret: int, guess: int) -> str:
    return f"higher than {guess}" if secret > guess else f"lower than {guess}"


def _conversation(secret: int, guesses: list[int]) -> tuple[dict, ...]:
    messages: list[dict] = []
    for i, guess in enumerate(guesses):
        if i:
            messages.append({"role": "user", "content": _hint(secret, guesses[i - 1])})
        messages.append({"role": "assistant", "content": str(guess)})
    return tuple(messages)


def binary_search(secret: int, max_number: int, max_turns: int, rng: random.Random) -> list[int]:
    """Guesses of binary search (midpoint ties broken at random) until the secret or the turn limit."""
    low, high, guesses = 1, max_number, []
    while len(guesses) < max_turns:
        guess = (low + high + rng.randint(0, 1)) // 2
        guesses.append(guess)
        if guess == secret:
            break
        low, high = (guess + 1, high) if secret > guess else (low, guess - 1)
    return guesses


def hint_ignoring(secret: int, max_number: int, max_turns: int, rng: random.Random, first: int) -> list[int] | None:
    """A losing game that opens with ``first`` and then guesses at random; ``None`` if none found."""
    for _ in range(100):
        guesses = [first] + [rng.randint(1, max_number) for _ in range(max_turns - 1)]
        if secret not in guesses:
            return guesses
    return None


def build_pairs(n: int, *, max_number: int = 6, max_turns: int = 3, seed: int = 0) -> list[PreferencePair]:
    """``n`` pairs over random secrets (see module docstring)."""
    rng = random.Random(seed)
    prompt = ({"role": "user", "content": f"guess my number between 1 and {max_number} ."},)
    pairs: list[PreferencePair] = []
    while len(pairs) < n:
        secret = rng.randint(1, max_number)
        chosen = binary_search(secret, max_number, max_turns, rng)
        opener = chosen[0] if chosen[0] != secret else rng.choice([g for g in range(1, max_number + 1) if g != secret])
        rejected = hint_ignoring(secret, max_number, max_turns, rng, opener)
        if rejected is None:
            continue
        pairs.append(PreferencePair(id=f"guess-{len(pairs)}", prompt=prompt,
                                    chosen=_conversation(secret, chosen), rejected=_conversation(secret, rejected)))
    return pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--max-number", type=int, default=6)
    parser.add_argument("--max-turns", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_preferences(build_pairs(args.pairs, max_number=args.max_number, max_turns=args.max_turns, seed=args.seed), args.out)


if __name__ == "__main__":
    main()
