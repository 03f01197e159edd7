"""Stop strings for token-by-token sampling: end a row once its text contains one.

Stop *tokens* (EOS, end-of-turn) are checked on ids; a stop *string* such as
``</tool_call>`` may span several tokens, so each row keeps its last few ids and decodes
them together as every new token arrives. They are decoded as a window, not one by one:
SentencePiece tokenizers drop a token's leading space when it is decoded alone. A token
decodes to at least one character, so a window of ``len(longest stop) + 2`` ids holds any
stop string that the newest token completed.
"""

from __future__ import annotations

from typing import Any, Sequence


class StopStrings:
    """Per-row text tails of a batch being sampled, and which rows have hit a stop string.

    Args:
        tokenizer: Decodes single token ids (``tokenizer.decode([id])``).
        stop: Non-empty strings; a row stops after the token that completes one.
        batch: Number of rows.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str], batch: int):
        self.stop = tuple(s for s in stop if s)
        if not self.stop or any(not isinstance(s, str) for s in stop):
            raise ValueError(f"sampling.stop: expected non-empty strings, got {list(stop)!r}")
        self.tokenizer = tokenizer
        self.window = max(len(s) for s in self.stop) + 2
        self.tails: list[list[int]] = [[] for _ in range(batch)]
        self.hit = [False] * batch

    def update(self, tokens: Any, finished: Any) -> Any:
        """Append each unfinished row's new token; return a bool tensor ``[batch]`` of rows
        that completed a stop string with this token.

        Args:
            tokens: ``[batch]`` CPU long tensor, the ids just sampled.
            finished: ``[batch]`` CPU bool tensor, rows already ended (skipped).
        """
        import torch

        out = torch.zeros(len(self.tails), dtype=torch.bool)
        for row, token in enumerate(tokens.tolist()):
            if finished[row] or self.hit[row]:
                continue
            tail = (self.tails[row] + [token])[-self.window:]
            self.tails[row] = tail
            text = self.tokenizer.decode(tail, skip_special_tokens=False)
            if any(s in text for s in self.stop):
                self.hit[row] = True
                out[row] = True
        return out
