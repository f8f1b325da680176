"""Native code, compiled once per machine and cached: plain C sources built with the system
compiler into shared libraries and loaded with :mod:`ctypes`.

``load_library("name", SOURCE)`` returns a ``ctypes.CDLL``, or ``None`` where no compiler works
(callers then fall back to PyTorch or NumPy). The library is cached under
``$HTAF_CACHE/native`` (default ``~/.cache/htaf/native``) in a file named by a hash of the source,
the flags, the compiler's version and this CPU's model and instruction-set flags: ``-march=native``
code built on one CPU is never loaded on another, and editing a source rebuilds it. A library that
picks its instruction set at run time (``march_native=False``) is built for the baseline of the
architecture instead, so its portable fallback really is portable. Builds are
written to a temporary file and renamed into place, so concurrent processes (pytest-xdist workers,
DDP ranks) never load a half-written library. ``HTAF_NO_NATIVE=1`` disables native code.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

__all__ = ["load_library", "load_library_openmp_first", "env_flag", "native_disabled",
           "build_error", "cache_folder"]

_FLAG_SETS = (("-O3", "-march=native"), ("-O3",))   # the second where -march=native is refused
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}
_errors: dict[str, str] = {}


def env_flag(name: str) -> bool:
    """Whether environment variable ``name`` is set to something other than "", 0, false, no."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def native_disabled() -> bool:
    return env_flag("HTAF_NO_NATIVE")


def cache_folder() -> Path:
    root = os.environ.get("HTAF_CACHE") or Path.home() / ".cache" / "htaf"
    return Path(root).expanduser() / "native"


def build_error(name: str) -> str | None:
    """Why ``name`` could not be built in this process (None if it was, or was not tried)."""
    return _errors.get(name)


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _machine_id() -> str:
    """CPU model and instruction-set flags (what ``-march=native`` depends on)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        import platform

        return f"{platform.machine()}|{platform.processor()}"
    keep = [line for line in text.splitlines()
            if line.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
    return "|".join(dict.fromkeys(keep))   # first occurrence of each: one core describes all


@functools.cache
def cpu_summary() -> str:
    """This CPU in a few words for result files: model name, family/model numbers (a VM often
    hides the name: "AMD EPYC" is a Zen 2, 3 or 4) and the widest SIMD the kernels may use,
    e.g. ``AMD EPYC (family 25, model 17, AVX-512)``. Results and timings depend on it: the
    kernels are built with ``-march=native`` and PyTorch picks its own paths per SIMD level."""
    import platform

    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    return summarize_cpuinfo(text, platform.processor() or platform.machine())


def summarize_cpuinfo(text: str, fallback: str = "") -> str:
    """:func:`cpu_summary` of a ``/proc/cpuinfo`` text (the first core's lines)."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    flags = set((info.get("flags") or info.get("Features") or "").split())
    simd = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"),
                                         ("sse4_2", "SSE4.2"), ("sve", "SVE"),
                                         ("asimd", "NEON")) if flag in flags), "")
    name = info.get("model name") or fallback or "unknown CPU"
    parts = [f"{label} {info[key]}" for label, key in (("family", "cpu family"),
                                                        ("model", "model"),
                                                        ("part", "CPU part")) if info.get(key)]
    parts += [simd] if simd else []
    return f"{name} ({', '.join(parts)})" if parts else name


@functools.cache
def _version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True,
                              timeout=30).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def load_library(name: str, source: str, *, extra_flags: tuple[str, ...] = (),
                 libraries: tuple[str, ...] = (), march_native: bool = True) -> ctypes.CDLL | None:
    """Build ``source`` (C) into ``lib<name>.so`` once per machine, load and return it.

    ``extra_flags`` are added to the compiler's command (e.g. ``("-fopenmp",)``), ``libraries``
    are linked (``("m",)`` → ``-lm``). ``march_native=False`` omits ``-march=native`` (for
    sources that dispatch on the CPU's flags themselves). Returns None, and records the reason
    for :func:`build_error`, when native code is disabled or no compiler produces the library.
    """
    with _lock:
        if name in _loaded:
            return _loaded[name]
        lib = None
        if native_disabled():
            _errors[name] = "HTAF_NO_NATIVE is set"
        elif (cc := _compiler()) is None:
            _errors[name] = "no C compiler found (set CC, or install gcc or clang)"
        else:
            flag_sets = _FLAG_SETS if march_native else _FLAG_SETS[-1:]
            lib = _build_and_load(name, source, cc, extra_flags, libraries, flag_sets)
        _loaded[name] = lib
        return lib


def load_library_openmp_first(name: str, source: str, *, extra_flags: tuple[str, ...] = (),
                              libraries: tuple[str, ...] = (),
                              march_native: bool = True) -> ctypes.CDLL | None:
    """:func:`load_library` of ``source`` built with ``-fopenmp`` (as ``name + "_omp"``), else,
    where the compiler refuses it or ``HTAF_NO_OPENMP`` is set, without. In a PyTorch process the
    library's ``libgomp.so.1`` resolves to the copy PyTorch loaded: one thread pool, shared."""
    lib = None
    if not env_flag("HTAF_NO_OPENMP"):
        lib = load_library(name + "_omp", source, extra_flags=(*extra_flags, "-fopenmp"),
                           libraries=libraries, march_native=march_native)
    if lib is None:
        lib = load_library(name, source, extra_flags=extra_flags, libraries=libraries,
                           march_native=march_native)
    return lib


def _build_and_load(name, source, cc, extra_flags, libraries, flag_sets) -> ctypes.CDLL | None:
    folder = cache_folder()
    link = [f"-l{lib}" for lib in libraries]
    errors = []
    for flags in flag_sets:
        cmd_flags = (*flags, *extra_flags, "-shared", "-fPIC")
        key = hashlib.sha256("\0".join(
            [source, " ".join(cmd_flags + tuple(link)), _version(cc), _machine_id()]).encode())
        path = folder / f"lib{name}-{key.hexdigest()[:16]}.so"
        if path.exists():
            try:
                return ctypes.CDLL(str(path))
            except OSError as e:   # a damaged cache file: rebuild it
                errors.append(f"cached {path} did not load ({e})")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmpdir = tempfile.mkdtemp(prefix=f"{name}-", dir=folder)
        except OSError:            # a read-only cache: build in a temporary folder only
            tmpdir = tempfile.mkdtemp(prefix=f"htaf-{name}-")
        try:
            src = Path(tmpdir) / f"{name}.c"
            src.write_text(source)
            out = Path(tmpdir) / path.name
            try:
                done = subprocess.run([cc, *cmd_flags, "-o", str(out), str(src), *link],
                                      capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as e:
                errors.append(f"{cc} failed to run: {e}")
                continue
            if done.returncode != 0:
                errors.append(f"{cc} {' '.join(flags)}: {done.stderr.strip()[-500:]}")
                continue
            try:
                os.replace(out, path)
            except OSError:
                path = out         # not cacheable here: load it from the temporary folder
            return ctypes.CDLL(str(path))
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    _errors[name] = "; ".join(errors) or "the build failed"
    return None
