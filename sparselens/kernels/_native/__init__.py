"""Build, cache and call the compiled CPU kernels in `dsa.c` (plain C through ctypes).

The library is compiled on first use with the system C compiler (`$CC`, else `cc`/`gcc`) at `-O3 -march=native`
(about a second: no Python or torch headers are involved) and cached under `$SPARSELENS_KERNEL_CACHE` (default
`~/.cache/sparselens/kernels`), keyed by the source, the flags, the compiler and the CPU model, so a shared home
directory never serves a library built for another CPU. When no compiler is found, the build fails, or
`SPARSELENS_NO_NATIVE=1` is set, `library()` returns None and the CPU backends fall back to pure torch.

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

SOURCE = Path(__file__).with_name("dsa.c")
FLAGS = ["-O3", "-march=native", "-std=gnu11", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
_I64, _I32, _F32, _P = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
_CTR = ctypes.POINTER(ctypes.c_int64)
_SIGNATURES = {
    # name: ctypes argument types, matching the C prototypes in dsa.c; the last one is the shared work counter
    "sl_indexer_topk": [_P, _P, _P, _P, _I64, _I64, _I64, _I32, _I32, _I32, _I32, _I32, _I32, _CTR],
    "sl_indexer_scores": [_P, _P, _P, _P, _I64, _I64, _I64, _I32, _I32, _I32, _I32, _I32, _CTR],
    "sl_topk_rows": [_P, _P, _I64, _I64, _I32, _CTR],
    "sl_rows_canonical": [_P, _I64, _I32, _I64, _P, _CTR],
    "sl_sparse_attn_fwd": [_P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I32, _I32, _I32, _F32, _I32, _CTR],
    "sl_sparse_attn_bwd": [_P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I32, _I32, _I32, _F32, _CTR],
}
_lock = threading.Lock()
_state: dict[str, object] = {}


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


def _build(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256("\n".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu_model()]).encode()).hexdigest()
    cache = Path(os.environ.get("SPARSELENS_KERNEL_CACHE", Path.home() / ".cache" / "sparselens" / "kernels"))
    target = cache / f"dsa-{key[:16]}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        out = Path(tmp) / target.name
        proc = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(out), "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed to build {SOURCE.name}:\n{proc.stderr[-2000:]}")
        os.replace(out, target)  # atomic: a concurrent build of the same key is harmless
    return target


def library() -> ctypes.CDLL | None:
    """The compiled kernel library, or None when it cannot be built here (reason in `unavailable_reason()`)."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        lib, reason = None, None
        cc = _compiler()
        if os.environ.get("SPARSELENS_NO_NATIVE") == "1":
            reason = "SPARSELENS_NO_NATIVE=1"
        elif cc is None:
            reason = "no C compiler found (set $CC or install gcc)"
        else:
            try:
                lib = ctypes.CDLL(str(_build(cc)))
                for name, argtypes in _SIGNATURES.items():
                    fn = getattr(lib, name)
                    fn.argtypes, fn.restype = argtypes, ctypes.c_int
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                lib, reason = None, str(err)
        if lib is None:
            warnings.warn(f"sparselens CPU kernels unavailable, using the pure-torch fallback: {reason}", stacklevel=3)
        _state["lib"], _state["reason"] = lib, reason
        return lib


def unavailable_reason() -> str | None:
    """Why `library()` is None, or None when the compiled kernels load."""
    library()
    return _state.get("reason")  # type: ignore[return-value]


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
