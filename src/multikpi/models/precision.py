"""Where a model runs: the device, and the matmul precision (bf16 autocast or float32).

`precision: auto` is decided by measurement, not by what the CPU advertises: a CPU may report
native bf16 (AVX512-BF16) and still run bf16 GEMMs slower than fp32 (no AMX tiles), and another
computes them 3x faster. A short probe times the model's own GEMM shapes, forward and backward for
training or forward only for inference, at the batch size it will run, in fp32 and under bf16
autocast; bf16 is chosen only when it is faster by `MARGIN`. The benchmark AUCs hold under bf16
(docs/benchmarks.md), and weights, optimizer state, output units and losses stay fp32 either way.
The decision is cached per machine, torch version, thread count, kind and shapes
(`$MULTIKPI_CACHE_DIR`, else `$XDG_CACHE_HOME/multikpi`, else `~/.cache/multikpi`), so it costs
well under a second once.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from multikpi.errors import ConfigError
from multikpi.models.experts import BatchedLinear

logger = logging.getLogger("multikpi")

MARGIN = 0.85  # bf16 must take at most this share of the fp32 time
PROBE_SECONDS = 0.2  # per precision, about
PROBE_ROWS = 1024
PROBE_VALUES = 1 << 22
SLOWER_BY_FAR_MS = 1e9  # what the cache holds for a bf16 probe stopped early (JSON has no inf)


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu. Resolved once, at the start of a run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError([f"`train.device` is {name!r} but this torch ({torch.__version__}) has no usable CUDA "
                           f"device; use cpu or auto"], source="device")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device, model: nn.Module | None = None, batch: int = 4096,
                      kind: str = "train") -> torch.dtype | None:
    """The autocast dtype for `precision` (`train.precision` / the serving settings), or None for
    float32. `auto` measures `model`'s GEMM shapes at `batch` rows (`kind`: train = forward and
    backward, infer = forward); without a model it is fp32."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if model is None:
        return None
    return torch.bfloat16 if probe_bf16(gemm_shapes(model), batch, kind) else None


def gemm_shapes(model: nn.Module) -> list[tuple[int, int, int]]:
    """(experts, in, out) of every linear layer of `model` (experts = 1 for nn.Linear)."""
    shapes = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            shapes.append((1, module.in_features, module.out_features))
        elif isinstance(module, BatchedLinear):  # (E, in, out)
            experts, in_dim, out_dim = module.weight.shape
            shapes.append((int(experts), int(in_dim), int(out_dim)))
    return shapes


def probe_bf16(shapes: list[tuple[int, int, int]], batch: int, kind: str) -> bool:
    """Whether bf16 autocast runs these GEMMs faster than fp32 by MARGIN (cached; see the module docstring)."""
    key = _cache_key(shapes, batch, kind)
    cache = _read_cache()
    if key in cache:
        entry = cache[key]
        logger.info("precision auto (%s): %s (cached probe: fp32 %.2f ms, bf16 %s)", kind,
                    "bf16" if entry["bf16"] else "fp32", entry["fp32_ms"], _bf16_text(entry["bf16_ms"]))
        return bool(entry["bf16"])
    # The ratio, not the time, decides: a smaller batch keeps the probe short, and its activations
    # (rows x the widest layer) at most PROBE_VALUES, whatever the model's widths.
    widest = max((e * o for e, _, o in shapes), default=1)
    rows = max(1, min(batch, PROBE_ROWS, PROBE_VALUES // widest))
    fp32, bf16 = _time_both(shapes, rows, kind)
    choice = bf16 < MARGIN * fp32
    logger.info("precision auto (%s): measured the model's GEMMs at batch %d: fp32 %.2f ms, bf16 %s -> %s",
                kind, rows, 1000 * fp32, _bf16_text(1000 * bf16),
                "bf16 autocast" if choice else "fp32")
    cache[key] = {"bf16": choice, "fp32_ms": 1000 * fp32, "bf16_ms": min(1000 * bf16, SLOWER_BY_FAR_MS)}
    _write_cache(cache)
    return choice


def _bf16_text(milliseconds: float) -> str:
    """'3.10 ms', or 'slower by far' for a probe stopped early (no native bf16; cached as SLOWER_BY_FAR_MS)."""
    return "slower by far" if milliseconds >= SLOWER_BY_FAR_MS else f"{milliseconds:.2f} ms"


def _time_both(shapes: list[tuple[int, int, int]], batch: int, kind: str) -> tuple[float, float]:
    """(fp32, bf16) median seconds of one pass over the GEMMs, the two precisions timed in
    alternation so that a change in the machine's load hits both alike (on a shared machine a
    burst of load during one precision's turn would otherwise decide). bf16 is inf when its first
    passes are slower than fp32 by far (no native bf16: emulated GEMMs take seconds)."""
    passes = {dtype: _gemm_pass(shapes, batch, kind, dtype) for dtype in (None, torch.bfloat16)}
    times: dict[torch.dtype | None, list[float]] = {None: [], torch.bfloat16: []}
    started = time.perf_counter()
    while len(times[None]) < 7 and (time.perf_counter() - started < 2 * PROBE_SECONDS or len(times[None]) < 3):
        for dtype, one_pass in passes.items():
            begin = time.perf_counter()
            one_pass()
            times[dtype].append(time.perf_counter() - begin)
        if len(times[None]) >= 2 and min(times[torch.bfloat16][1:]) > 2 * max(times[None][1:]) / MARGIN:
            return _median(times[None]), float("inf")
    return _median(times[None]), _median(times[torch.bfloat16])


def _median(times: list[float]) -> float:
    rest = sorted(times[1:])  # the first pass is a warm-up (kernel choice)
    return rest[(len(rest) - 1) // 2]


def _gemm_pass(shapes: list[tuple[int, int, int]], batch: int, kind: str,
               dtype: torch.dtype | None) -> Callable[[], None]:
    """One pass over the GEMMs (forward, plus backward for training) in `dtype` (None: fp32)."""
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(e, i, o, generator=generator, requires_grad=kind == "train") for e, i, o in shapes]
    inputs = [torch.randn(batch, e, i, generator=generator) if e > 1 else torch.randn(batch, i, generator=generator)
              for e, i, _ in shapes]

    def one_pass() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            outputs = [x @ w[0] if w.shape[0] == 1 else torch.einsum("bei,eio->beo", x, w)
                       for x, w in zip(inputs, weights)]
        if kind == "train":
            torch.stack([out.float().sum() for out in outputs]).sum().backward()

    return one_pass


def _time_gemms(shapes: list[tuple[int, int, int]], batch: int, kind: str, dtype: torch.dtype | None) -> float:
    """Median seconds of one pass over the GEMMs in `dtype` alone (tests and diagnostics)."""
    one_pass = _gemm_pass(shapes, batch, kind, dtype)
    times = []
    for _ in range(4):
        begin = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - begin)
    return _median(times)


def _cache_path() -> Path:
    root = os.environ.get("MULTIKPI_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "multikpi")
    return Path(root) / "precision.json"


def _cache_key(shapes: Iterable[tuple[int, int, int]], batch: int, kind: str) -> str:
    return "|".join(["probe 2", _cpu_model(), f"torch {torch.__version__}", f"threads {torch.get_num_threads()}", kind,
                     f"batch {batch}", ",".join(f"{e}x{i}x{o}" for e, i, o in shapes)])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read_cache() -> dict[str, dict[str, float]]:
    try:
        payload = json.loads(_cache_path().read_text())
        return payload if isinstance(payload, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict[str, dict[str, float]]) -> None:
    """Best effort: an unwritable cache directory only means probing again next time."""
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)
    except OSError as err:
        logger.debug("precision cache not written: %s", err)
