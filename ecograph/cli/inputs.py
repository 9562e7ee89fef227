"""What the command line reads: MODEL arguments, argument types, input and calibration
files, targets."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
from pathlib import Path
from typing import Any

from ecograph.cli.console import Console
from ecograph.errors import BuildError, EcographError, InputError, UsageError


def load_model(spec: str, con: Console | None = None) -> tuple[Any, Any]:
    """(graph or torch module, example inputs or None) for a MODEL argument."""
    if con is not None:
        con.progress(f"loading {spec}")
    if spec == "default":
        from ecograph.models import build_default_model, example_inputs

        return build_default_model(), example_inputs()
    if Path(spec).is_file():
        from ecograph.frontend.onnx import from_onnx

        return from_onnx(spec), None
    if spec.endswith(".onnx"):
        raise UsageError(f"MODEL {spec} does not exist; give the path of an .onnx file")
    if ":" not in spec:
        raise UsageError(
            f"MODEL {spec!r} is neither an existing .onnx file nor 'package.module:factory' "
            "(nor 'default', the bundled encoder block)"
        )
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise UsageError(
                f"cannot import {module_name!r} for MODEL {spec!r}: no such module; check the "
                "name and that its folder is on PYTHONPATH"
            ) from exc
        raise EcographError(f"importing {module_name!r} for MODEL {spec!r} failed: {exc}") from exc
    except Exception as exc:  # the user's module failed while importing
        raise EcographError(
            f"importing {module_name!r} for MODEL {spec!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UsageError(f"{module_name} has no callable {attr!r} (MODEL {spec!r})")
    try:
        made = factory()
    except EcographError:
        raise
    except Exception as exc:  # the user's factory failed: not a bug in ecograph
        raise EcographError(
            f"MODEL factory {spec} raised {type(exc).__name__}: {exc}; it must return "
            "(torch module, example inputs) or an ecograph Graph"
        ) from exc
    if isinstance(made, tuple) and len(made) == 2:
        return made
    return made, None


def to_graph(model: Any, example_inputs: Any) -> Any:
    """An ecograph Graph from whatever load_model returned."""
    from ecograph.ir import Graph

    if isinstance(model, Graph):
        return model
    from ecograph.frontend.torch import from_torch

    if example_inputs is None:
        raise EcographError("a torch model needs example inputs: return (module, inputs)")
    return from_torch(model, example_inputs)


def binding(text: str) -> tuple[str, int]:
    """--bind NAME=INT."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected SYM=N (e.g. seq=128), got {text!r}")
    return name, int(value)


def input_file(text: str) -> tuple[str, str]:
    """--input NAME=FILE.npy."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.npy, got {text!r}")
    return name, path


_DEVICE = re.compile(r"cpu|cuda|cuda:\d+")


def device_arg(text: str) -> str:
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def int_at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def cosine_budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"a cosine similarity budget is in (0, 1] (e.g. 0.99), got {text!r}"
        )
    return value


def _load_array(path: Path) -> Any:
    """One array from an .npy file, without pickle; InputError naming the file otherwise."""
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except MemoryError as exc:
        raise InputError(f"{path}: too large to load into memory") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from exc


def _load_npz(path: Path) -> dict[str, Any]:
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except MemoryError as exc:
        raise InputError(f"{path}: too large to load into memory") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz archive of arrays ({exc})") from exc


def input_feeds(specs: list[tuple[str, str]]) -> dict[str, Any]:
    """Feeds from --input NAME=FILE.npy (loaded without pickle)."""
    feeds: dict[str, Any] = {}
    for name, path in specs:
        if not Path(path).is_file():
            raise UsageError(f"--input {name}={path}: {path} does not exist")
        feeds[name] = _load_array(Path(path))
    return feeds


def load_calibration(folder: str, graph: Any, flag: str = "--calibration") -> list[dict[str, Any]]:
    """The input sets in a --calibration folder (or another `flag`'s: --validation, --train),
    sorted by file name: each NAME.npz holds one array per graph input, named like it; each
    NAME.npy the input of a single-input model. Loaded without pickle; every array is checked
    against the graph input's dtype and shape."""
    names = [v.name for v in graph.inputs]
    how = (
        f"give a folder of .npz files, one input set each with arrays named {names} "
        "(numpy.savez), or of .npy files for a single-input model"
    )
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"{flag} {folder} is not a folder; {how}")
    files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy") and p.is_file())
    if not files:
        raise UsageError(f"{flag} {folder} holds no .npz or .npy files; {how}")
    sets: list[dict[str, Any]] = []
    for f in files:
        if f.suffix == ".npy":
            if len(names) != 1:
                raise InputError(
                    f"{f}: an .npy file holds one array and the model has {len(names)} inputs "
                    f"{names}; save each input set as an .npz with arrays named like them"
                )
            arrays = {names[0]: _load_array(f)}
        else:
            arrays = _load_npz(f)
        missing = [n for n in names if n not in arrays]
        unknown = sorted(set(arrays) - set(names))
        if missing or unknown:
            raise InputError(
                f"{f}: holds arrays {sorted(arrays)}, the graph inputs are {names} (missing "
                f"{missing}, unknown {unknown}); name each array like its graph input"
            )
        for v in graph.inputs:
            _check_input(f, v, arrays[v.name])
        sets.append({n: arrays[n] for n in names})
    return sets


def _check_input(source: Path, value: Any, array: Any) -> None:
    want = value.dtype.numpy
    shape = list(value.shape)
    fits = len(array.shape) == len(shape) and all(
        not isinstance(d, int) or d == n for d, n in zip(shape, array.shape, strict=True)
    )
    if array.dtype != want or not fits:
        raise InputError(
            f"{source}: array {value.name!r} is {array.dtype}{list(array.shape)}; the graph "
            f"input is {value.dtype.value}{shape}"
        )


def resolve(target: str) -> Any:
    """The TargetSpec for a --target value; a name TVM or ecograph does not know is a usage
    error. Resolved once, here; the spec travels down."""
    from ecograph.api import resolve_target

    try:
        return resolve_target(target)
    except BuildError as exc:
        raise UsageError(f"--target {target}: {exc}") from exc


def spec_that_runs_here(target: str) -> Any:
    """The TargetSpec for `target`, refused (UsageError) if its code cannot run here."""
    from ecograph.api import check_runs_here

    spec = resolve(target)
    try:
        check_runs_here(spec)
    except BuildError as exc:
        raise UsageError(str(exc)) from exc
    return spec


def available_memory() -> int | None:
    """Bytes of memory available to allocate now (MemAvailable on Linux), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def random_feeds(specs: list[dict[str, Any]], dim: int) -> dict[str, Any]:
    """Random inputs for the manifest `specs` (symbolic dims = `dim`), refused (InputError
    naming the input and its size) before allocating when they do not fit in memory."""
    import numpy as np

    from ecograph.ir.dtypes import DType

    planned: list[tuple[str, list[int], Any]] = []
    total = 0
    limit = available_memory()
    for spec in specs:
        shape = [d if isinstance(d, int) else dim for d in spec["shape"]]
        dtype = DType.parse(spec["dtype"]).numpy
        size = math.prod(shape) * dtype.itemsize
        total += size
        if limit is not None and total > limit:
            raise InputError(
                f"input {spec['name']!r} would be {dtype}{shape} = {_human(size)}, more than the "
                f"{_human(limit)} of memory available; lower --dim or give the input with --input"
            )
        planned.append((spec["name"], shape, dtype))
    rng = np.random.default_rng(0)
    feeds: dict[str, Any] = {}
    for name, shape, dtype in planned:
        try:
            if dtype.kind == "f" or dtype.name == "bfloat16":
                feeds[name] = rng.standard_normal(shape).astype(dtype)
            else:
                feeds[name] = rng.integers(0, 2, shape).astype(dtype)
        except MemoryError as exc:
            raise InputError(
                f"input {name!r} ({dtype}{shape}) does not fit in memory; lower --dim"
            ) from exc
    return feeds


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def is_artifact(text: str) -> bool:
    folder = Path(text)
    if not folder.is_dir():
        return False
    if not (folder / "manifest.json").is_file():
        raise UsageError(
            f"{folder} is a folder but not an ecograph artifact (no manifest.json); give an "
            "artifact folder written by 'ecograph compile', an .onnx file, "
            "'package.module:factory' or 'default'"
        )
    return True


def example_dims(graph: Any, inputs: Any) -> dict[str, int]:
    """Sizes of the symbolic dims in a model's own example inputs (empty without them)."""
    if inputs is None:
        return {}
    from ecograph.api import feeds_for

    dims: dict[str, int] = {}
    feeds = feeds_for(graph, inputs)
    for v in graph.inputs:
        for d, n in zip(v.shape, feeds[v.name].shape, strict=False):
            if isinstance(d, str):
                dims.setdefault(d, int(n))
    return dims


def check_binds(binds: dict[str, int], inputs: list[tuple[str, list[Any]]]) -> None:
    unknown = sorted(set(binds) - {str(d) for _, shape in inputs for d in shape})
    if unknown:
        raise UsageError(
            f"--bind {', '.join(unknown)}: no input has such a dim; the inputs are "
            + ", ".join(f"{name}{list(shape)}" for name, shape in inputs)
        )
