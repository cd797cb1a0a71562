"""numrnn.Ensemble: M networks in one call, each member the same bits as the network run alone.

Every comparison here is bitwise (``tobytes``): a member runs the code it runs alone, with the
same blocks of parallel work, whichever thread runs it and however the members are scheduled.
"""
import dataclasses
import sys

import numpy as np
import pytest

import numrnn
from numrnn import config

SCHEDULES = ("members", "batch")


def _nets(M=3, N=6, I=2, **kw):
    return [numrnn.RNN(I, N, init="gaussian", gain=0.8 + 0.5 * m, seed=10 + m, **kw)
            for m in range(M)]


def _bytes(tree):
    """Every array of a result (array, tuple, dict) as bytes, in a fixed order."""
    if isinstance(tree, dict):
        return [(k, b) for k in sorted(tree) for b in _bytes(tree[k])]
    if isinstance(tree, (tuple, list)):
        return [b for v in tree for b in _bytes(v)]
    return [np.asarray(tree).tobytes()]


def _member(tree, m):
    """Member m's slice of a stacked result."""
    if isinstance(tree, dict):
        return {k: v[m] for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(_member(v, m) for v in tree)
    return tree[m]


def _result_bytes(res):
    """A frozen result's fields (arrays and scalars) as bytes."""
    return [(f.name, np.asarray(getattr(res, f.name)).tobytes())
            for f in dataclasses.fields(res)]


@pytest.fixture
def split_work(monkeypatch):
    """Products and recurrences cut into 3 blocks even at these small sizes, so that members
    run on the threads with their own blocked work (run serially in the member's thread)."""
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 1)
    monkeypatch.setattr(config, "PARALLEL_BLOCKS", 3)


# --- invalid input ---------------------------------------------------------------------------


def test_members_must_be_a_nonempty_list_of_networks():
    with pytest.raises(TypeError, match="members: expected a list or tuple"):
        numrnn.Ensemble(numrnn.RNN(1, 2, seed=0))
    with pytest.raises(ValueError, match="members: expected at least one"):
        numrnn.Ensemble([])
    with pytest.raises(TypeError, match=r"members\[1\]: expected a numrnn.RNN, got str"):
        numrnn.Ensemble([numrnn.RNN(1, 2, seed=0), "net"])


@pytest.mark.parametrize("kw, key", [(dict(hidden_size=5), "hidden_size"),
                                     (dict(cell="gru"), "cell"),
                                     (dict(dtype=np.float32), "dtype"),
                                     (dict(num_layers=2), "num_layers"),
                                     (dict(alpha=0.5), "cell_options"),
                                     (dict(bidirectional=True), "bidirectional"),
                                     (dict(batch_first=True), "batch_first")])
def test_members_of_another_architecture_are_named(kw, key):
    base = dict(input_size=2, hidden_size=4, seed=0)
    odd = numrnn.RNN(**dict(base, **kw))
    with pytest.raises(ValueError, match=rf"members\[2\]: expected the architecture of "
                                         rf"members\[0\], got {key}="):
        numrnn.Ensemble([numrnn.RNN(**base), numrnn.RNN(**dict(base, seed=1)), odd])


def test_bad_schedule_and_random_arguments():
    nets = _nets(2)
    with pytest.raises(ValueError, match="parallel: expected one of"):
        numrnn.Ensemble(nets, parallel="threads")
    with pytest.raises(TypeError, match="gain: Ensemble.random takes gains="):
        numrnn.Ensemble.random(1, 4, gain=1.0)
    with pytest.raises(TypeError, match="seed: Ensemble.random takes seeds="):
        numrnn.Ensemble.random(1, 4, seed=1)
    with pytest.raises(TypeError, match=r"seeds\[1\]: expected an integer"):
        numrnn.Ensemble.random(1, 4, seeds=[0, np.random.default_rng(0)])
    with pytest.raises(TypeError, match="gains: expected a non-empty sequence"):
        numrnn.Ensemble.random(1, 4, gains=[])
    with pytest.raises(ValueError, match=r"gains\[1\]: expected a finite number"):
        numrnn.Ensemble.random(1, 4, gains=[1.0, -1.0])


def test_bad_inputs_are_named_with_both_shapes():
    ens = numrnn.Ensemble(_nets(3))
    x = np.zeros((5, 2, 2))
    with pytest.raises(ValueError, match=r"x: expected shape .*\(3, \*, \*, 2\), got "
                                         r"\(4, 5, 2, 2\)"):
        ens.forward(np.zeros((4, 5, 2, 2)))
    with pytest.raises(ValueError, match=r"x: expected shape \(\*, \*, 2\), got \(5, 2, 3\)"):
        ens.forward(np.zeros((5, 2, 3)))
    with pytest.raises(TypeError, match="x: expected dtype float64"):
        ens.forward(x.astype(np.float32))
    with pytest.raises(ValueError, match=r"h0: expected shape \(1, 2, 6\) \(shared by every "
                                          r"member\) or \(3, 1, 2, 6\) \(one per member\)"):
        ens.forward(x, np.zeros((2, 1, 2, 6)))
    with pytest.raises(ValueError, match=r"d_output: expected shape \(5, 2, 6\) .* or "
                                         r"\(3, 5, 2, 6\) .*, got \(5, 2, 7\)"):
        ens.vjp(x, np.zeros((5, 2, 7)))
    with pytest.raises(ValueError, match=r"d_h_n: expected"):
        ens.vjp(x, np.zeros((5, 2, 6)), d_h_n=np.zeros((1, 3, 6)))
    with pytest.raises(TypeError, match="h0: the tanh cell's state is one array"):
        ens.forward(x, (np.zeros((1, 2, 6)), None))
    with pytest.raises(ValueError, match="truncate: expected an integer >= 1"):
        ens.vjp(x, np.zeros((5, 2, 6)), truncate=0)
    lstm = numrnn.Ensemble(_nets(2, cell="lstm"))
    with pytest.raises(TypeError, match="h0: the lstm cell's state is a pair"):
        lstm.forward(x, np.zeros((1, 2, 6)))
    with pytest.raises(ValueError, match=r"c0: expected shape \(1, 2, 6\) .* or \(2, 1, 2, 6\)"):
        lstm.forward(x, (None, np.zeros((1, 2, 5))))


def test_bad_seeds_are_refused():
    ens = numrnn.Ensemble(_nets(3))
    x = np.zeros((5, 2, 2))
    with pytest.raises(TypeError, match="seed: a numpy.random.Generator is consumed"):
        ens.forward(x, noise_std=0.1, seed=np.random.default_rng(0))
    with pytest.raises(ValueError, match="seed, seeds: give one seed"):
        ens.forward(x, noise_std=0.1, seed=1, seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="seeds: expected 3 seeds"):
        ens.forward(x, noise_std=0.1, seeds=[1, 2])
    with pytest.raises(TypeError, match="seeds: expected a list or tuple of 3 seeds"):
        ens.forward(x, noise_std=0.1, seeds=np.arange(3))
    with pytest.raises(ValueError, match=r"seeds\[1\]: .*negative"):
        ens.lyapunov_spectrum(x, seeds=[1, -2, 3])
    g = np.random.default_rng(0)
    with pytest.raises(ValueError, match="the same numpy.random.Generator appears twice"):
        ens.lyapunov_spectrum(x, seeds=[g, g, 1])


@pytest.mark.parametrize("parallel", SCHEDULES)
def test_the_first_failing_member_is_raised_and_named(parallel):
    """Member 1 diverges (h_t = 1000 h_{t-1} + x_t overflows after about 103 steps)."""
    nets = [numrnn.RNN(1, 4, cell="linear", init="identity", gain=g, bias=False, seed=0)
            for g in (0.5, 1e3, 1e3)]
    for net in nets:
        net.parameters["weight_ih_l0"] = np.ones((4, 1))
    ens = numrnn.Ensemble(nets, parallel=parallel)
    with pytest.raises(numrnn.NonFiniteError) as info:
        ens.forward(np.ones((200, 2, 1)))
    if sys.version_info >= (3, 11):  # the note naming the member (add_note)
        assert "members[1]" in " ".join(info.value.__notes__)
    nets[0].parameters["weight_hh_l0"][0, 0] = np.nan  # in place: found when the call starts
    with pytest.raises(ValueError, match="weight_hh_l0") as info:
        ens.forward(np.ones((5, 2, 1)))
    if sys.version_info >= (3, 11):
        assert "members[0]" in " ".join(info.value.__notes__)


# --- members are the networks run alone --------------------------------------------------------


def _check_forward_vjp(ens, x, d_out, h0=None, d_h_n=None, per_member_x=False, **kw):
    out, h_n, grads = ens.forward_vjp(x, d_out, h0, d_h_n, **kw)
    stacked = ens.forward(x, h0, **{k: v for k, v in kw.items() if k != "truncate"})
    assert _bytes(stacked) == _bytes((out, h_n))
    M = len(ens)
    assert out.shape[0] == M and all(g.shape[0] == M for g in grads.values())
    seeds = kw.pop("seeds", None)
    state_rank = 2 if np.ndim(x) == 2 else 3  # a state's rank in a solo run
    for m, net in enumerate(ens):
        def pick(a):  # member m's state: shared, or its slice of a per-member one
            if isinstance(a, tuple):
                return tuple(pick(v) for v in a)
            return a[m] if a is not None and a.ndim == state_rank + 1 else a

        xm = x[m] if per_member_x else x
        kw_m = dict(kw, seed=seeds[m]) if seeds is not None else kw
        solo = net.forward_vjp(xm, d_out[m], pick(h0), pick(d_h_n), **kw_m)
        assert _bytes(solo) == _bytes(_member((out, h_n, grads), m)), f"member {m}"
    return grads


@pytest.mark.parametrize("parallel", SCHEDULES)
def test_forward_and_vjp_are_the_solo_runs(rng, split_work, parallel):
    ens = numrnn.Ensemble(_nets(4), parallel=parallel)
    x = rng.standard_normal((7, 3, 2))
    d_out = rng.standard_normal((4, 7, 3, 6))
    grads = _check_forward_vjp(ens, x, d_out)
    assert sorted(grads) == sorted(ens[0].vjp(x, d_out[0]))
    _check_forward_vjp(ens, x, d_out, truncate=3)
    xs = rng.standard_normal((4, 7, 3, 2))
    h0 = rng.standard_normal((4, 1, 3, 6))
    _check_forward_vjp(ens, xs, d_out, h0, d_h_n=rng.standard_normal((1, 3, 6)),
                       per_member_x=True)


def test_a_shared_d_output_is_every_members(rng):
    ens = numrnn.Ensemble(_nets(3))
    x = rng.standard_normal((6, 2, 2))
    d = rng.standard_normal((6, 2, 6))
    assert _bytes(ens.vjp(x, d)) == _bytes(ens.vjp(x, np.stack([d] * 3)))


@pytest.mark.parametrize("parallel", SCHEDULES)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gated_cells_with_state_pairs(rng, split_work, cell, parallel):
    ens = numrnn.Ensemble(_nets(3, cell=cell), parallel=parallel)
    x = rng.standard_normal((3, 6, 2, 2))
    d_out = rng.standard_normal((3, 6, 2, 6))
    if cell == "lstm":  # h0 per member, c0 shared; d_h_n: d_h per member, d_c None
        h0 = (rng.standard_normal((3, 1, 2, 6)), rng.standard_normal((1, 2, 6)))
        d_h_n = (rng.standard_normal((3, 1, 2, 6)), None)
    else:
        h0, d_h_n = rng.standard_normal((3, 1, 2, 6)), None
    _check_forward_vjp(ens, x, d_out, h0, d_h_n, per_member_x=True)


@pytest.mark.parametrize("parallel", SCHEDULES)
@pytest.mark.parametrize("kw", [dict(num_layers=2), dict(bidirectional=True),
                                dict(num_layers=2, bidirectional=True, cell="gru"),
                                dict(dtype=np.float32), dict(batch_first=True)],
                         ids=["2 layers", "bidirectional", "2-layer bidirectional gru",
                              "float32", "batch_first"])
def test_layers_directions_dtypes_layouts(rng, split_work, kw, parallel):
    ens = numrnn.Ensemble(_nets(3, **kw), parallel=parallel)
    dt = ens[0].dtype
    D = ens[0].num_directions
    T, B = 6, 2
    x = rng.standard_normal((B, T, 2) if ens[0].batch_first else (T, B, 2)).astype(dt)
    d_out = rng.standard_normal((3,) + x.shape[:2] + (D * 6,)).astype(dt)
    _check_forward_vjp(ens, x, d_out)
    _check_forward_vjp(ens, x, d_out, truncate=2)


def test_unbatched_shared_input(rng):
    ens = numrnn.Ensemble(_nets(3))
    x = rng.standard_normal((6, 2))
    d_out = rng.standard_normal((3, 6, 6))
    grads = _check_forward_vjp(ens, x, d_out, h0=rng.standard_normal((3, 1, 6)))
    assert grads["input"].shape == (3, 6, 2) and grads["state_grad_norm"].shape == (3, 6)


@pytest.mark.parametrize("parallel", SCHEDULES)
def test_noise_one_seed_for_all_or_one_each(rng, parallel):
    ens = numrnn.Ensemble(_nets(3), parallel=parallel)
    x = rng.standard_normal((6, 2, 2))
    d_out = rng.standard_normal((3, 6, 2, 6))
    _check_forward_vjp(ens, x, d_out, noise_std=0.3, seed=5)
    _check_forward_vjp(ens, x, d_out, noise_std=0.3, seeds=[5, 6, (7, 8)])


def test_thread_counts_and_schedules_give_the_solo_bits(rng, monkeypatch):
    """1, 2 and 4 threads over 4 blocks, both schedules: one set of bits, the solo runs'."""
    monkeypatch.setattr(config, "PARALLEL_BLOCKS", 4)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 1)
    nets = _nets(5, N=16, I=3, cell="gru")
    x = rng.standard_normal((5, 20, 4, 3))
    d_out = rng.standard_normal((5, 20, 4, 16))
    solo = [_bytes(net.forward_vjp(x[m], d_out[m])) for m, net in enumerate(nets)]
    for n in (1, 2, 4):
        monkeypatch.setattr(config, "NUM_THREADS", n)
        for parallel in ("members", "batch", "auto"):
            res = numrnn.Ensemble(nets, parallel=parallel).forward_vjp(x, d_out)
            assert [_bytes(_member(res, m)) for m in range(5)] == solo, (n, parallel)


def test_auto_shares_members_when_one_member_cannot_fill_the_threads(monkeypatch):
    monkeypatch.setattr(config, "NUM_THREADS", 2)
    monkeypatch.setattr(config, "PARALLEL_BLOCKS", 2)
    ens = numrnn.Ensemble(_nets(3, N=128))
    assert ens._in_parallel(2000, 1)          # one sequence: the recurrence is serial
    assert not ens._in_parallel(2000, 32)     # 32 sequences split over both threads
    assert not numrnn.Ensemble(_nets(3), parallel="batch")._in_parallel(2000, 1)
    assert not numrnn.Ensemble(_nets(1))._in_parallel(2000, 1)


def test_random_members_are_the_grid(rng):
    ens = numrnn.Ensemble.random(2, 5, gains=[0.5, 1.5], seeds=[3, 4, 5], cell="gru",
                                 bias_init="zeros")
    assert len(ens) == 6 and ens.grid == tuple((g, s) for g in (0.5, 1.5) for s in (3, 4, 5))
    for (g, s), net in zip(ens.grid, ens):
        alone = numrnn.RNN(2, 5, cell="gru", init="gaussian", gain=g, seed=s, bias_init="zeros")
        assert _bytes(net.state_dict()) == _bytes(alone.state_dict())
    stacked = ens.stacked_parameters()
    assert stacked["weight_hh_l0"].shape == (6, 15, 5)
    assert np.array_equal(stacked["bias_ih_l0"][4], ens[4].parameters["bias_ih_l0"])
    default = numrnn.Ensemble.random(1, 3, init="default", seeds=7)
    assert default.grid == ((None, 7),) and "M=1" in repr(default)


# --- the analyses --------------------------------------------------------------------------------


@pytest.mark.parametrize("parallel", ("auto", "batch"))
def test_lyapunov_spectra_are_the_solo_ones(parallel):
    ens = numrnn.Ensemble.random(1, 12, gains=[0.5, 2.5], seeds=[0, 1], bias=False,
                                 parallel=parallel)
    res = ens.lyapunov_spectrum(n_steps=200, k=4, seed=3)
    assert len(res) == 4
    for net, r in zip(ens, res):
        assert _result_bytes(r) == _result_bytes(
            numrnn.lyapunov_spectrum(net, n_steps=200, k=4, seed=3))
    seeds = [3, 4, np.random.SeedSequence(5), (6, 7)]
    res = ens.lyapunov_spectrum(n_steps=150, k=3, seeds=seeds, ons_interval=2)
    for net, s, r in zip(ens, seeds, res):
        assert _result_bytes(r) == _result_bytes(
            numrnn.lyapunov_spectrum(net, n_steps=150, k=3, seed=s, ons_interval=2))


def test_analyses_with_per_member_inputs_states_and_float32(rng):
    ens = numrnn.Ensemble(_nets(3, cell="lstm", dtype=np.float32))
    x = rng.standard_normal((3, 40, 2, 2)).astype(np.float32)
    h0 = (rng.standard_normal((3, 1, 2, 6)).astype(np.float32), None)
    J = ens.jacobians(x, h0)
    assert J.shape == (3, 40, 2, 12, 12)
    lyap = ens.lyapunov_spectrum(x, h0, k=3, seed=1)
    grad = ens.gradient_propagation(x, h0, lags=[1, 5, 40], seed=2)
    for m, net in enumerate(ens):
        h0m = (h0[0][m], None)
        assert J[m].tobytes() == numrnn.jacobians(net, x[m], h0m).tobytes()
        assert _result_bytes(lyap[m]) == _result_bytes(
            numrnn.lyapunov_spectrum(net, x[m], h0m, k=3, seed=1))
        assert _result_bytes(grad[m]) == _result_bytes(
            numrnn.gradient_propagation(net, x[m], h0m, lags=[1, 5, 40], seed=2))


def test_autonomous_analyses_with_shared_and_per_member_h0(rng):
    ens = numrnn.Ensemble.random(1, 8, gains=[1.5], seeds=[0, 1, 2], bias=False)
    J = ens.jacobians(n_steps=30, seed=4)
    assert J.shape == (3, 30, 8, 8)
    h0 = rng.standard_normal((3, 1, 1, 8))  # one per member: (M, L*D, B, N), B = 1
    grads = ens.gradient_propagation(n_steps=60, h0=h0, lags=[1, 10], seeds=[1, 2, 3])
    for m, net in enumerate(ens):
        assert J[m].tobytes() == numrnn.jacobians(net, n_steps=30, seed=4).tobytes()
        assert _result_bytes(grads[m]) == _result_bytes(
            numrnn.gradient_propagation(net, n_steps=60, h0=h0[m], lags=[1, 10], seed=m + 1))
    h0b = rng.standard_normal((1, 2, 8))  # batched and shared: two sequences each
    J = ens.jacobians(n_steps=10, h0=h0b)
    assert J.shape == (3, 10, 2, 8, 8)
    assert J[1].tobytes() == numrnn.jacobians(ens[1], n_steps=10, h0=h0b).tobytes()


def test_the_analysis_functions_take_an_ensemble():
    """numrnn.lyapunov_spectrum / jacobians / gradient_propagation given an ensemble run every
    member in one call, with the bits of the ensemble's methods (and so of each member)."""
    ens = numrnn.Ensemble.random(1, 6, gains=[0.8, 2.0], seeds=[0, 1], bias=False)
    a = numrnn.lyapunov_spectrum(ens, n_steps=120, k=2, seed=3)
    b = ens.lyapunov_spectrum(n_steps=120, k=2, seed=3)
    assert len(a) == 4 and all(np.array_equal(p.exponents, q.exponents) for p, q in zip(a, b))
    assert np.array_equal(numrnn.jacobians(ens, n_steps=20, seed=1),
                          ens.jacobians(n_steps=20, seed=1))
    g = numrnn.gradient_propagation(ens, n_steps=30, seed=2, lags=[5, 30])
    assert [r.log_norms.tolist() for r in g] == \
        [r.log_norms.tolist() for r in ens.gradient_propagation(n_steps=30, seed=2, lags=[5, 30])]
