"""numrnn.cpu.blas: holding the BLAS libraries (SciPy's under Numba's np.dot, NumPy's) to one
thread, and restoring them."""
import numpy as np
import pytest

from numrnn.cpu import blas
from tests.tolerance import assert_close


def test_single_threaded_sets_and_restores():
    if not blas.can_limit_threads():
        pytest.skip("the BLAS under Numba's np.dot cannot be controlled here")
    libraries = ["scipy"] + (["numpy"] if blas.numpy_blas_controlled() else [])
    before = [blas.num_threads(lib) for lib in libraries]
    with blas.single_threaded():
        assert [blas.num_threads(lib) for lib in libraries] == [1] * len(libraries)
        with blas.single_threaded():  # re-entrant
            assert [blas.num_threads(lib) for lib in libraries] == [1] * len(libraries)
        assert [blas.num_threads(lib) for lib in libraries] == [1] * len(libraries)
    assert [blas.num_threads(lib) for lib in libraries] == before


def test_restores_after_an_exception():
    before = blas.num_threads()
    with pytest.raises(RuntimeError):
        with blas.single_threaded():
            raise RuntimeError("boom")
    assert blas.num_threads() == before


@pytest.mark.parametrize("numpy_blas", [True, False], ids=["numpy-blas", "numba-dot"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threaded_matrix_products_equal_numpy(rng, monkeypatch, dtype, numpy_blas):
    from numrnn import config
    from numrnn.cpu import threads

    if numpy_blas and not blas.numpy_blas_controlled():
        pytest.skip("NumPy's BLAS cannot be controlled here")
    monkeypatch.setattr(blas, "numpy_blas_controlled", lambda: numpy_blas)
    monkeypatch.setattr(config, "NUM_THREADS", 3)
    monkeypatch.setattr(config, "PARALLEL_BLOCKS", 3)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 1)
    a = rng.standard_normal((50, 7)).astype(dtype)
    b = rng.standard_normal((7, 5)).astype(dtype)
    c = rng.standard_normal((50, 5)).astype(dtype)
    assert threads.pieces(50, 10**9) == 3
    out = threads.matmul(a, b)
    assert out.dtype == dtype
    assert_close(out, a.astype(np.float64) @ b, rtol=1e-5 if dtype == np.float32 else 1e-14)
    out = threads.matmul_tn(a, c)
    assert_close(out, a.T.astype(np.float64) @ c, rtol=1e-5 if dtype == np.float32 else 1e-14)
    np.testing.assert_array_equal(threads.matmul_tn(a, c), out)  # fixed summation order
    empty = threads.matmul_tn(a[:0], c[:0])
    assert empty.dtype == dtype
    np.testing.assert_array_equal(empty, np.zeros((7, 5)))


def test_thread_pool_propagates_errors():
    from numrnn.cpu import threads

    def fn(start, stop):
        if start > 0:
            raise RuntimeError("piece failed")

    with pytest.raises(RuntimeError, match="piece failed"):
        threads.run(fn, 10, 2)


def test_libraries_report_the_build_and_the_kernels_openblas_runs():
    found = blas.libraries()
    assert [lib["name"] for lib in found] == \
        [name for name, ok in (("scipy", blas.can_limit_threads()),
                               ("numpy", blas.numpy_blas_controlled())) if ok]
    for lib in found:
        assert lib["config"].startswith("OpenBLAS ") and lib["core"]
        if "DYNAMIC_ARCH" in lib["config"]:  # such a build names the family it chose
            assert lib["core"] in lib["config"].split()
        assert lib["threads"] == blas.num_threads(lib["name"])


def test_openblas_coretype_is_what_the_libraries_report():
    """A forced kernel family (OPENBLAS_CORETYPE, read when OpenBLAS loads) is the one reported,
    and on an AVX-512 CPU forcing AVX2 kernels is named in the note."""
    import json
    import os
    import platform
    import subprocess
    import sys

    import llvmlite.binding as ll

    if platform.machine() not in ("x86_64", "AMD64") or \
            not ll.get_host_cpu_features().get("avx2", False):
        pytest.skip("OpenBLAS's Haswell kernels need an x86-64 CPU with AVX2")
    code = ("from numrnn.cpu import blas; import json; "
            "print(json.dumps([blas.libraries(), blas.vector_width_note()]))")
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    found, note = json.loads(res.stdout)
    assert found and {lib["core"] for lib in found} == {"Haswell"}
    if ll.get_host_cpu_features().get("avx512f", False):
        assert "OPENBLAS_CORETYPE=Haswell is set" in note and "scipy's Haswell" in note
    else:
        assert note is None


@pytest.mark.parametrize("avx512", [True, False])
def test_vector_width_note_names_narrow_kernels_on_a_wide_cpu(monkeypatch, avx512):
    monkeypatch.setattr(blas, "_cpu_has_avx512", lambda: avx512)
    lib = dict(name="scipy", config="OpenBLAS 0.3.30 DYNAMIC_ARCH Haswell", core="Haswell",
               threads=1)
    wide = dict(lib, name="numpy", core="SkylakeX")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    note = blas.vector_width_note([lib, wide])
    if not avx512:
        assert note is None
        return
    assert note.startswith("OpenBLAS runs AVX2 kernels (scipy's Haswell) on a CPU with AVX-512")
    assert "OPENBLAS_CORETYPE=Haswell is set" in note and "numpy" not in note
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert "OpenBLAS did not recognise this CPU" in blas.vector_width_note([lib])
    assert "zen's" not in blas.vector_width_note([dict(lib, core="ZEN")])  # (names as given)
    for quiet in ([wide], [dict(lib, core="Prescott")], [dict(lib, core=None)], []):
        assert blas.vector_width_note(quiet) is None


@pytest.mark.parametrize("avx512", [True, False])
def test_wide_kernels_asks_avx512_kernels_of_both_libraries(monkeypatch, avx512):
    """The products over time go to the BLAS where both OpenBLAS libraries (SciPy's under
    Numba's np.dot, NumPy's under the weight gradients) run AVX-512 kernels on an AVX-512 CPU."""
    monkeypatch.setattr(blas, "_cpu_has_avx512", lambda: avx512)
    scipy = dict(name="scipy", config="OpenBLAS 0.3.30 DYNAMIC_ARCH", core="SkylakeX", threads=1)
    numpy = dict(scipy, name="numpy", core="Cooperlake")
    assert blas.wide_kernels([scipy, numpy]) is avx512
    assert blas.wide_kernels([dict(scipy, core="SAPPHIRERAPIDS"), numpy]) is avx512
    for narrow in ([scipy, dict(numpy, core="Haswell")], [dict(scipy, core=None), numpy],
                   [scipy], [numpy], []):
        assert blas.wide_kernels(narrow) is False
