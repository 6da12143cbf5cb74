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

from .errors import InputError, check_float, check_int


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


def check_integer(value: Any, what: str, *, low: int | None = None, high: int | None = None, valid: str | None = None) -> int:
    """`errors.check_int`, with one message that always says what is valid: "`what` must
    be `valid`, got `value`" (valid defaults to "an integer >= low" / "in [low, high]")."""
    try:
        return check_int(value, what, low=low, high=high)
    except InputError:
        if valid is None:
            valid = (
                f"an integer in [{low}, {high}]" if low is not None and high is not None
                else f"an integer >= {low}" if low is not None
                else f"an integer <= {high}" if high is not None
                else "an integer"
            )
        raise InputError(f"{what} must be {valid}, got {value!r}") from None


def check_number(
    value: Any, what: str, valid: str, *, low: float | None = None, high: float | None = None,
    low_open: bool = False, high_open: bool = False,
) -> float:
    """`errors.check_float` (finite: NaN and infinities refused), with one message that
    always says what is valid; `high_open` excludes `high`."""
    try:
        f = check_float(value, what, low=low, high=high, low_open=low_open)
    except InputError:
        raise InputError(f"{what} must be {valid}, got {value!r}") from None
    if high_open and high is not None and f >= high:
        raise InputError(f"{what} must be {valid}, got {value!r}")
    return f


def check_bool(value: Any, what: str) -> bool:
    """`value` if it is True or False (numpy bools too); anything else (1, "no", None) is an
    InputError naming `what`, never truthiness."""
    if isinstance(value, bool):
        return value
    try:
        import numpy as np

        if isinstance(value, np.bool_):
            return bool(value)
    except ImportError:  # pragma: no cover
        pass
    raise InputError(f"{what} must be True or False, got {value!r}")


def check_optional_str(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InputError(f"{what} must be a string or None, got {type(value).__name__} {value!r:.60}")
    return value


def as_prompt_list(prompts: str | Sequence[str], what: str = "prompts") -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if prompts is None or isinstance(prompts, (bytes, dict, int, float)) or not hasattr(prompts, "__iter__"):
        raise InputError(f"{what} must be a string or a list of strings, got {type(prompts).__name__} {prompts!r:.60}")
    prompts = list(prompts)
    if not prompts:
        raise InputError(f"{what} is empty: give at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InputError(f"{what}[{i}] must be a string, got {type(p).__name__} {p!r:.60}")
        if p == "":
            raise InputError(f"{what}[{i}] is an empty string")
    return prompts


def check_token_rows(rows: Any, vocab_size: int | None, what: str = "prompt") -> list[list[int]]:
    """Token-id prompts as lists of ints: a 1-D / 2-D integer tensor or a list of int lists.
    Refuses floats (1.0 included: ids are never truncated or rounded), bools, empty rows
    and ids outside [0, vocab_size)."""
    if isinstance(rows, Tensor):
        if rows.is_floating_point() or rows.is_complex() or rows.dtype == torch.bool:
            raise InputError(f"{what} token ids must be an integer tensor, got dtype {rows.dtype}")
        if rows.ndim == 1:
            rows = rows[None]
        if rows.ndim != 2:
            raise InputError(f"{what} token ids must be a 1-D [seq] or 2-D [batch, seq] tensor, got shape {tuple(rows.shape)}")
        if rows.shape[0] == 0 or rows.shape[1] == 0:
            raise InputError(f"{what} token ids tensor is empty (shape {tuple(rows.shape)})")
        out = rows.tolist()
    else:
        out = []
        for i, r in enumerate(rows):
            if isinstance(r, Tensor):
                r = r.tolist() if not (r.is_floating_point() or r.dtype == torch.bool) else [float(x) for x in r.flatten()]
            if isinstance(r, (str, bytes)) or not hasattr(r, "__iter__"):
                raise InputError(f"{what} {i} must be a list of token ids, got {type(r).__name__} {r!r:.60}")
            row = []
            for j, t in enumerate(r):
                ok = isinstance(t, int) and not isinstance(t, bool)
                if not ok:
                    try:
                        import numpy as np

                        ok = isinstance(t, np.integer)
                    except ImportError:  # pragma: no cover
                        pass
                if not ok:
                    raise InputError(f"{what} {i}: token id at position {j} must be an integer, got {type(t).__name__} {t!r}")
                row.append(int(t))
            if not row:
                raise InputError(f"{what} {i} has no token ids")
            out.append(row)
        if not out:
            raise InputError(f"{what}s are empty: give at least one row of token ids")
    if vocab_size:
        for i, r in enumerate(out):
            bad = [t for t in r if not 0 <= t < vocab_size]
            if bad:
                raise InputError(f"{what} {i}: token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return out


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
    check_optional_str(system, "system")
    if enable_thinking is not None:
        check_bool(enable_thinking, "enable_thinking")
    if chat:
        texts = [chat_text(tokenizer, p, system=system, enable_thinking=enable_thinking) for p in prompts]
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return [tokenizer(p)["input_ids"] for p in prompts]


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> Batch:
    if not rows:
        raise InputError("no token rows to batch")
    for i, r in enumerate(rows):
        if len(r) == 0:
            raise InputError(f"prompt {i} tokenises to zero tokens")
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
        raise InputError(f"{what} is {n_tokens} tokens long, longer than the model's context of {max_positions} tokens")


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
    check_bool(chat, "chat")
    extra_tokens = check_integer(extra_tokens, "extra_tokens", low=0)
    rows = token_ids(bench.tokenizer, plist, chat=chat, system=system, enable_thinking=enable_thinking)
    for i, r in enumerate(rows):
        check_context(len(r) + extra_tokens, bench.arch.max_positions, f"prompt {i} (+{extra_tokens} new tokens)" if extra_tokens else f"prompt {i}")
    return pad_left(rows, bench.tokenizer.pad_token_id)
