"""Build, pick, cache and call the compiled CPU kernels (`indexer.c`, `attention.c`: plain C through ctypes).

The kernels are compiled on first use with the system C compiler (`$CC`, else `cc`/`gcc`/`clang`; about a second
each: no Python or torch headers are involved), once per instruction set: `avx512` (-mavx512f/vl/bw/dq) and
`avx2` (-mavx2 -mfma). Which one runs is chosen at run time: a tiny probe (`probe.c`, compiled without any
instruction-set flag, so safe on every CPU) asks the CPU through `__builtin_cpu_supports`, and the best build it
supports is loaded; on a CPU with neither, or without a compiler, the CPU backends fall back to pure torch.
`SPARSELENS_CPU_ISA=avx512|avx2|torch` forces a path (an instruction set the CPU lacks is an error, never a
crash); `SPARSELENS_NO_NATIVE=1` is the same as `torch`. Builds are cached under `$SPARSELENS_KERNEL_CACHE`
(default `~/.cache/sparselens/kernels`), keyed by the sources, the flags, the compiler and the CPU model.

Parallelism: each kernel pulls work items from a shared atomic counter; `launch` calls it from
`torch.get_num_threads()` threads at once (ctypes releases the GIL), so no second OpenMP runtime is loaded.
"""

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

HERE = Path(__file__).parent
SOURCES = [HERE / "indexer.c", HERE / "attention.c"]
HEADERS = [HERE / "simd.h", HERE / "topk.h"]
ISAS = ("avx512", "avx2")  # compiled builds, best first; "torch" is the fallback after them
COMMON_FLAGS = ["-O3", "-std=gnu11", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
ISA_FLAGS = {
    "avx512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq"],
    "avx2": ["-mavx2", "-mfma"],
}
PATHS = (*ISAS, "torch")
_I64, _I32, _F32, _P = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
_CTR = ctypes.POINTER(ctypes.c_int64)
_SIGNATURES = {
    # name: ctypes argument types, matching the C prototypes; the last one is the shared work counter
    "sl_indexer_topk": [_P, _P, _P, _P, _I64, _I64, _I64, _I32, _I32, _I32, _I32, _I32, _I32, _CTR],
    "sl_indexer_topk_split": [_P, _P, _P, _P, _P, _I64, _I64, _I64, _I32, _I32, _I32, _I32, _I64, _I64, _CTR],
    "sl_indexer_scores": [_P, _P, _P, _P, _I64, _I64, _I64, _I32, _I32, _I32, _I32, _I32, _CTR],
    "sl_topk_rows": [_P, _P, _I64, _I64, _I32, _CTR],
    "sl_rows_canonical": [_P, _I64, _I32, _I64, _P, _CTR],
    "sl_sparse_attn_fwd": [_P, _P, _P, _P, _P, _P, *[_I64] * 3, *[_I32] * 4, _F32, *[_I64] * 3, _I32, _CTR],
    "sl_sparse_attn_bwd": [*[_P] * 10, *[_I64] * 3, *[_I32] * 4, _F32, *[_I64] * 3, _CTR],
}
_lock = threading.Lock()
_state: dict[str, object] = {"libs": {}}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(cc: str, name: str, sources: list[Path], flags: list[str]) -> Path:
    """Compile `sources` into a cached shared library (built under a temporary name, then renamed: atomic)."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    texts = [p.read_text() for p in (*sources, *HEADERS)]
    key = hashlib.sha256("\n".join([*texts, " ".join(flags), version, _cpu_model()]).encode()).hexdigest()
    cache = Path(os.environ.get("SPARSELENS_KERNEL_CACHE", Path.home() / ".cache" / "sparselens" / "kernels"))
    target = cache / f"{name}-{key[:16]}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        out = Path(tmp) / target.name
        cmd = [cc, *flags, *map(str, sources), "-o", str(out), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed to build {name}:\n{proc.stderr[-2000:]}")
        os.replace(out, target)  # a concurrent build of the same key is harmless
    return target


def cpu_isas() -> tuple[str, ...]:
    """The compiled builds this CPU can run, best first (empty without a compiler or on a CPU with neither)."""
    with _lock:
        if "isas" not in _state:
            isas: tuple[str, ...] = ()
            cc = _compiler()
            if cc is not None:
                try:
                    probe = ctypes.CDLL(str(_build(cc, "probe", [HERE / "probe.c"], ["-O1", "-fPIC", "-shared"])))
                    isas = ISAS[2 - probe.sl_cpu_level() :]
                except (OSError, RuntimeError, subprocess.SubprocessError):
                    isas = ()  # e.g. not an x86 CPU: __builtin_cpu_supports("avx2") does not compile
            _state["isas"] = isas
        return _state["isas"]  # type: ignore[return-value]


def selected_isa() -> str:
    """The CPU path in force: the best build the CPU supports, or what SPARSELENS_CPU_ISA / _NO_NATIVE ask for."""
    if os.environ.get("SPARSELENS_NO_NATIVE") == "1":
        return "torch"
    forced = os.environ.get("SPARSELENS_CPU_ISA", "").strip().lower()
    if forced in ("", "auto"):
        isas = cpu_isas()
        return isas[0] if isas else "torch"
    if forced not in PATHS:
        raise ValueError(f"SPARSELENS_CPU_ISA={forced!r} is not one of {PATHS} (or 'auto'): fix or unset it")
    if forced != "torch" and forced not in cpu_isas():
        have = ", ".join(cpu_isas()) or "none (no C compiler, or neither instruction set)"
        raise ValueError(f"SPARSELENS_CPU_ISA={forced} but this machine can run only: {have}; unset it or pick one")
    return forced


def _load(isa: str) -> tuple[ctypes.CDLL | None, str | None]:
    if os.environ.get("SPARSELENS_NO_NATIVE") == "1":
        return None, "SPARSELENS_NO_NATIVE=1"
    if isa == "torch":
        return None, "SPARSELENS_CPU_ISA=torch" if os.environ.get("SPARSELENS_CPU_ISA") else _why_no_isa()
    cc = _compiler()
    try:
        lib = ctypes.CDLL(str(_build(cc, f"dsa-{isa}", SOURCES, COMMON_FLAGS + ISA_FLAGS[isa])))
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        lib.sl_isa.restype = ctypes.c_char_p
        if lib.sl_isa().decode() != isa:
            raise RuntimeError(f"the {isa} build reports {lib.sl_isa().decode()}: compiler flags were not applied")
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as err:
        return None, str(err)
    return lib, None


def _why_no_isa() -> str:
    if _compiler() is None:
        return "no C compiler found (set $CC or install gcc)"
    return "this CPU has neither AVX-512 nor AVX2+FMA (or the probe did not build)"


def library() -> ctypes.CDLL | None:
    """The compiled kernels of the selected instruction set, or None for the torch fallback (reason in
    `unavailable_reason()`; a warning the first time)."""
    isa = selected_isa()
    with _lock:
        libs: dict = _state["libs"]  # type: ignore[assignment]
        if isa not in libs:
            libs[isa] = _load(isa)
            lib, reason = libs[isa]
            if lib is None and reason != "SPARSELENS_CPU_ISA=torch":  # asked for by name: no warning
                warnings.warn(
                    f"sparselens CPU kernels unavailable, using the pure-torch fallback: {reason}", stacklevel=3
                )
        return libs[isa][0]


def unavailable_reason() -> str | None:
    """Why `library()` is None, or None when the compiled kernels load."""
    library()
    return _state["libs"][selected_isa()][1]  # type: ignore[index]


def describe() -> str:
    """One line for benchmark headers: the path in force and what the CPU supports."""
    isa = selected_isa()
    native = f"compiled C kernels ({isa})" if library() is not None else f"torch fallback ({unavailable_reason()})"
    return f"{native}; CPU builds available: {', '.join(cpu_isas()) or 'none'}"


def _pool(n: int) -> ThreadPoolExecutor:
    # grown, never shrunk (idle workers cost nothing); rebuilt after a fork, whose child inherits no threads
    if _state.get("pool_size", 0) < n or _state.get("pool_pid") != os.getpid():
        _state["pool"] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="sparselens-cpu")
        _state["pool_size"], _state["pool_pid"] = n, os.getpid()
    return _state["pool"]  # type: ignore[return-value]


def launch(name: str, *args, n_items: int) -> None:
    """Run kernel `name` on min(n_items, torch threads) threads sharing one work counter; args exclude the counter."""
    fn = getattr(library(), name)
    counter = ctypes.c_int64(0)
    n = max(1, min(torch.get_num_threads(), n_items))

    def call() -> int:
        return fn(*args, ctypes.byref(counter))

    futures = [_pool(n - 1).submit(call) for _ in range(n - 1)] if n > 1 else []
    codes = [call()] + [f.result() for f in futures]
    if any(codes):
        raise MemoryError(f"{name} could not allocate its scratch buffers: reduce the batch or k")


def ptr(t: torch.Tensor) -> int:
    """Data pointer of a contiguous tensor (checked, since the kernels index it as dense)."""
    if not t.is_contiguous():
        raise ValueError("internal: native kernels need contiguous tensors; call .contiguous() first")
    return t.data_ptr()
