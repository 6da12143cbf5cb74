"""Latent trajectories next to the training path: at every checkpoint of a latent recipe,
a few fixed held-out probe problems run through the latent engine on the model (and head)
as it is at that step, and what each latent step holds is kept beside the loss curve.

    <out_dir>/
      trajectories.jsonl                         one record per checkpoint, in training order
      trajectories/step000100.safetensors        that record's vectors (COCONUT: stage2-step000100...)

A record (JSON): `step`, `stage` (COCONUT's stage k, else null), `global_step` (steps since
the run began, stages one after another), `method`, `file`, and per probe: `question`,
`answer`, the visible `text`, `pred` and `correct` (scored as `latent.evaluate` scores),
`exit`, and per latent step the top-k next-token readout (`top_tokens`, `top_probs`,
`top_ids`), the cosine-nearest token embeddings (`nearest_tokens`, `nearest_cos`), the
norms of the latent fed and of the hidden state it came from (`norm`, `norm_ratio`,
`hidden_norm`), the entropy, and `cos_prev` / `hidden_cos_prev`: the cosine to the same
latent step of the previous record (null where that record has no such step). The
vectors themselves ([n_steps, d] float32 `probe<i>.latent` and `probe<i>.hidden`) are
in the safetensors file, never in the JSON; the 2-D PCA is computed when the run is read
(`Trajectories.pca`), over every checkpoint of a probe at once, so the paths share axes.

Recording never changes training (`loop.observe`: eval mode, no grad, random states put
back); both files are written atomically (the vectors first, then the whole JSONL
rewritten), and `begin` drops what a resumed run will record again (records past the
resumed step, later stages' when a stage resumes before its end) and records a
checkpoint whose record an interrupted run never wrote. `probe_n=0` on the recipe's
config turns it off. The probes are `probe_problems(task, n)`: the first problems of the
task's held-out sets, taken in turn from each set (easiest first).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import FileFormatError, InputError, MissingFileError, check_int
from ..paths import atomic_write_bytes, atomic_write_text, check_safetensors

TRAJECTORIES_FILE = "trajectories.jsonl"
TRAJECTORIES_DIR = "trajectories"
FORMAT = "workbench-latent-trajectories"
VERSION = 1
TOP_K = 5
MAX_NEW_TOKENS = 96  # as latent.evaluate's default: room for a COCONUT stage's remaining explicit steps
HOW_TO_GET = (
    "they are recorded at every checkpoint of a latent recipe (coconut, projection-head, projection-qthink, latent-head, "
    "pause, pause-answer, latent-sft's stage 2) with probe_n > 0 (the default, 3), e.g. "
    "`workbench train coconut --out RUN --set probe_n=3`, or a latent recipe in the Training tab"
)
_FILE_RE = re.compile(r"^(?:stage(\d+)-)?step(\d{6,})\.safetensors$")


def probe_problems(task: str, n: int) -> list[Any]:
    """`n` fixed held-out problems of `task`: the first problems of its eval sets taken in
    turn (set 1's first, set 2's first, ..., then each set's second), so a few probes span
    the difficulties."""
    from .arith import eval_problems, eval_set_names

    n = check_int(n, "probe_n", low=0, high=64)
    names = eval_set_names(task)
    if n == 0:
        return []
    per = -(-n // len(names))
    sets = [eval_problems(name, per) for name in names]
    return [sets[i % len(names)][i // len(names)] for i in range(n)]


def _key(rec: dict) -> tuple[int, int]:
    return (rec.get("stage") or 0, int(rec.get("step", 0)))


def _file_name(step: int, stage: int | None) -> str:
    return (f"stage{stage}-" if stage is not None else "") + f"step{step:06d}.safetensors"


def _cos(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float()[None], b.float()[None]).item())


def _read_records(path: Path) -> list[dict]:
    """The records of a trajectories file (a torn or foreign line is skipped)."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("format") == FORMAT and isinstance(rec.get("step"), int):
            out.append(rec)
    return out


def _load_vectors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load

    check_safetensors(path, f"trajectory file {str(path)!r}")
    return load(path.read_bytes())


class TrajectoryRecorder:
    """`train(on_checkpoint=...)` for a latent recipe: at every checkpoint, `spec_fn(model)`
    (the latent policy spec of the model as it is now: the head's current tensors, the
    stage's latent count; None: nothing to record) runs the probes through
    `latent.run` on `model.hf` (or `model`) and one record is added to
    `<out_dir>/trajectories.jsonl`. `stage` / `offset`: COCONUT's stage and the steps
    of the stages before it (so `global_step` = offset + step)."""

    def __init__(self, bench: Any, out_dir: str | Path, spec_fn: Callable[[nn.Module], Any], problems: Sequence[Any], *,
                 stage: int | None = None, offset: int = 0, k: int = TOP_K, max_new_tokens: int = MAX_NEW_TOKENS):  # fmt: skip
        if not problems:
            raise InputError("a trajectory recorder needs at least one probe problem (probe_n >= 1)")
        self.bench = bench
        self.out = Path(out_dir)
        self.spec_fn = spec_fn
        self.problems = list(problems)
        self.stage = None if stage is None else check_int(stage, "stage", low=0)
        self.offset = check_int(offset, "offset", low=0)
        self.k = check_int(k, "k", low=1)
        self.max_new_tokens = check_int(max_new_tokens, "max_new_tokens", low=1)
        self._prev: dict[str, Tensor] | None = None

    @property
    def path(self) -> Path:
        return self.out / TRAJECTORIES_FILE

    # ------------------------------------------------------------------ bookkeeping

    def _write(self, records: list[dict]) -> None:
        records = sorted(records, key=_key)
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))

    def begin(self, model: nn.Module, step: int, steps: int, resumed: bool) -> None:
        """Drop records the run is about to make again: this stage's past `step`, and
        (when this stage starts before its end) every later stage's; remove vector files
        no record names; remember the last record's vectors for `cos_prev`; record `step`
        itself when a resumed run's checkpoint there has no record yet."""
        mine = lambda r: r.get("stage") == self.stage  # noqa: E731
        later = lambda r: self.stage is not None and (r.get("stage") or 0) > self.stage  # noqa: E731
        old = _read_records(self.path)
        kept = [r for r in old if not ((mine(r) and r["step"] > step) or (step < steps and later(r)))]
        if len(kept) != len(old) or (old and not self.path.read_text().endswith("\n")):
            self._write(kept)
        folder = self.out / TRAJECTORIES_DIR
        if folder.is_dir():
            named = {Path(r.get("file", "")).name for r in kept}
            for f in folder.iterdir():
                if _FILE_RE.match(f.name) and f.name not in named:
                    f.unlink(missing_ok=True)
        before = [r for r in kept if _key(r) <= ((self.stage or 0), step)]
        self._prev = None
        if before:
            last = max(before, key=_key)
            try:
                self._prev = _load_vectors(self.out / last["file"])
            except (OSError, ValueError):
                self._prev = None  # a record whose vectors are gone: no cosine for the next one
        if resumed and step > 0 and not any(mine(r) and r["step"] == step for r in kept):
            self.record(model, step)

    # ------------------------------------------------------------------ one checkpoint

    def record(self, model: nn.Module, step: int) -> dict | None:
        """Run the probes on `model` as it is now and append the record (returned)."""
        from safetensors.torch import save

        from ..latent.engine import run
        from ..latent.eval import _row, _split_at_close, prompt_for
        from ..latent.policies import stop_ids, token_id
        from ..lens import nearest_tokens

        spec = self.spec_fn(model)
        if spec is None:
            return None
        bench, tok = self.bench, self.bench.tokenizer
        kept_hf = bench.hf
        bench.hf = getattr(model, "hf", model)
        try:
            prompts = [prompt_for(p, spec.name) for p in self.problems]
            traces = run(bench, prompts, spec, max_new_tokens=self.max_new_tokens, readout=False, k=self.k, fast=False)
            close, stops = token_id(tok, "</think>"), stop_ids(bench)
            probes, tensors = [], {}
            for i, (p, tr) in enumerate(zip(self.problems, traces)):
                d = bench.arch.d_model
                lat = torch.stack([s.latent.float().cpu() for s in tr.steps]) if tr.steps else torch.zeros(0, d)
                hid = torch.stack([s.hidden.float().cpu() for s in tr.steps]) if tr.steps else torch.zeros(0, d)
                near_ids, near_cos = nearest_tokens(bench, lat, self.k) if tr.steps else (torch.zeros(0, self.k, dtype=torch.long), torch.zeros(0, self.k))
                ids = list(tr.visible_ids)
                think, vis = _split_at_close(ids, close) or (0, ids)
                row = _row(bench, stops, spec.name, p, vis, latent_steps=tr.latent_steps, latent_positions=tr.latent_positions,
                           think_steps=think, exit=tr.exit, wall_time=0.0)  # fmt: skip
                prev_l = self._prev.get(f"probe{i}.latent") if self._prev else None
                prev_h = self._prev.get(f"probe{i}.hidden") if self._prev else None
                steps = []
                for j, s in enumerate(tr.steps):
                    steps.append({
                        "top_ids": [int(t) for t in s.top_ids[: self.k]],
                        "top_probs": [round(float(v), 6) for v in s.top_probs[: self.k]],
                        "top_tokens": [tok.decode([int(t)]) for t in s.top_ids[: self.k]],
                        "nearest_ids": [int(t) for t in near_ids[j]],
                        "nearest_cos": [round(float(v), 6) for v in near_cos[j]],
                        "nearest_tokens": [tok.decode([int(t)]) for t in near_ids[j]],
                        "norm": float(s.norm), "norm_ratio": float(s.norm_ratio), "hidden_norm": float(hid[j].norm()),
                        "entropy": float(s.entropy),
                        "cos_prev": _cos(lat[j], prev_l[j]) if prev_l is not None and j < prev_l.shape[0] else None,
                        "hidden_cos_prev": _cos(hid[j], prev_h[j]) if prev_h is not None and j < prev_h.shape[0] else None,
                    })  # fmt: skip
                probes.append({
                    "id": str(p.id), "question": p.question, "answer": p.answer, "pred": row.pred, "correct": bool(row.correct),
                    "text": row.text, "exit": tr.exit, "latent_steps": tr.latent_steps, "think_steps": think, "steps": steps,
                })  # fmt: skip
                tensors[f"probe{i}.latent"], tensors[f"probe{i}.hidden"] = lat.contiguous(), hid.contiguous()
        finally:
            bench.hf = kept_hf
        name = _file_name(step, self.stage)
        meta = {"format": FORMAT, "version": str(VERSION), "step": str(step), "stage": "" if self.stage is None else str(self.stage)}
        atomic_write_bytes(self.out / TRAJECTORIES_DIR / name, save(tensors, metadata=meta))
        rec = {
            "format": FORMAT, "version": VERSION, "step": int(step), "stage": self.stage, "global_step": self.offset + int(step),
            "method": spec.name, "file": f"{TRAJECTORIES_DIR}/{name}", "k": self.k, "probes": probes,
        }  # fmt: skip
        others = [r for r in _read_records(self.path) if _key(r) != _key(rec)]
        self._write(others + [rec])
        self._prev = tensors
        return rec


def recorder_for(cfg: Any, bench: Any, spec_fn: Callable[[nn.Module], Any], *, stage: int | None = None, offset: int = 0) -> TrajectoryRecorder | None:
    """The recorder of a latent recipe's run (`cfg.out_dir`, `cfg.task`, `cfg.probe_n`
    probes), or None when `cfg.probe_n` is 0 (recording off)."""
    n = int(getattr(cfg, "probe_n", 0) or 0)
    if n == 0:
        return None
    return TrajectoryRecorder(bench, cfg.out_dir, spec_fn, probe_problems(getattr(cfg, "task", "arith"), n), stage=stage, offset=offset)


def head_tensors(module: nn.Module) -> dict[str, Tensor]:
    """A head's current parameters as the float32 tensor dict its policy spec takes
    (copies: training goes on changing the module)."""
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- reading


@dataclass
class ProbeTrajectory:
    """One probe at one checkpoint.

    latent / hidden: [n_steps, d] float32, the latent fed at each step and the hidden state
    it came from; per step (lists of length n_steps): top_tokens / top_probs / top_ids
    ([k] each, the next-token readout), nearest_tokens ([k], cosine-nearest embeddings),
    norms (||latent||), norm_ratios, hidden_norms, entropy, cos_prev / hidden_cos_prev
    (cosine to the previous record's same step, None where it has none)."""

    index: int
    problem_id: str
    question: str
    answer: Any
    pred: Any
    correct: bool
    text: str
    exit: str | None
    top_tokens: list[list[str]]
    top_probs: list[list[float]]
    top_ids: list[list[int]]
    nearest_tokens: list[list[str]]
    norms: list[float]
    norm_ratios: list[float]
    hidden_norms: list[float]
    entropy: list[float]
    cos_prev: list[float | None]
    hidden_cos_prev: list[float | None]
    latent: Tensor
    hidden: Tensor

    def __post_init__(self):
        n = len(self.top_tokens)
        for name in ("top_probs", "top_ids", "nearest_tokens", "norms", "norm_ratios", "hidden_norms", "entropy", "cos_prev", "hidden_cos_prev"):
            if len(getattr(self, name)) != n:
                raise FileFormatError(f"probe {self.index}: {name} has {len(getattr(self, name))} steps, top_tokens {n}")
        for name in ("latent", "hidden"):
            t = getattr(self, name)
            if t.ndim != 2 or t.shape[0] != n:
                raise FileFormatError(f"probe {self.index}: {name} has shape {list(t.shape)}, expected [{n}, d]")

    @property
    def n_steps(self) -> int:
        return len(self.top_tokens)


@dataclass
class CheckpointTrajectory:
    """The probes at one checkpoint: step (within its stage), stage (COCONUT's, else
    None), global_step (since the run began), method (the policy's name)."""

    step: int
    stage: int | None
    global_step: int
    method: str
    file: str
    probes: list[ProbeTrajectory]

    @property
    def label(self) -> str:
        return (f"stage {self.stage} " if self.stage is not None else "") + f"step {self.step}"


@dataclass
class Trajectories:
    """A run's recorded trajectories, checkpoints in training order."""

    run_dir: Path
    checkpoints: list[CheckpointTrajectory]

    @property
    def n_probes(self) -> int:
        return max((len(c.probes) for c in self.checkpoints), default=0)

    @property
    def questions(self) -> list[str]:
        return [p.question for p in self.checkpoints[0].probes] if self.checkpoints else []

    def path(self, probe: int) -> list[ProbeTrajectory | None]:
        """Probe `probe` at every checkpoint (None where a checkpoint lacks it)."""
        probe = check_int(probe, "probe", low=0, high=max(self.n_probes - 1, 0))
        return [c.probes[probe] if probe < len(c.probes) else None for c in self.checkpoints]

    def pca(self, probe: int, which: str = "latent") -> tuple[list[np.ndarray], np.ndarray]:
        """The 2-D PCA of probe `probe`'s latent steps (`which`: "latent", the vectors fed,
        or "hidden", the states they came from) over every checkpoint at once: a list of
        [n_steps, 2] arrays, one per checkpoint, and the explained variance ratio [2]."""
        if which not in ("latent", "hidden"):
            raise InputError(f"which must be 'latent' or 'hidden', got {which!r}")
        paths = self.path(probe)
        mats = [getattr(p, which).float().numpy() if p is not None else np.zeros((0, 0), np.float32) for p in paths]
        real = [m for m in mats if m.size]
        if not real:
            return [np.zeros((m.shape[0], 2)) for m in mats], np.zeros(2)
        Z, explained = pca_2d(np.concatenate(real))
        out, at = [], 0
        for m in mats:
            n = m.shape[0] if m.size else 0
            out.append(Z[at : at + n])
            at += n
        return out, explained


def pca_2d(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `X` [n, d] projected on their first two principal components ([n, 2]; a
    missing component is 0) and the explained variance ratio [2]. Deterministic: each
    component's sign makes its largest-magnitude loading positive."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"pca_2d needs a matrix [n, d], got shape {list(X.shape)}")
    n = X.shape[0]
    Z = np.zeros((n, 2))
    explained = np.zeros(2)
    if n < 2:
        return Z, explained
    C = X - X.mean(0, keepdims=True)
    _, S, Vt = np.linalg.svd(C, full_matrices=False)
    total = float((S**2).sum())
    m = min(2, Vt.shape[0])
    for c in range(m):
        v = Vt[c]
        if v[np.argmax(np.abs(v))] < 0:
            v = -v
        Z[:, c] = C @ v
        explained[c] = float(S[c] ** 2 / total) if total > 0 else 0.0
    return Z, explained


def _probe(i: int, p: dict, vectors: dict[str, Tensor], where: str) -> ProbeTrajectory:
    steps = p.get("steps") or []
    col = lambda key, default=None: [s.get(key, default) for s in steps]  # noqa: E731
    lat, hid = vectors.get(f"probe{i}.latent"), vectors.get(f"probe{i}.hidden")
    if lat is None or hid is None:
        raise FileFormatError(f"{where}: the vectors of probe {i} are missing")
    return ProbeTrajectory(
        index=i, problem_id=str(p.get("id", "")), question=str(p.get("question", "")), answer=p.get("answer"), pred=p.get("pred"),
        correct=bool(p.get("correct")), text=str(p.get("text", "")), exit=p.get("exit"),
        top_tokens=col("top_tokens", []), top_probs=col("top_probs", []), top_ids=col("top_ids", []), nearest_tokens=col("nearest_tokens", []),
        norms=col("norm"), norm_ratios=col("norm_ratio"), hidden_norms=col("hidden_norm"), entropy=col("entropy"),
        cos_prev=col("cos_prev"), hidden_cos_prev=col("hidden_cos_prev"), latent=lat.float(), hidden=hid.float(),
    )  # fmt: skip


def read_trajectories(run_dir: str | Path, *, missing_ok: bool = False) -> Trajectories:
    """A run folder's trajectories (`<run_dir>/trajectories.jsonl` and its vector files).
    A folder without them is a MissingFileError naming it and saying how to record them
    (`missing_ok=True`: an empty `Trajectories`, for a run that has not reached its first
    checkpoint); a record whose vector file is missing or corrupt is a FileFormatError
    naming the file."""
    root = Path(run_dir)
    if not root.is_dir():
        raise MissingFileError(f"run folder {str(root)!r} does not exist or is not a folder")
    path = root / TRAJECTORIES_FILE
    if not path.is_file() and root.name == "final" and (root.parent / TRAJECTORIES_FILE).is_file():
        root, path = root.parent, root.parent / TRAJECTORIES_FILE  # the recipe's final/ folder: its run folder has them
    if not path.is_file():
        if missing_ok:
            return Trajectories(root, [])
        raise MissingFileError(f"run folder {str(root)!r} has no latent trajectories ({TRAJECTORIES_FILE}): {HOW_TO_GET}")
    out = []
    for rec in sorted(_read_records(path), key=_key):
        f = root / str(rec.get("file", ""))
        where = f"trajectory file {str(f)!r}"
        if not _FILE_RE.match(f.name) or f.parent.resolve() != (root / TRAJECTORIES_DIR).resolve():
            raise FileFormatError(f"{str(path)!r}: the record of step {rec['step']} names vector file {rec.get('file')!r}, which is not in {str(root / TRAJECTORIES_DIR)!r}")
        if not f.is_file():
            raise FileFormatError(f"{str(path)!r}: the vector file of step {rec['step']}, {str(f)!r}, is missing (deleted or not copied with the run folder)")
        vectors = _load_vectors(f)
        probes = [_probe(i, p, vectors, where) for i, p in enumerate(rec.get("probes") or [])]
        out.append(CheckpointTrajectory(int(rec["step"]), rec.get("stage"), int(rec.get("global_step", rec["step"])), str(rec.get("method", "")), str(rec["file"]), probes))
    if not out and not missing_ok:
        raise MissingFileError(f"run folder {str(root)!r} has a {TRAJECTORIES_FILE} with no records yet: {HOW_TO_GET}")
    return Trajectories(root, out)


def read_loss_history(run_dir: str | Path) -> list[dict]:
    """The metrics rows of a run folder (`metrics.jsonl`, or its stages': COCONUT's
    `stage<k>/` with their `stage` column, other sub-runs one after another with their steps
    continued), for `viz.train.loss_figure`."""
    from .loop import METRICS_FILE, _read_metrics

    root = Path(run_dir)
    if (root / METRICS_FILE).is_file():
        return _read_metrics(root / METRICS_FILE)

    def order(p: Path) -> tuple:
        m = re.match(r"^stage(\d+)(.*)$", p.name)
        return (int(m.group(1)), m.group(2)) if m else (1 << 30, p.name)

    rows, offset = [], 0
    subs = sorted((p for p in root.iterdir() if p.is_dir() and (p / METRICS_FILE).is_file()), key=order) if root.is_dir() else []
    for sub in subs:
        got = _read_metrics(sub / METRICS_FILE)
        if re.fullmatch(r"stage\d+", sub.name):
            rows.extend(got)
            continue
        for r in got:
            rows.append({**r, "step": offset + int(r.get("step", 0)), "phase": sub.name})
        offset += max((int(r.get("step", 0)) for r in got), default=0)
    return rows




class LossHistory(list):
    """The rows a live loss curve shows (`viz.train.loss_figure`): given a run folder (a
    resumed run), its rows logged so far, then the trainer's `on_step` rows appended as
    they come. The steps a resume redoes (those after its checkpoint) replace the rows
    logged for them before, so the curve keeps the run's whole history without repeats."""

    def __init__(self, run_dir: str | Path | None = None):
        super().__init__(read_loss_history(run_dir) if run_dir is not None and Path(run_dir).is_dir() else [])

    def append(self, row: dict) -> None:  # type: ignore[override]
        def same_run(r: dict) -> bool:
            return r.get("stage") == row.get("stage") and r.get("phase") == row.get("phase")

        while self and same_run(self[-1]) and int(self[-1].get("step", 0)) >= int(row.get("step", 0)):
            self.pop()
        super().append(row)


__all__ = [
    "TrajectoryRecorder", "recorder_for", "probe_problems", "head_tensors", "read_trajectories", "read_loss_history", "LossHistory", "pca_2d",
    "Trajectories", "CheckpointTrajectory", "ProbeTrajectory", "TRAJECTORIES_FILE", "TRAJECTORIES_DIR",
]  # fmt: skip
