"""Latent-SFT (DJC-GO-SOLO/Latent-SFT, "Latent-SFT: LLM Latent Reasoning as Chain of
Superposition", arXiv 2510.15522) on the arithmetic task, through the shared trainer.

A latent token is a vocabulary superposition: `sum_i p_i E[idx_i]` over the top-k tokens
of a softmax (`workbench.latent.latent_sft.vocab_superposition`, the original's
`softmax_over_embedding_topk`, k = `topk_interpolation`). The chain of thought (the step
lines, `c` tokens) is cut into m = ceil(c / k) chunks of `compression_rate` = k tokens
(`chunks`, the original's `insert_special_token_every_k`); one latent per chunk.

Stage 1 (three phases, each its own trainer run and folder, fresh optimizer, as the
original's three scripts): a latent-token *encoder* (a copy of the model plus one learned
compress-token input vector) reads the explicit chain with a compress token after each
chunk under the **latent token induction mask** (`induction_mask`: causal, and no position
sees an earlier compress token); its last hidden state at compress token i, projected onto
the (frozen) embedding table and top-k softmaxed, is latent L_i. The *decoder* (the model)
reads prompt, L_1, chunk_2, L_2, ..., chunk_m, L_m, `</think>`, answer under the **latent
token supervision mask** (`supervision_mask`) and is trained with cross-entropy on the
text chunks, `</think>` and the answer (not on the latents). Phase "encoder" trains the
encoder (decoder frozen), "decoder" the decoder (encoder frozen), "union" both.

Between the stages the final encoder writes every training problem's soft labels (top-k
probabilities and indices per latent) into `<out_dir>/latent_sft_labels.safetensors`
(the original's `generate_latent_soft_label_*_batch.py` chunks), read back on resume.

Stage 2 (`<out_dir>/stage2`): the stage-1 decoder learns to produce the chain itself:
prompt, the soft labels' superpositions (from its own embedding table), `</think>`,
answer, plain causal mask; loss = `ce_w` x CE(`</think>` + answer) + `kl_w` x KL(label ||
model) at the positions that predict each latent (`stage2_loss`; the original's
`kd_kl_loss_topk`), optionally on Gumbel-perturbed labels (`gumbel_perturb`).

Inference (`latent.LatentSFT`): the stage-2 model feeds its own top-k superposition each
step until its argmax is `</think>`.

How the masks run on any architecture. The micro model alternates Gated DeltaNet (a
recurrence: it cannot take an arbitrary attention mask) and full attention, so the masks
are realised with plain causal forwards over several rows:
  * induction mask, exactly: compress token i gets its own row, the prompt and the chain
    up to chunk i followed by the compress vector (earlier compress tokens are absent,
    which is what the mask makes them), at the original's position ids (the positions
    the interleaved sequence gives, `induction_positions`); the text positions never see
    a compress token under the mask, so nothing else is needed;
  * supervision mask: row A = prompt, L_1..L_m, `</think>`, answer gives exactly the
    mask's view for the prompt, every latent (prompt + earlier latents) and the final
    segment (prompt + all latents + itself). Text chunk i+1 gets row i: prompt, L_1..L_i,
    chunk_{i+1}. Under the mask that chunk sees only L_i (and itself); here it also sees
    the prompt and L_1..L_{i-1} (the one deviation in the masks: a chunk is decoded from
    the latent chain so far, not from its latent alone). Its position ids are the
    original's dual-track ones (latent L_j at P - 1 + j, a chunk continuing from its
    latent), which natural positions in these rows equal.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import FileFormatError, InputError, check_float, check_int
from .arith import Encoded, VocabView, _full_logsumexp, pad_right
from .latent_recipes import (
    RUNNERS,
    CLOSE,
    LatentModel,
    LatentRecipeConfig,
    _finish,
    _frozen_copy,
    _merged,
    _pause_init,
    _prepare_base,
    _save_model,
    _write_policy,
    quick_eval,
    setup,
)
from .loop import StepLoss, train
from .trajectories import recorder_for

PHASES = ("encoder", "decoder", "union")
LABELS_FILE = "latent_sft_labels.safetensors"


@dataclass
class LatentSFTConfig(LatentRecipeConfig):
    """Latent-SFT (see the module docstring). `compression_rate` chain tokens per latent
    (the original's scripts: 2 on GSM8k; 4 here, its "up to 4x shorter" claim);
    `topk_interpolation` tokens per superposition (10, as its scripts); `stage1_phases`, a
    non-empty ordered subset of ("encoder", "decoder", "union"), each `stage1_steps`
    optimizer steps; stage 2 takes `steps` steps with `ce_w` / `kl_w`, Gumbel noise on the
    labels when `add_gumbel_noise` (its scripts: on, temperature 1, scale 1);
    `max_latent_steps` is the inference budget written to the policy. The model's own
    weights train (`train_modules` or `lora_rank`), and so do the encoder's."""

    recipe: str = "latent-sft"
    out_dir: str = "runs/latent-sft"
    compression_rate: int = 4
    topk_interpolation: int = 10
    stage1_phases: list[str] = field(default_factory=lambda: list(PHASES))
    stage1_steps: int = 200
    steps: int = 300
    ce_w: float = 1.0
    kl_w: float = 1.0
    add_gumbel_noise: bool = True
    gumbel_temperature: float = 1.0
    noise_scale: float = 1.0
    max_latent_steps: int = 24

    def validate(self) -> None:
        super().validate()
        check_int(self.compression_rate, "compression_rate (chain tokens per latent)", low=1)
        check_int(self.topk_interpolation, "topk_interpolation (tokens per superposition)", low=1)
        check_int(self.stage1_steps, "stage1_steps", low=1)
        check_int(self.max_latent_steps, "max_latent_steps", low=1)
        check_float(self.ce_w, "ce_w", low=0.0)
        check_float(self.kl_w, "kl_w", low=0.0)
        check_float(self.gumbel_temperature, "gumbel_temperature", low=0.0, low_open=True)
        check_float(self.noise_scale, "noise_scale", low=0.0)
        ph = list(self.stage1_phases)
        if not ph or any(p not in PHASES for p in ph) or len(set(ph)) != len(ph) or ph != sorted(ph, key=PHASES.index):
            raise InputError(f"stage1_phases must be a non-empty ordered subset of {list(PHASES)}, got {self.stage1_phases!r}")
        if not self.train_modules and not self.lora_rank:
            raise InputError("latent-sft fine-tunes the model and its encoder: set train_modules (non-empty) or lora_rank > 0")


# --------------------------------------------------------------------------- layout and masks


def chunks(cot: Sequence[int], k: int) -> list[list[int]]:
    """The chain cut into ceil(len / k) chunks of k tokens (the last may be shorter): one
    latent per chunk, as `insert_special_token_every_k` places a compress token after
    every k-th token and one more after a partial tail."""
    cot = list(cot)
    return [cot[i : i + k] for i in range(0, len(cot), k)]


def induction_positions(n_prompt: int, cot_len: int, k: int, i: int) -> list[int]:
    """Position ids of encoder row i (1-based): the prompt, the chain up to chunk i, then
    compress token i, at the positions they hold in the original's interleaved sequence
    (prompt, chunk_1, C, chunk_2, C, ...), where text token j sits at n_prompt + j + j // k
    and compress token i at n_prompt + min(i k, len) + i - 1."""
    n_text = min(i * k, cot_len)
    return list(range(n_prompt)) + [n_prompt + j + j // k for j in range(n_text)] + [n_prompt + n_text + i - 1]


def induction_mask(is_compress: Sequence[bool], valid: Sequence[bool] | None = None) -> Tensor:
    """The latent token induction mask [T, T] (True = query row may attend key column),
    the original's `build_latent_token_induction_mask`: causal, and no key that is a
    compress token is visible to any later position (each compress token sees the text
    before it and itself, never an earlier compress token); padding rows and columns
    masked."""
    c = torch.as_tensor(list(is_compress), dtype=torch.bool)
    T = len(c)
    ok = torch.ones(T, dtype=torch.bool) if valid is None else torch.as_tensor(list(valid), dtype=torch.bool)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    later = torch.arange(T)[:, None] > torch.arange(T)[None, :]
    return causal & ~(c[None, :] & later) & ok[:, None] & ok[None, :]


def supervision_mask(kinds: Sequence[str]) -> Tensor:
    """The latent token supervision mask [T, T] of the decoder sequence, the original's
    `build_latent_token_supervision_mask_vectorized`. `kinds` per position: "p" (prompt,
    up to and including the begin marker), "L" (latent), "t" (a text chunk after a
    latent), "a" (the final segment: `</think>` and the answer), "pad".
      prompt: causal among the prompt;  text after latent L_i: causal within its chunk
      and L_i;  final segment: causal within it, the whole prompt and every latent;
      latent: itself, the prompt and every earlier latent;  padding: nothing."""
    k = list(kinds)
    T = len(k)
    m = torch.zeros(T, T, dtype=torch.bool)
    P = [i for i, x in enumerate(k) if x == "p"]
    L = [i for i, x in enumerate(k) if x == "L"]
    for i, x in enumerate(k):
        if x == "p":
            m[i, [j for j in P if j <= i]] = True
        elif x == "L":
            m[i, P] = True
            m[i, [j for j in L if j <= i]] = True
        elif x == "t":
            prev = max(j for j in L if j < i)
            m[i, prev] = True
            for j in range(prev + 1, i + 1):
                m[i, j] = True
        elif x == "a":
            m[i, P] = True
            m[i, L] = True
            first = next(j for j in range(T) if k[j] == "a")
            m[i, first : i + 1] = True
    return m


def decoder_kinds(n_prompt: int, parts: Sequence[Sequence[int]], n_after: int) -> list[str]:
    """`supervision_mask` kinds of the original's decoder sequence for chunk lengths
    `parts`: prompt, L_1, chunk_2, L_2, ..., chunk_m, L_m, then `n_after` final tokens."""
    out = ["p"] * n_prompt
    for i in range(len(parts)):
        out.append("L")
        if i + 1 < len(parts):
            out += ["t"] * len(parts[i + 1])
    return out + ["a"] * n_after


# --------------------------------------------------------------------------- stage 1


def _unwrap(m: nn.Module) -> nn.Module:
    return m.get_base_model() if hasattr(m, "get_base_model") else m


def _forward(hf: nn.Module, embeds: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
    from ..generate import base_model

    return base_model(hf)(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state


def _stack_rows(rows: list[Tensor], positions: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded [R, T, d] embeddings (zeros at padding), mask [R, T] and positions."""
    T = max(r.shape[0] for r in rows)
    d = rows[0].shape[-1]
    E = rows[0].new_zeros(len(rows), T, d)
    M = torch.zeros(len(rows), T, dtype=torch.long, device=rows[0].device)
    pos = torch.ones(len(rows), T, dtype=torch.long, device=rows[0].device)
    for i, (r, p) in enumerate(zip(rows, positions)):
        E[i, : r.shape[0]] = r
        M[i, : r.shape[0]] = 1
        pos[i, : r.shape[0]] = torch.as_tensor(p, dtype=torch.long)
    return E, M, pos


def _cot(e: Encoded) -> list[int]:
    return [t for s in e.steps for t in s]


def encode_latents(encoder: nn.Module, compress: Tensor, W: Tensor, batch: Sequence[Encoded], k: int, top_k: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Stage-1 encoder: per problem (latents [m, d], probs [m, top_k], indices [m, top_k]).
    One row per compress token (`induction_positions`; the induction mask exactly), its
    last hidden state after the final norm projected onto the embedding table `W`
    (detached, as the original) and top-k softmaxed."""
    from ..latent.latent_sft import vocab_superposition

    enc = _unwrap(encoder)
    emb = enc.get_input_embeddings()
    rows, pos, owner = [], [], []
    for b, e in enumerate(batch):
        cot = _cot(e)
        base = emb(torch.as_tensor(list(e.prompt) + cot, device=W.device))
        for i in range(1, len(chunks(cot, k)) + 1):
            n_text = min(i * k, len(cot))
            rows.append(torch.cat([base[: len(e.prompt) + n_text], compress.to(base.dtype)[None]]))
            pos.append(induction_positions(len(e.prompt), len(cot), k, i))
            owner.append(b)
    E, M, P = _stack_rows(rows, pos)
    h = _forward(enc, E, M, P)
    last = M.sum(-1) - 1
    x = h[torch.arange(len(rows), device=h.device), last]
    lat, probs, idx = vocab_superposition(_logits(x, W.detach()), W.detach(), top_k)
    out = []
    for b in range(len(batch)):
        sel = torch.tensor([j for j, o in enumerate(owner) if o == b], device=h.device)
        out.append((lat[sel], probs[sel], idx[sel]))
    return out


def _logits(x: Tensor, W: Tensor) -> Tensor:
    return x.float() @ W.float().t()


def stage1_loss(vocab: VocabView, decoder: nn.Module, batch: Sequence[Encoded], latents: Sequence[Tensor], k: int) -> tuple[Tensor, int]:
    """Cross-entropy of the supervision-mask objective (mean over every supervised token
    of the batch, as the original's CrossEntropyLoss): each text chunk i+1 predicted after
    L_i, `</think>` after L_m, and the answer. Rows as the module docstring says."""
    dec = _unwrap(decoder)
    emb = dec.get_input_embeddings()
    dev = emb.weight.device
    rows, pos, preds, tgts = [], [], [], []
    for e, L in zip(batch, latents):
        parts = chunks(_cot(e), k)
        m, P = len(parts), len(e.prompt)
        Ep = emb(torch.as_tensor(e.prompt, device=dev))
        L = L.to(Ep.dtype)
        r = len(rows)
        rows.append(torch.cat([Ep, L, emb(torch.as_tensor(e.suffix, device=dev))]))
        preds += [(r, P + m - 1 + t) for t in range(len(e.suffix))]
        tgts += list(e.suffix)
        for i in range(1, m):
            r = len(rows)
            nxt = parts[i]
            rows.append(torch.cat([Ep, L[:i], emb(torch.as_tensor(nxt, device=dev))]))
            preds += [(r, P + i - 1 + t) for t in range(len(nxt))]
            tgts += nxt
    for r in rows:
        pos.append(list(range(r.shape[0])))
    E, M, Pp = _stack_rows(rows, pos)
    h = _forward(dec, E, M, Pp)
    ri = torch.tensor([a for a, _ in preds], device=h.device)
    pi = torch.tensor([b for _, b in preds], device=h.device)
    return vocab.ce(h[ri, pi], torch.tensor(tgts, device=h.device)), len(tgts)


# --------------------------------------------------------------------------- stage 2


def logprob_at(vocab: VocabView, hidden: Tensor, idx: Tensor) -> Tensor:
    """Full-vocabulary log-probabilities [N, k] of tokens `idx` [N, k] at `hidden` [N, d]
    (a compact-vocabulary model's all-zero rows included: their logit is exactly 0)."""
    W = vocab.hf.get_output_embeddings().weight
    if vocab.ids is None:
        return torch.log_softmax(hidden.float() @ W.float().t(), -1).gather(-1, idx.to(W.device))
    local = vocab.lookup[idx.cpu()].to(W.device)
    logits = hidden.float() @ W[vocab.ids.to(W.device)].float().t()
    got = torch.where(local >= 0, logits.gather(-1, local.clamp(min=0)), torch.zeros_like(local, dtype=logits.dtype))
    return got - _full_logsumexp(logits, vocab.V - len(vocab.ids))[:, None]


def kd_kl_topk(student_logp: Tensor, teacher_probs: Tensor, eps: float = 1e-12) -> Tensor:
    """The original's `kd_kl_loss_topk` (temperature 1): teacher q renormalised over its
    top-k, KL(q || p) = sum_k q (log q - log p[idx_k]) per latent, mean over latents."""
    q = teacher_probs.float()
    q = q / (q.sum(-1, keepdim=True) + eps)
    return (q * (q.clamp_min(eps).log() - student_logp)).sum(-1).mean()


def gumbel_perturb(probs: Tensor, indices: Tensor, end_id: int | None, temperature: float, scale: float, max_attempts: int = 100) -> Tensor:
    """The original's `apply_gumbel_noise_safe`: softmax((log(p + 1e-10) + clamp(scale x
    Gumbel, -1.5, 3)) / temperature), redrawn (up to 100 times) while `</think>` would
    become some latent's top token. Draws from torch's global generator, which the
    trainer's checkpoints restore (a resumed run draws the same noise)."""
    noisy = probs
    for _ in range(max_attempts):
        logp = torch.log(probs.float() + 1e-10)
        g = -torch.empty_like(logp).exponential_().log()
        g = (scale * g).clamp(-1.5, 3.0)
        noisy = torch.softmax((logp + g) / temperature, dim=-1).to(probs.dtype)
        top = indices.gather(-1, noisy.argmax(-1, keepdim=True))[..., 0]
        if end_id is None or not bool((top == end_id).any()):
            return noisy
    return noisy


def stage2_loss(vocab: VocabView, hf: nn.Module, rows: Sequence[tuple[Sequence[int], Tensor, Tensor, Sequence[int]]], ce_w: float, kl_w: float) -> tuple[Tensor, dict, int]:
    """Stage-2 loss on rows (prompt ids, label probs [m, k], label indices [m, k], suffix
    ids): the input is prompt, sum_k probs E[indices] per latent (the model's own
    embedding table), suffix; CE = mean cross-entropy of every suffix token (`</think>`
    predicted after the last latent, then the answer), KL = mean over the batch of each
    row's `kd_kl_topk` at the positions predicting each latent (the last prompt position
    predicts L_1, L_j predicts L_{j+1}). Returns (ce_w CE + kl_w KL, {ce, kl}, tokens)."""
    emb = hf.get_input_embeddings()
    W = emb.weight
    seqs, pos = [], []
    ce_idx, ce_tgt, kl_rows = [], [], []
    for r, (prompt, probs, idx, suffix) in enumerate(rows):
        P, m = len(prompt), probs.shape[0]
        lat = (probs.to(W.device, W.dtype)[..., None] * W[idx.to(W.device)]).sum(-2)
        seqs.append(torch.cat([emb(torch.as_tensor(list(prompt), device=W.device)), lat, emb(torch.as_tensor(list(suffix), device=W.device))]))
        pos.append(list(range(seqs[-1].shape[0])))
        ce_idx += [(r, P + m - 1 + t) for t in range(len(suffix))]
        ce_tgt += list(suffix)
        kl_rows.append((r, P - 1, m))
    E, M, Pp = _stack_rows(seqs, pos)
    from ..generate import base_model
    from ..inputs import positions_from_mask

    h = base_model(hf)(inputs_embeds=E, attention_mask=M, position_ids=positions_from_mask(M), use_cache=False).last_hidden_state
    ri = torch.tensor([a for a, _ in ce_idx], device=h.device)
    pi = torch.tensor([b for _, b in ce_idx], device=h.device)
    ce = vocab.ce(h[ri, pi], torch.tensor(ce_tgt, device=h.device))
    kls = []
    for (r, s, m), (_, probs, idx, _) in zip(kl_rows, rows):
        lp = logprob_at(vocab, h[r, s : s + m], idx.to(h.device))
        kls.append(kd_kl_topk(lp, probs.to(h.device)))
    kl = torch.stack(kls).sum() / len(rows)
    return ce_w * ce + kl_w * kl, {"ce": float(ce.detach()), "kl": float(kl.detach())}, len(ce_tgt)


# --------------------------------------------------------------------------- labels file


def _labels_header(cfg: LatentSFTConfig) -> dict:
    keys = ("model", "seed", "n_train", "min_reasoning_steps", "max_reasoning_steps", "digits", "compression_rate", "topk_interpolation", "stage1_phases", "stage1_steps")
    return {k: getattr(cfg, k) for k in keys}


def _fingerprint(m: nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.detach().double().sum() for p in m.parameters()))


def _save_labels(path: Path, header: dict, labels: list[tuple[Tensor, Tensor]]) -> None:
    from safetensors.torch import save_file

    tensors = {
        "probs": torch.cat([p for p, _ in labels]).float().contiguous(),
        "indices": torch.cat([i for _, i in labels]).long().contiguous(),
        "counts": torch.tensor([p.shape[0] for p, _ in labels], dtype=torch.long),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"header": json.dumps(header, sort_keys=True)})
    tmp.replace(path)


def _load_labels(path: Path, header: dict, n: int) -> list[tuple[Tensor, Tensor]] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise FileFormatError(f"{path}: the saved Latent-SFT soft labels cannot be read ({type(e).__name__}: {e}); delete the file to make them again") from None
    if meta.get("header") != json.dumps(header, sort_keys=True):
        return None
    counts = t.get("counts")
    if counts is None or len(counts) != n or "probs" not in t or "indices" not in t:
        raise FileFormatError(f"{path}: expected soft labels for {n} training problems; delete the file to make them again")
    out, o = [], 0
    for c in counts.tolist():
        out.append((t["probs"][o : o + c], t["indices"][o : o + c]))
        o += c
    return out


# --------------------------------------------------------------------------- the recipe


def phase_seed(seed: int, k: int) -> int:
    """Trainer seed of stage-1 phase k (0, 1, 2) or stage 2 (k = 3): each draws its own
    data order (the original reshuffles every epoch)."""
    return int(seed) + 7919 * (int(k) + 1)


def _freeze(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def run_latent_sft(cfg: LatentSFTConfig, resume: bool = False, bench: Any = None, on_step=None, cancel=None) -> dict:
    from ..latent.latent_sft import LatentSFT

    s = setup(cfg, bench)
    if s.close is None:
        raise InputError(f"latent-sft ends its latent chain on {CLOSE!r} (self-exit), which the tokenizer of {cfg.model!r} lacks; use a thinking model (e.g. qwen3.5-micro)")
    out = Path(cfg.out_dir)
    hf, tok = s.bench.hf, s.bench.tokenizer
    k, K = cfg.compression_rate, cfg.topk_interpolation
    W_dec = lambda model: model.hf.get_input_embeddings().weight  # noqa: E731
    enc = _freeze(_frozen_copy(hf))
    _freeze(hf)
    compress = _pause_init(hf, 1, cfg.seed)[0]
    results: dict[str, Any] = {"stage1": [], "compression_rate": k, "topk_interpolation": K}

    for n, phase in enumerate(cfg.stage1_phases):
        dec_t, enc_t = phase in ("decoder", "union"), phase in ("encoder", "union")
        model = LatentModel(_prepare_base(hf, cfg) if dec_t else hf, head=_prepare_base(enc, cfg) if enc_t else enc, pause=compress)
        model.pause.requires_grad_(enc_t)

        def loss_fn(model: LatentModel, batch: list[Encoded], enc_t=enc_t) -> StepLoss:
            W = W_dec(model)
            with torch.set_grad_enabled(enc_t and torch.is_grad_enabled()):
                lat = encode_latents(model.head, model.pause, W, batch, k, K)
            loss, ntok = stage1_loss(s.vocab, model.base, batch, [x[0] for x in lat], k)
            return StepLoss(loss, tokens=ntok, metrics={"latents": sum(x[0].shape[0] for x in lat) / len(batch)})

        pcfg = cfg.replace(out_dir=str(out / f"stage1-{phase}"), seed=phase_seed(cfg.seed, PHASES.index(phase)), steps=cfg.stage1_steps)
        res = train(model, s.data, loss_fn, pcfg, resume=resume and (Path(pcfg.out_dir) / "checkpoint").exists(), on_step=on_step, cancel=cancel)
        hf, enc = _freeze(_merged(model.base)), _freeze(_merged(model.head))
        compress = model.pause.detach().clone()
        results["stage1"].append({"phase": phase, "steps": res.step, "final_loss": res.final_loss})
        if res.status != "done":
            return {"status": res.status, **results}

    # soft labels of every training problem from the final encoder (cached for resume)
    header = {**_labels_header(cfg), "encoder": _fingerprint(enc), "decoder": _fingerprint(hf)}
    path = out / LABELS_FILE
    labels = _load_labels(path, header, len(s.data)) if resume and path.is_file() else None
    if labels is None:
        labels = []
        with torch.no_grad():
            W = hf.get_input_embeddings().weight
            for i in range(0, len(s.data), 64):
                for _, p, ix in encode_latents(enc, compress, W, s.data[i : i + 64], k, K):
                    labels.append((p.float().cpu(), ix.cpu()))
        out.mkdir(parents=True, exist_ok=True)
        _save_labels(path, header, labels)
    del enc
    rows = [(e.prompt, p, ix, e.suffix) for e, (p, ix) in zip(s.data, labels)]
    results["mean_latents"] = sum(p.shape[0] for p, _ in labels) / len(labels)
    results["mean_chain_tokens"] = sum(len(_cot(e)) for e in s.data) / len(s.data)

    model = LatentModel(_prepare_base(hf, cfg))
    close = s.close

    def loss2(model: LatentModel, batch: list) -> StepLoss:
        if cfg.add_gumbel_noise:
            batch = [(pr, gumbel_perturb(p, ix, close, cfg.gumbel_temperature, cfg.noise_scale), ix, sf) for pr, p, ix, sf in batch]
        loss, metrics, ntok = stage2_loss(s.vocab, model.hf, batch, cfg.ce_w, cfg.kl_w)
        return StepLoss(loss, tokens=ntok, metrics=metrics)

    c2 = cfg.replace(out_dir=str(out / "stage2"), seed=phase_seed(cfg.seed, 3))
    # trajectories from stage 2 on: the first model that runs as the LatentSFT policy (stage 1's decoder reads the encoder's latents)
    probe = recorder_for(cfg, s.bench, lambda m: LatentSFT(max_steps=cfg.max_latent_steps, top_k=K))
    res = train(model, rows, loss2, c2, resume=resume and (Path(c2.out_dir) / "checkpoint").exists(), on_step=on_step, cancel=cancel, on_checkpoint=probe)
    results["stage2"] = {"steps": res.step, "final_loss": res.final_loss}
    if res.status != "done":
        return {"status": res.status, **results}
    hf = _merged(model.base).eval()
    _freeze(hf)
    s.bench.hf = hf
    spec = LatentSFT(max_steps=cfg.max_latent_steps, top_k=K)
    results["eval"] = quick_eval(s.bench, spec, cfg.eval_n)

    def write(tmp: Path) -> None:
        _save_model(hf, tok, tmp / "model")
        _write_policy(tmp, {"method": "latent_sft", "recipe": "latent-sft", "model": "model", "steps": cfg.max_latent_steps, "top_k": K, "end": CLOSE})

    return {"status": "done", "final": str(_finish(cfg, write, results)), **results}


__all__ = [
    "LatentSFTConfig", "run_latent_sft", "chunks", "induction_positions", "induction_mask", "supervision_mask", "decoder_kinds",
    "encode_latents", "stage1_loss", "stage2_loss", "kd_kl_topk", "logprob_at", "gumbel_perturb", "LABELS_FILE", "PHASES",
]  # fmt: skip

RUNNERS["latent-sft"] = (LatentSFTConfig, run_latent_sft)
