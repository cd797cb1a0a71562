"""RNN(device="cuda"): the API on the GPU backend, under the CUDA simulator (own process).

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q -p no:cacheprovider tests/test_gpu_*.py
"""
import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("GPU tests run under the CUDA simulator in their own process: "
                "NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_gpu_*.py",
                allow_module_level=True)

from numba import cuda  # noqa: E402

import numrnn  # noqa: E402
from numrnn import gpu  # noqa: E402
from tests.problems import make_problem  # noqa: E402
from tests.tolerance import assert_close  # noqa: E402


pytestmark = pytest.mark.usefixtures("simulator_thread_switches")


# --- invalid input first -------------------------------------------------------------------


def test_device_argument_is_checked():
    with pytest.raises(ValueError, match="device: expected 'cpu' or 'cuda'"):
        numrnn.RNN(2, 3, device="gpu")
    net = numrnn.RNN(2, 3)
    with pytest.raises(ValueError, match="device"):
        net.to("tpu")
    assert net.to("cuda") is net and net.device == "cuda"
    assert "device='cuda'" in repr(net)


def test_cpu_network_rejects_device_arrays_with_a_hint():
    net = numrnn.RNN(2, 3)
    # (on a GPU the message says to use device='cuda'; the simulator's arrays carry no
    # __cuda_array_interface__, so here it only says that a numpy array was expected)
    with pytest.raises(TypeError, match="x: expected"):
        net.forward(cuda.to_device(np.zeros((4, 1, 2))))


@pytest.mark.parametrize("x, exc, words", [
    (np.zeros((4, 1, 2), np.float32), TypeError, "dtype float64"),
    (np.zeros((4, 1, 5)), ValueError, "shape"),
    (np.full((4, 1, 2), np.nan), ValueError, "finite"),
])
def test_cuda_network_rejects_bad_host_input(x, exc, words):
    net = numrnn.RNN(2, 3, device="cuda")
    with pytest.raises(exc, match=words):
        net.forward(x)


@pytest.mark.parametrize("x, exc, words", [
    (np.zeros((4, 1, 2), np.float32), TypeError, "dtype float64"),
    (np.zeros((4, 1, 5)), ValueError, "shape"),
])
def test_cuda_network_rejects_bad_device_input(x, exc, words):
    net = numrnn.RNN(2, 3, device="cuda")
    with pytest.raises(exc, match=words):
        net.forward(cuda.to_device(x))


@pytest.mark.parametrize("cell, a, b", [("lstm", "h", "c"), ("cornn", "y", "z")])
def test_a_paired_state_must_be_a_pair_on_the_gpu(cell, a, b):
    """The messages name the cell and its states, as on the CPU."""
    net = numrnn.RNN(2, 3, cell=cell, device="cuda")
    x, d_out = np.zeros((3, 1, 2)), np.zeros((3, 1, 3))
    with pytest.raises(TypeError, match=rf"the {cell} cell's state is a pair \({a}0, {b}0\)"):
        net.forward(x, np.zeros((1, 1, 3)))
    with pytest.raises(TypeError, match=rf"the {cell} cell's final state is a pair "
                                        rf"\({a}_n, {b}_n\)"):
        net.vjp(x, d_out, d_h_n=np.zeros((1, 1, 3)))
    with pytest.raises(ValueError, match="truncate"):
        net.vjp(x, d_out, truncate=0)


def test_a_single_state_must_not_be_a_pair_on_the_gpu():
    net = numrnn.RNN(2, 3, cell="gru", device="cuda")
    with pytest.raises(TypeError, match="the gru cell's state is one array"):
        net.forward(np.zeros((3, 1, 2)), (np.zeros((1, 1, 3)), np.zeros((1, 1, 3))))


# --- results -------------------------------------------------------------------------------


def _on_device(a):
    return tuple(cuda.to_device(b) for b in a) if isinstance(a, tuple) else cuda.to_device(a)


@pytest.mark.parametrize("cell", ["gru", "indrnn", "cornn"])
def test_device_arrays_in_device_arrays_out(rng, cell):
    """Every result a device array: also the weight_hh gradient of a cell whose weight_hh maps
    to M on the host (IndRNN's diagonal) and both parts of a paired state."""
    net, x, h0, d_out, d_h = make_problem(rng, cell, T=4, B=2)
    ref = net.forward_vjp(x, d_out, h0, d_h)
    net.to("cuda")
    xd = cuda.to_device(x)
    out, h_n, g = net.forward_vjp(xd, cuda.to_device(d_out), _on_device(h0), _on_device(d_h))
    from numrnn.gpu._cuda import is_device_array

    h_n, h_ref = (h_n, ref[1]) if isinstance(h_n, tuple) else ((h_n,), (ref[1],))
    assert is_device_array(out) and all(is_device_array(h) for h in h_n)
    assert all(is_device_array(v) for v in g.values())
    assert_close(out.copy_to_host(), ref[0])
    for got, want in zip(h_n, h_ref):
        assert_close(got.copy_to_host(), want)
    for k in ref[2]:
        assert_close(g[k].copy_to_host(), ref[2][k], what=k)
    out2, _ = net.forward(xd, _on_device(h0))
    assert_close(out2.copy_to_host(), ref[0])


@pytest.mark.parametrize("cell", ["tanh", "lstm", "cornn"])
def test_unbatched_and_batch_first_on_the_gpu(rng, cell):
    net, x, h0, d_out, d_h = make_problem(rng, cell, T=4, B=2, batch_first=True)
    ref = net.forward_vjp(x, d_out, h0, d_h)
    got = net.to("cuda").forward_vjp(x, d_out, h0, d_h)
    assert_close(got[0], ref[0])
    for k in ref[2]:
        assert_close(got[2][k], ref[2][k], what=k)
    # unbatched: (T, I) in, (T, D*N) out
    net.to("cpu")
    x1 = x[0]
    h1 = tuple(h[:, 0] for h in h0) if isinstance(h0, tuple) else h0[:, 0]
    ref1 = net.forward(x1, h1)
    got1 = net.to("cuda").forward(x1, h1)
    assert got1[0].shape == ref1[0].shape
    assert_close(got1[0], ref1[0])


def test_parameter_edits_take_effect(rng):
    """Parameters live on the host and are uploaded at every call."""
    net, x, h0, _, _ = make_problem(rng, "tanh", T=3, B=1)
    net.to("cuda")
    before = net.forward(x, h0)[0]
    net.parameters["weight_hh_l0"][:] *= 0.5
    after = net.forward(x, h0)[0]
    want = net.to("cpu").forward(x, h0)[0]
    assert not np.allclose(before, after)
    assert_close(after, want)


def test_in_place_edits_are_checked_before_the_upload():
    net = numrnn.RNN(2, 3, device="cuda")
    net.parameters["weight_hh_l0"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"parameters\['weight_hh_l0'\].*1 NaN/inf entry"):
        net.forward(np.zeros((3, 1, 2)))


# the simulator runs kernels as Python threads on NumPy scalars, which warn on overflow (a GPU
# does not); numrnn's own report is what is tested
@pytest.mark.filterwarnings("ignore:.*overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:.*invalid value encountered:RuntimeWarning")
def test_a_diverging_state_is_reported_on_the_gpu():
    net = numrnn.RNN(1, 2, cell="linear", init="identity", gain=1e3, bias=False, seed=0,
                     device="cuda")
    x = np.ones((120, 2, 1))
    x[:, 0] = 0.0
    with pytest.raises(numrnn.NonFiniteError, match="layer 0 became NaN or inf at step t=1.* b=1"):
        net.forward(x)
    with numrnn.nonfinite("ignore"):
        got = net.forward(x)[0]
        want = net.to("cpu").forward(x)[0]
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))


# the simulator runs kernels as Python threads on NumPy scalars, which warn on overflow (a GPU
# does not); numrnn's own report is what is tested
@pytest.mark.filterwarnings("ignore:.*overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:.*invalid value encountered:RuntimeWarning")
def test_exploding_gradients_are_reported_on_the_gpu():
    net = numrnn.RNN(1, 2, cell="linear", init="identity", gain=1e3, bias=False, seed=0,
                     device="cuda")
    net.parameters["weight_hh_l0"] = np.eye(2) * 1e3
    x = np.zeros((120, 1, 1))
    with pytest.raises(numrnn.NonFiniteError, match="vjp: the gradient dL/dh of layer 0"):
        net.vjp(x, np.ones((120, 1, 2)))


def test_state_grad_norm_is_float64_and_scaled_on_the_gpu(rng):
    net, x, h0, d_out, d_h = make_problem(rng, "gru", T=3, B=2, bidirectional=True,
                                          dtype=np.float32)
    ref = net.vjp(x, d_out * np.float32(4e25), h0)
    got = net.to("cuda").vjp(x, d_out * np.float32(4e25), h0)
    assert got["state_grad_norm"].dtype == np.float64
    assert np.isfinite(got["state_grad_norm"]).all()
    assert_close(got["state_grad_norm"], ref["state_grad_norm"], rtol=1e-6)


def test_info_reports_the_path():
    info = gpu.info()
    assert info["device"] == "CUDA simulator"
    assert info["warp_shuffle"] is False  # the simulator's shared-memory warp sum ran


def test_noise_reaches_the_gpu_pre_activation_as_on_the_cpu():
    """The same noise realisation (a function of the seed alone) added to the input projection
    on the device: forward and vjp agree with the CPU backend."""
    rng = np.random.default_rng(0)
    for cell in ("tanh", "gru"):
        cpu = numrnn.RNN(2, 5, cell=cell, seed=0)
        dev = numrnn.RNN(2, 5, cell=cell, seed=0, device="cuda")
        x = rng.standard_normal((6, 2, 2))
        a, _ = cpu.forward(x, noise_std=0.4, seed=3)
        b, _ = dev.forward(x, noise_std=0.4, seed=3)
        assert_close(b, a)
        assert not np.allclose(a, cpu.forward(x)[0])
        w = rng.standard_normal(a.shape)
        ga = cpu.vjp(x, w, noise_std=0.4, seed=3)
        gb = dev.vjp(x, w, noise_std=0.4, seed=3)
        for name in ("weight_hh_l0", "input"):
            assert_close(gb[name], ga[name])
