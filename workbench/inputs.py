"""Prompts -> left-padded token batches, the one place that decides tokenisation.

`capture` and friends take raw text tokenised exactly as the tokenizer does by default
(`tokenizer(text)`); generation takes a plain prompt through the model's chat template by
default (`chat=False` for raw text). Both end in `Batch`: left padding with explicit
position ids (cumulative sum of the attention mask), so a batched forward equals the
one-by-one forwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor


@dataclass
class Batch:
    """input_ids, attention_mask, position_ids: [batch, seq] (left padded);
    lengths: [batch] real tokens per row."""

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    lengths: Tensor

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids, self.lengths)))

    def model_kwargs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


def as_prompt_list(prompts: str | Sequence[str], what: str = "prompts") -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{what} is empty: give at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"{what}[{i}] must be a string, got {type(p).__name__}")
        if p == "":
            raise ValueError(f"{what}[{i}] is an empty string")
    return prompts


def chat_text(tokenizer: Any, prompt: str, *, system: str | None = None, enable_thinking: bool | None = None) -> str:
    """`prompt` as a user turn through the tokenizer's chat template, ready for the reply."""
    if getattr(tokenizer, "chat_template", None) is None:
        return prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)


def token_ids(
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    chat: bool = False,
    system: str | None = None,
    enable_thinking: bool | None = None,
) -> list[list[int]]:
    """Token ids per prompt: raw text as the tokenizer encodes it by default, or the chat
    rendering (whose special tokens are in the text, so none are added again)."""
    if chat:
        texts = [chat_text(tokenizer, p, system=system, enable_thinking=enable_thinking) for p in prompts]
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return [tokenizer(p)["input_ids"] for p in prompts]


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> Batch:
    if not rows:
        raise ValueError("no token rows to batch")
    for i, r in enumerate(rows):
        if len(r) == 0:
            raise ValueError(f"prompt {i} tokenises to zero tokens")
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r) :] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, T - len(r) :] = 1
    return Batch(ids, mask, positions_from_mask(mask), mask.sum(1))


def positions_from_mask(mask: Tensor) -> Tensor:
    """Position ids from a left-padded mask: 0 at each row's first real token (pads get 1,
    the transformers convention; they are masked anyway)."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def check_context(n_tokens: int, max_positions: int, what: str = "prompt") -> None:
    if max_positions and n_tokens > max_positions:
        raise ValueError(f"{what} is {n_tokens} tokens long, longer than the model's context of {max_positions} tokens")


def encode(
    bench: Any,
    prompts: str | Sequence[str],
    *,
    chat: bool = False,
    system: str | None = None,
    enable_thinking: bool | None = None,
    extra_tokens: int = 0,
) -> Batch:
    """Tokenise and left-pad `prompts` for `bench`; refuses prompts that do not fit the
    context together with `extra_tokens` (tokens still to be generated)."""
    plist = as_prompt_list(prompts)
    rows = token_ids(bench.tokenizer, plist, chat=chat, system=system, enable_thinking=enable_thinking)
    for i, r in enumerate(rows):
        check_context(len(r) + extra_tokens, bench.arch.max_positions, f"prompt {i} (+{extra_tokens} new tokens)" if extra_tokens else f"prompt {i}")
    return pad_left(rows, bench.tokenizer.pad_token_id)
