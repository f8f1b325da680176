"""htaf._build: native code compiled once per machine, cached, loaded; clean fallback."""

import ctypes

import pytest

from htaf import _build

SOURCE = "int htaf_test_add(int a, int b) { return a + b; }\n"


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("HTAF_CACHE", str(tmp_path))
    monkeypatch.delenv("HTAF_NO_NATIVE", raising=False)
    monkeypatch.setattr(_build, "_loaded", {})
    monkeypatch.setattr(_build, "_errors", {})
    return tmp_path


def test_builds_once_and_reuses_the_cached_library(fresh, monkeypatch):
    if _build._compiler() is None:
        pytest.skip("no C compiler on this machine")
    lib = _build.load_library("t_add", SOURCE)
    assert lib is not None and lib.htaf_test_add(2, 3) == 5
    files = list((fresh / "native").glob("libt_add-*.so"))
    assert len(files) == 1
    # a new process (simulated: forget what is loaded) loads the cached file without compiling
    monkeypatch.setattr(_build, "_loaded", {})
    monkeypatch.setattr(_build.subprocess, "run", _no_compiler_calls)
    again = _build.load_library("t_add", SOURCE)
    assert again is not None and again.htaf_test_add(4, 5) == 9
    # another source (or flags, compiler, CPU) is another file
    monkeypatch.undo()
    assert (fresh / "native").exists()


def _no_compiler_calls(cmd, *a, **k):
    raise AssertionError(f"compiled again: {cmd}")


def test_disabled_and_broken_builds_fall_back_with_a_reason(fresh, monkeypatch):
    monkeypatch.setenv("HTAF_NO_NATIVE", "1")
    assert _build.load_library("t_off", SOURCE) is None
    assert "HTAF_NO_NATIVE" in _build.build_error("t_off")
    monkeypatch.delenv("HTAF_NO_NATIVE")
    if _build._compiler() is None:
        pytest.skip("no C compiler on this machine")
    assert _build.load_library("t_broken", "this is not C") is None
    assert "error" in _build.build_error("t_broken")
    assert not list((fresh / "native").glob("libt_broken-*.so"))


def test_a_damaged_cache_file_is_rebuilt(fresh):
    if _build._compiler() is None:
        pytest.skip("no C compiler on this machine")
    _build.load_library("t_dmg", SOURCE)
    (path,) = (fresh / "native").glob("libt_dmg-*.so")
    damaged = path.with_suffix(".tmp")
    damaged.write_bytes(b"not a shared library")
    damaged.replace(path)      # a new file: the loaded library's mapping stays valid
    _build._loaded.clear()
    lib = _build.load_library("t_dmg", SOURCE)
    assert isinstance(lib, ctypes.CDLL) and lib.htaf_test_add(1, 1) == 2


@pytest.mark.parametrize("text, expected", [
    ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
     "model name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx2 avx512f avx512vl\n"
     "processor\t: 1\ncpu family\t: 99\n",
     "AMD EPYC (family 25, model 17, AVX-512)"),
    ("cpu family\t: 6\nmodel\t\t: 158\nmodel name\t: Intel(R) Core(TM) i7-8700\n"
     "flags\t\t: sse4_2 avx avx2 fma\n", "Intel(R) Core(TM) i7-8700 (family 6, model 158, AVX2)"),
    ("processor\t: 0\nFeatures\t: fp asimd sve\nCPU part\t: 0xd40\n", "cpu (part 0xd40, SVE)"),
    ("", "cpu"),
])
def test_the_cpu_summary_names_model_numbers_and_simd_level(text, expected):
    """Result files say which CPU made them: a VM's bare "AMD EPYC" is a Zen 2, 3 or 4, and the
    kernels (-march=native) and PyTorch's own paths differ by SIMD level."""
    assert _build.summarize_cpuinfo(text, "cpu") == expected
    assert _build.cpu_summary()   # this machine: never empty
