"""A compiled causal LM: prefill and decode artifacts over a KV cache, and its loader.

This module needs only TVM's runtime (`TVM_USE_RUNTIME_LIB=1` works): each function is an
artifact folder loaded with `ecograph.load` (its weights from the shared weights.npz), and
nothing here imports torch,
transformers (except to read a saved tokenizer when text is given) or the TVM compiler.

The folder `compile_lm` writes and `load_lm` reads:

    lm.json       what the functions are (layers, kv heads, head dim, vocab, max_seq_len, the
                  cache layout, ...)
    prefill/      artifact: input_ids [batch, T] -> logits [batch, T, vocab], kv (T positions)
    decode/       artifact: input_ids [batch, 1], past_kv (S positions) -> logits [batch, 1,
                  vocab], kv (1 position)
    decode1/      the same step for one sequence (batch 1), which generate uses when the batch
                  is 1 (its products are matrix-vector kernels; LMs built before it lack it)
    weights.npz   the weights the functions read (each distinct array once; the artifacts'
                  manifests name theirs by key, lm.json holds the file's SHA-256)
    tokenizer/    (optional) the model's tokenizer, saved with save_pretrained

The KV cache is one buffer for prompt + new tokens, laid out as lm.json's kv_layout says:

    head-major (CPU builds) [2 x layers, batch, kv_heads, positions, head_dim]: each head's
        positions are contiguous; the first S positions are a strided view of the buffer
        that the CPU attention kernel reads in place (the decode artifacts' manifests mark
        past_kv "views").
    sequence-first (GPU builds, and LMs built before head-major) [positions, 2, layers,
        batch, kv_heads, head_dim]: the first S positions `buf[:S]` are a compact view, the
        only kind TVM makes of device memory.

Each step returns only the new position, written into the buffer after the S before it. On
CPU the buffer is host memory (64-byte aligned, handed to TVM without a copy); on a GPU it is
a TVM tensor on the device, so a step moves only its token ids in and its logits out
(`generate(kv_cache=...)` chooses otherwise).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ecograph.errors import ArtifactError, InputError, UsageError
from ecograph.lm.capture import HEAD_MAJOR, SEQUENCE_FIRST, kv_axes, kv_shape

LM_JSON = "lm.json"
LM_FORMAT = 1  # of lm.json
REQUIRED_FUNCTIONS = ("prefill", "decode")
FUNCTIONS = (*REQUIRED_FUNCTIONS, "decode1")  # decode1 optional (absent from older builds)
TOKENIZER_DIR = "tokenizer"
WEIGHTS_FILE = "weights.npz"  # shared by the functions (backends/tvm/build.share_params)
_ALIGN = 64  # TVM's kAllocAlignment: an aligned buffer is read in place


@dataclass(frozen=True)
class LMSpec:
    """What the compiled functions compute, as recorded in lm.json."""

    model_type: str
    architecture: str
    vocab_size: int
    layers: int
    kv_heads: int
    head_dim: int
    max_seq_len: int
    kv_dtype: str = "float32"
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    quantization: str = ""
    target: str = ""
    has_tokenizer: bool = False
    check: dict[str, Any] = field(default_factory=dict)
    # the shared weights file: {"file", "sha256", "bytes", "arrays", "bytes_before"}; None
    # when each function holds its own weights (all small, or an LM built before sharing)
    weights: dict[str, Any] | None = None
    functions: tuple[str, ...] = REQUIRED_FUNCTIONS  # the artifact folders it has
    kv_layout: str = SEQUENCE_FIRST  # or HEAD_MAJOR (module docstring)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["eos_token_ids"] = list(self.eos_token_ids)
        data["functions"] = list(self.functions)
        return {"format": LM_FORMAT, **data}

    @classmethod
    def from_json(cls, data: Any, path: Path) -> LMSpec:
        """The spec in `data` (lm.json's content), every key checked; ArtifactError otherwise."""
        fix = "rebuild it with ecograph.compile_lm"
        if not isinstance(data, dict):
            raise ArtifactError(f"{path}: must hold a JSON object; {fix}")
        if data.get("format") != LM_FORMAT:
            raise ArtifactError(
                f"{path}: 'format' is {data.get('format')!r}, not {LM_FORMAT}; {fix} with this "
                "version of ecograph"
            )
        ints = ("vocab_size", "layers", "kv_heads", "head_dim", "max_seq_len")
        strs = ("model_type", "architecture", "kv_dtype", "quantization", "target")
        for key in ints:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArtifactError(f"{path}: '{key}' must be a positive integer; {fix}")
        for key in strs:
            if not isinstance(data.get(key), str):
                raise ArtifactError(f"{path}: '{key}' must be a string; {fix}")
        eos = data.get("eos_token_ids")
        if not isinstance(eos, list) or not all(_is_token(t, data["vocab_size"]) for t in eos):
            raise ArtifactError(f"{path}: 'eos_token_ids' must be a list of token ids; {fix}")
        pad = data.get("pad_token_id")
        if pad is not None and not _is_token(pad, data["vocab_size"]):
            raise ArtifactError(f"{path}: 'pad_token_id' must be a token id or null; {fix}")
        if not isinstance(data.get("has_tokenizer"), bool):
            raise ArtifactError(f"{path}: 'has_tokenizer' must be true or false; {fix}")
        check = data.get("check", {})
        if not isinstance(check, dict):
            raise ArtifactError(f"{path}: 'check' must be an object; {fix}")
        functions = data.get("functions", list(REQUIRED_FUNCTIONS))
        if (
            not isinstance(functions, list)
            or not set(functions) <= set(FUNCTIONS)
            or not set(REQUIRED_FUNCTIONS) <= set(functions)
            or len(set(functions)) != len(functions)
        ):
            raise ArtifactError(
                f"{path}: 'functions' must list prefill, decode and optionally decode1; {fix}"
            )
        layout = data.get("kv_layout", SEQUENCE_FIRST)  # absent: built before head-major
        if layout not in (SEQUENCE_FIRST, HEAD_MAJOR):
            raise ArtifactError(
                f"{path}: 'kv_layout' must be {SEQUENCE_FIRST!r} or {HEAD_MAJOR!r}; {fix}"
            )
        weights = data.get("weights")
        if weights is not None and not _is_weights_entry(weights):
            raise ArtifactError(
                f"{path}: 'weights' must be null or {{file: {WEIGHTS_FILE!r}, sha256: 64 hex "
                f"digits, bytes, arrays, bytes_before: integers >= 0}}; {fix}"
            )
        return cls(
            **{k: data[k] for k in (*ints, *strs)},
            eos_token_ids=tuple(eos),
            pad_token_id=pad,
            has_tokenizer=data["has_tokenizer"],
            check=check,
            weights=weights,
            functions=tuple(functions),
            kv_layout=layout,
        )

    @property
    def head_major(self) -> bool:
        return self.kv_layout == HEAD_MAJOR

    def kv_shape(self, positions: int | None, batch: int | None) -> tuple[Any, ...]:
        """The cache's shape at `positions` positions of `batch` sequences (None: any)."""
        return kv_shape(
            self.head_major, self.layers, self.kv_heads, self.head_dim, positions, batch
        )  # type: ignore[arg-type]


def _is_weights_entry(value: Any) -> bool:
    """lm.json's 'weights': the shared file by its one name, its SHA-256, its counts."""
    if not isinstance(value, dict) or value.get("file") != WEIGHTS_FILE:
        return False
    from ecograph.backends.tvm.artifact import is_sha256

    if not is_sha256(value.get("sha256")):
        return False
    counts = [value.get(k) for k in ("bytes", "arrays", "bytes_before")]
    return all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)


def _is_token(value: Any, vocab: Any) -> bool:
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok and isinstance(vocab, int) and 0 <= value < vocab


@dataclass(frozen=True)
class GenerateStats:
    """What one generate() call measured. Times are wall-clock seconds on this process.

    `time_to_first_token_s` is the prefill call plus choosing the first token;
    `decode_tokens_per_s` counts the tokens the decode steps produced over the whole batch.
    Energy is per decoded token from a hardware counter (`energy_kind` "measured"), or from a
    power figure the caller declared ("estimated"), else None with `energy_kind`
    "unavailable"; `energy_method` says which counter or why none."""

    batch: int
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    time_to_first_token_s: float
    decode_s: float
    decode_tokens_per_s: float | None
    joules_per_token: float | None
    energy_kind: str
    energy_method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        rate = (
            f"{self.decode_tokens_per_s:.1f} tokens/s"
            if self.decode_tokens_per_s is not None
            else "n/a (one token: no decode step)"
        )
        if self.joules_per_token is None:
            energy = f"unavailable ({self.energy_method})"
        else:
            energy = (
                f"{self.joules_per_token:.4g} J/token ({self.energy_kind}: {self.energy_method})"
            )
        return (
            f"prompt {self.prompt_tokens} tokens x batch {self.batch}, {self.new_tokens} new; "
            f"time to first token {self.time_to_first_token_s * 1e3:.1f} ms (prefill "
            f"{self.prefill_s * 1e3:.1f} ms); decode {rate}; energy {energy}"
        )


class Generation(NamedTuple):
    """What generate() returns: `tokens` [batch, prompt + new] (the prompt, then the new
    tokens, like Hugging Face's generate) and the stats of the call."""

    tokens: np.ndarray
    stats: GenerateStats

    @property
    def new_tokens(self) -> np.ndarray:
        return self.tokens[:, self.stats.prompt_tokens :]


class CompiledLM:
    """A causal LM compiled into a prefill and decode functions (see the module docstring).

    `generate` runs prefill on the prompt, then one decode step per new token over a KV
    cache (`decode1` for a batch of one where the build has it, else `decode`); `logits` runs
    prefill alone (logits at every position, for perplexity)."""

    def __init__(
        self, path: Path, spec: LMSpec, prefill: Any, decode: Any, decode1: Any = None
    ) -> None:
        self.path = path
        self.spec = spec
        self.prefill = prefill
        self.decode = decode
        self.decode1 = decode1
        self._tokenizer: Any = None

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"<CompiledLM {s.architecture} {s.layers} layers, max_seq_len {s.max_seq_len}, "
            f"target {s.target!r}, quantization {s.quantization or 'none'} at {self.path}>"
        )

    @property
    def max_seq_len(self) -> int:
        return self.spec.max_seq_len

    @property
    def device(self) -> str:
        """The device the functions run on, as measure.py names it ("cpu", "cuda:0")."""
        dev = self.decode.device
        if dev is None or dev.dlpack_device_type() == 1:
            return "cpu"
        return f"cuda:{dev.index}"

    # ------------------------------------------------------------------ running

    def logits(self, input_ids: Any) -> np.ndarray:
        """Logits at every position of `input_ids` ([T] or [batch, T] token ids):
        [T, vocab] or [batch, T, vocab], from one prefill call."""
        ids, one_d = self._token_array(input_ids)
        self._check_length(ids.shape[1], 0)
        logits, _ = self.prefill.run_numpy([ids])
        return logits[0] if one_d else logits

    def generate(
        self,
        input_ids: Any,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
        *,
        stop_at_eos: bool = True,
        declared_power_watts: float | None = None,
        kv_cache: str = "auto",
    ) -> Generation:
        """Continue `input_ids` ([T] or [batch, T] token ids; rows of one batch share their
        length) by up to `max_new_tokens` tokens.

        temperature 0 is greedy (argmax); above 0 tokens are sampled from softmax(logits /
        temperature), among the `top_k` most likely when given, with numpy's generator seeded
        by `seed`. With `stop_at_eos` (the default) a row that produced an end-of-sequence
        token (lm.json's eos_token_ids) continues with the pad token (or that eos token),
        and generation stops once every row has, as Hugging Face's generate does.
        `kv_cache` says where the cache lives: "host" (numpy memory, read in place on CPU,
        copied to a GPU each step), "device" (a TVM tensor on the functions' device: on a
        GPU nothing but the new token and its logits cross the bus), or "auto" (the default:
        host on CPU, device elsewhere).
        Returns Generation(tokens [batch, T + new], stats); see GenerateStats."""
        ids, _ = self._token_array(input_ids)
        batch, prompt = ids.shape
        steps = _count(max_new_tokens, "max_new_tokens")
        temp = _temperature(temperature)
        k = None if top_k is None else _count(top_k, "top_k")
        self._check_length(prompt, steps)
        rng = np.random.default_rng(seed)
        eos = np.array(self.spec.eos_token_ids if stop_at_eos else (), np.int64)
        pad = self.spec.pad_token_id
        if pad is None and eos.size:
            pad = int(eos[0])

        # the last new token is never fed back, so the cache holds prompt + steps - 1 positions
        cache = self._cache(kv_cache, self.spec.kv_shape(prompt + steps - 1, batch))
        counter, reason = _energy_counter(self.device)
        try:
            t0 = time.perf_counter()
            logits = cache.prefill(self.prefill, ids)
            prefill_s = time.perf_counter() - t0
            token = _choose(logits, temp, k, rng)
            t_first = time.perf_counter()
            out = [token]
            done = np.isin(token, eos)
            e0 = counter.read() if counter is not None else None
            t1 = time.perf_counter()
            step_ids = np.empty((batch, 1), np.int64)
            step = self.decode1 if batch == 1 and self.decode1 is not None else self.decode
            for pos in range(prompt, prompt + steps - 1):
                if done.all():
                    break
                step_ids[:, 0] = token
                logits = cache.step(step, step_ids, pos)
                token = _choose(logits, temp, k, rng)
                if pad is not None:
                    token = np.where(done, pad, token)
                done |= np.isin(token, eos)
                out.append(token)
            decode_s = time.perf_counter() - t1
            joules = None if e0 is None or counter is None else counter.read() - e0
        finally:
            if counter is not None:
                counter.close()
        decoded = (len(out) - 1) * batch
        tokens = np.concatenate([ids, np.stack(out, axis=1)], axis=1)
        stats = _stats(
            batch, prompt, len(out), prefill_s, t_first - t0, decode_s, decoded, joules,
            counter.method if counter is not None else reason, declared_power_watts,
        )  # fmt: skip
        return Generation(tokens, stats)

    def _cache(self, where: str, shape: tuple[int, ...]) -> _HostCache | _DeviceCache:
        """An empty KV cache of `shape` where `where` ("auto", "host", "device") says."""
        if where not in ("auto", "host", "device"):
            raise UsageError(f"kv_cache must be 'auto', 'host' or 'device', got {where!r}")
        dtype = np.dtype(self.spec.kv_dtype)
        device = self.decode.device  # None: a build this machine cannot run (its calls say so)
        axis, _ = kv_axes(self.spec.head_major)  # the positions' axis
        if where == "host" or device is None or (where == "auto" and self.device == "cpu"):
            return _HostCache(shape, dtype, axis)
        if self.spec.head_major:
            return _HostCacheOnDevice(shape, dtype, axis, device)
        return _DeviceCache(shape, dtype, device)

    # ---------------------------------------------------------------- tokenizer

    @property
    def tokenizer(self) -> Any:
        """The tokenizer saved with the model (transformers' AutoTokenizer), or None."""
        if self._tokenizer is None and self.spec.has_tokenizer:
            folder = self.path / TOKENIZER_DIR
            try:
                from transformers import AutoTokenizer
            except ImportError as exc:
                raise UsageError(
                    f"{folder} holds a tokenizer, and reading it needs transformers (pip "
                    "install transformers); or give token ids instead of text"
                ) from exc
            self._tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return self._tokenizer

    def encode(self, text: str) -> np.ndarray:
        """Token ids [1, T] of `text` by the saved tokenizer; UsageError when there is none."""
        tok = self.tokenizer
        if tok is None:
            raise UsageError(
                f"{self.path} has no tokenizer, so text cannot be turned into tokens: give "
                "token ids (e.g. '1 2 3' on the command line), or compile with "
                "compile_lm(..., tokenizer=...) or from a model folder that holds one"
            )
        return np.asarray(tok(text, return_tensors="np")["input_ids"], np.int64)

    def decode_text(self, tokens: Any) -> str:
        tok = self.tokenizer
        if tok is None:
            raise UsageError(f"{self.path} has no tokenizer to turn tokens into text")
        return str(tok.decode(list(np.asarray(tokens).reshape(-1)), skip_special_tokens=True))

    # --------------------------------------------------------------------- save

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        """Copy this LM's folder (lm.json, prefill/, decode/, tokenizer/) to `out_dir`,
        atomically: a temporary folder beside it, then a rename. Load it with load_lm."""
        out = Path(out_dir)
        if out.resolve() == self.path.resolve():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            shutil.copytree(self.path, tmp / "lm")
            if out.exists():
                if not (out / LM_JSON).is_file():
                    raise UsageError(
                        f"{out} exists and is not a compiled LM folder; give a new or empty "
                        "folder, or remove it first"
                    )
                shutil.rmtree(out)
            os.replace(tmp / "lm", out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    # ---------------------------------------------------------------- checking

    def _token_array(self, input_ids: Any) -> tuple[np.ndarray, bool]:
        """`input_ids` as an int64 [batch, T] array, and whether it was given as [T]."""
        if hasattr(input_ids, "detach"):
            input_ids = input_ids.detach().cpu().numpy()
        try:
            arr = np.asarray(input_ids)
        except (TypeError, ValueError) as exc:
            raise InputError(f"input_ids must be token ids ([T] or [batch, T]): {exc}") from exc
        if arr.ndim not in (1, 2) or arr.size == 0:
            raise InputError(
                f"input_ids has shape {list(arr.shape)}; give token ids as [T] or [batch, T] "
                "with at least one token"
            )
        if arr.dtype.kind not in "iu":
            raise InputError(f"input_ids has dtype {arr.dtype}; token ids are integers")
        vocab = self.spec.vocab_size
        bad = (arr < 0) | (arr >= vocab)
        if bad.any():
            raise InputError(
                f"input_ids holds {int(arr[bad].reshape(-1)[0])}, outside the vocabulary "
                f"[0, {vocab}); give token ids of this model's tokenizer"
            )
        one_d = arr.ndim == 1
        return np.ascontiguousarray(arr.reshape(1, -1) if one_d else arr, np.int64), one_d

    def _check_length(self, prompt: int, new: int) -> None:
        limit = self.spec.max_seq_len
        if prompt > limit:
            raise InputError(
                f"the prompt has {prompt} tokens, more than max_seq_len={limit} this LM was "
                f"compiled for; shorten it to {limit} tokens (for perplexity, score the text "
                "in windows) or compile with a larger max_seq_len"
            )
        if prompt + new > limit:
            raise InputError(
                f"the prompt has {prompt} tokens and max_new_tokens={new} would run to "
                f"{prompt + new} positions, past max_seq_len={limit}; ask for at most "
                f"{limit - prompt} new tokens, shorten the prompt, or compile with a larger "
                "max_seq_len"
            )


# ------------------------------------------------------------------ helpers


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UsageError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise UsageError(f"{name} must be at least 1, got {value}")
    return int(value)


def _temperature(value: Any) -> float:
    try:
        temp = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"temperature must be a number >= 0, got {value!r}") from None
    if not temp >= 0 or temp == float("inf"):
        raise UsageError(f"temperature must be a finite number >= 0 (0: greedy), got {value!r}")
    return temp


def _choose(
    logits: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator
) -> np.ndarray:
    """The next token of each row of `logits` [batch, vocab]: argmax at temperature 0, else
    a sample from softmax(logits / temperature) over the top_k most likely tokens."""
    if temperature == 0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    scaled = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = np.partition(scaled, -top_k, axis=-1)[:, -top_k][:, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    scaled -= scaled.max(axis=-1, keepdims=True)
    probs = np.exp(scaled)
    probs /= probs.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(probs, axis=-1)
    draws = rng.random((logits.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf <= draws).sum(axis=-1), logits.shape[-1] - 1).astype(np.int64)


def _positions(buf: Any, axis: int, start: int, stop: int) -> Any:
    """Positions [start, stop) of a cache array whose positions lie along `axis`: a view."""
    return buf[(slice(None),) * axis + (slice(start, stop),)]


class _HostCache:
    """The KV cache in host memory, positions along `axis` (0: sequence first, 3: head
    major): the first S positions go to the functions as a view of the buffer (read in place
    on CPU, copied to a GPU on each call), each step's position is written back."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, axis: int) -> None:
        self.buf = _aligned_empty(shape, dtype)
        self.axis = axis

    def _run(self, fn: Any, arrays: list[np.ndarray]) -> Any:
        return fn.run_numpy(arrays)

    def prefill(self, fn: Any, ids: np.ndarray) -> np.ndarray:
        """Run prefill on `ids`, keep its keys and values; the last position's logits."""
        logits, kv = self._run(fn, [ids])
        _positions(self.buf, self.axis, 0, kv.shape[self.axis])[...] = kv
        return logits[:, -1]

    def step(self, fn: Any, ids: np.ndarray, pos: int) -> np.ndarray:
        """Run decode step `fn` on `ids` over positions [0, pos), keep position pos; logits."""
        logits, kv = self._run(fn, [ids, _positions(self.buf, self.axis, 0, pos)])
        _positions(self.buf, self.axis, pos, pos + 1)[...] = kv
        return logits[:, -1]


class _HostCacheOnDevice(_HostCache):
    """A head-major cache (a CPU build) where kv_cache="device" asks for one: the host
    buffer, since the CPU is the device, handed to the functions as TVM tensors through
    `run_device` (the first S positions a strided view). A GPU cannot take this layout: TVM
    makes strided views of host memory only."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, axis: int, device: Any) -> None:
        import tvm

        if device.dlpack_device_type() != tvm.cpu().dlpack_device_type():
            raise UsageError(
                f"this LM's KV cache is head-major (lm.json's kv_layout), which TVM cannot "
                f"view in place on {device}; give kv_cache='host', or rebuild it for this "
                "device with ecograph.compile_lm (GPU builds keep the cache sequence-first)"
            )
        super().__init__(shape, dtype, axis)

    def _run(self, fn: Any, arrays: list[np.ndarray]) -> Any:
        import tvm_ffi

        tensors = [tvm_ffi.from_dlpack(a, require_contiguous=False) for a in arrays]
        return [out.numpy() for out in fn.run_device(tensors)]


class _DeviceCache:
    """The KV cache as one TVM tensor on the functions' device. Positions [0, S) are a view
    of its start (sequence axis first, so contiguous); each step's new position is copied
    into it on the device. Only token ids go to the device and logits come back."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, device: Any) -> None:
        import tvm

        self.shape, self.device = shape, device
        self.row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        try:
            self.buf = tvm.runtime.empty(shape, str(dtype), device)
        except Exception as exc:  # the device is out of memory
            raise InputError(
                f"a KV cache of {list(shape)} ({dtype}, {self.row_bytes * shape[0]} bytes) "
                f"does not fit on {device}: {exc}; ask for fewer tokens or a smaller batch, "
                "or keep the cache on the host (kv_cache='host')"
            ) from exc
        self.ids: Any = None

    def _view(self, start: int, count: int) -> Any:
        return self.buf._create_view(
            (count, *self.shape[1:]), relative_byte_offset=start * self.row_bytes
        )

    def _ids(self, ids: np.ndarray) -> Any:
        import tvm

        if self.ids is None or tuple(self.ids.shape) != ids.shape:
            self.ids = tvm.runtime.empty(ids.shape, str(ids.dtype), self.device)
        return self.ids.copyfrom(ids)

    def prefill(self, fn: Any, ids: np.ndarray) -> np.ndarray:
        logits, kv = fn.run_device([self._ids(ids)])
        self._view(0, kv.shape[0]).copyfrom(kv)
        # only the last position's logits cross the bus ([batch, T, vocab] would be T times more)
        batch, length, vocab = (int(d) for d in logits.shape)
        size = vocab * np.dtype(str(logits.dtype)).itemsize
        rows = [
            logits._create_view((vocab,), relative_byte_offset=(b * length + length - 1) * size)
            for b in range(batch)
        ]
        return np.stack([r.numpy() for r in rows])

    def step(self, fn: Any, ids: np.ndarray, pos: int) -> np.ndarray:
        logits, kv = fn.run_device([self._ids(ids), self._view(0, pos)])
        self._view(pos, 1).copyfrom(kv)
        return logits.numpy()[:, -1]


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary, so that
    every prefix along axis 0 is a view TVM reads in place."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def _energy_counter(device: str) -> tuple[Any, str]:
    from ecograph.report.measure import energy_counter

    return energy_counter(device)


def _stats(
    batch: int,
    prompt: int,
    new: int,
    prefill_s: float,
    ttft: float,
    decode_s: float,
    decoded: int,
    joules: float | None,
    method: str,
    declared_watts: float | None,
) -> GenerateStats:
    rate = decoded / decode_s if decoded and decode_s > 0 else None
    per_token, kind = None, "unavailable"
    if joules is not None and decoded:
        per_token, kind = joules / decoded, "measured"
        method = f"{method}, over {decoded} decoded tokens (whole device, other processes too)"
    elif joules is None and declared_watts is not None and decoded:
        per_token, kind = declared_watts * decode_s / decoded, "estimated"
        method = f"decode time x declared power {declared_watts:g} W; {method}"
    elif not decoded:
        method = "no decode step ran (one new token comes from prefill)"
    return GenerateStats(
        batch, prompt, new, prefill_s, ttft, decode_s, rate, per_token, kind, method
    )


# ------------------------------------------------------------------ loading


def read_spec(folder: Path) -> LMSpec:
    """lm.json of a compiled-LM folder, checked; ArtifactError when it is not one."""
    path = folder / LM_JSON
    if not folder.is_dir():
        raise ArtifactError(
            f"{folder} is not a compiled LM (not a folder); give the folder that "
            "CompiledLM.save or ecograph.compile_lm wrote"
        )
    if path.is_symlink() or not path.is_file():
        raise ArtifactError(
            f"{folder} is not a compiled LM (no {LM_JSON}); give the folder that "
            "CompiledLM.save or ecograph.compile_lm wrote"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc}); rebuild it with compile_lm") from None
    return LMSpec.from_json(data, path)


def load_lm(
    path: str | os.PathLike[str], device: Any = None, *, threads: int | str | None = None
) -> CompiledLM:
    """Load a folder written by `CompiledLM.save` (or `compile_lm(out_dir=...)`).

    Each function is loaded with `ecograph.load` (its manifest and hashes checked first), so
    this needs only TVM's runtime; the weights file they share (weights.npz) is checked
    against lm.json's SHA-256 first and put on the device once for all. `device` and
    `threads` are load's. The functions' inputs and outputs are checked against lm.json; a
    mismatch raises ArtifactError."""
    from ecograph.backends.tvm.runtime import load, open_shared_weights

    folder = Path(path)
    spec = read_spec(folder)
    shared = None
    if spec.weights is not None:
        shared = open_shared_weights(
            folder / WEIGHTS_FILE,
            spec.weights["sha256"],
            folder / LM_JSON,
            "rebuild it with ecograph.compile_lm",
        )
    fns = {n: load(folder / n, device, threads=threads, shared=shared) for n in spec.functions}
    _check_signatures(folder, spec, {n: f.manifest for n, f in fns.items()})
    return CompiledLM(folder, spec, fns["prefill"], fns["decode"], fns.get("decode1"))


def _check_signatures(folder: Path, spec: LMSpec, manifests: dict[str, Any]) -> None:
    """The artifacts take and return what lm.json says (names aside: positions matter)."""
    kv, vocab = spec.kv_shape, spec.vocab_size
    want = {
        "prefill": ([[None, None]], [[None, None, vocab], kv(None, None)]),
        "decode": ([[None, 1], kv(None, None)], [[None, 1, vocab], kv(1, None)]),
        "decode1": ([[1, 1], kv(None, 1)], [[1, 1, vocab], kv(1, 1)]),
    }
    for name, manifest in manifests.items():
        ins, outs = want[name]
        for kind, shapes in (("inputs", ins), ("outputs", outs)):
            got = [t["shape"] for t in manifest[kind]]
            if len(got) != len(shapes) or not all(
                _shape_fits(g, w) for g, w in zip(got, shapes, strict=True)
            ):
                raise ArtifactError(
                    f"{folder / name}: its {kind} have shapes {got}, which do not fit "
                    f"{folder / LM_JSON} ({len(shapes)} tensors like {shapes}; None = any); "
                    "the folder mixes builds: rebuild it with ecograph.compile_lm"
                )


def _shape_fits(got: Sequence[Any], want: Sequence[Any]) -> bool:
    if len(got) != len(want):
        return False
    return all(w is None or g == w for g, w in zip(got, want, strict=True))
