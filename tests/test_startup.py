"""Start-up: `import refvit` stays cheap (no Numba, no SciPy until a model needs them), and kernels still build
when Numba has nowhere to cache them (a read-only install with a read-only home)."""

import subprocess
import sys

import pytest

from refvit.kernels import jit


def test_import_refvit_does_not_import_numba_or_scipy():
    code = ("import sys, refvit; refvit.ViTModel; refvit.kernels.get; "
            "print(sorted(m for m in ('numba', 'llvmlite', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_import_refvit_loads_pillow_only_when_processing_is_used():
    code = ("import sys, refvit; before = 'PIL' in sys.modules; from refvit import ImageProcessor, load_image; "
            "print(before, 'PIL' in sys.modules, ImageProcessor.__module__, 'load_image' in dir(refvit))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "refvit.processing.base", "True"]


def test_numpy_namespace_has_every_kernel_of_the_numba_one():
    from refvit import kernels

    assert sorted(vars(kernels.NUMPY)) == sorted(vars(kernels.NUMBA)) == sorted([*kernels.KERNELS, "name"])
    assert kernels.get("numba") is kernels.NUMBA


def test_njit_without_a_cache_directory_compiles_in_memory_and_warns(monkeypatch):
    # A function from exec() has no source file, so Numba finds no cache locator for it, as for a read-only install.
    namespace = {}
    exec("def double(x):\n    return x * 2\n", namespace)
    monkeypatch.setattr(jit, "_warned", [])
    with pytest.warns(RuntimeWarning, match="NUMBA_CACHE_DIR"):
        double = jit.njit(cache=True)(namespace["double"])
    assert double(21) == 42
