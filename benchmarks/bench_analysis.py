"""Cost of the dynamical-systems analysis (issue 15), and against JAX (issue 16).

Issue 15's cases: full Lyapunov spectra, covariant Lyapunov vectors, noise, and the main job
(``numrnn study``) with its defaults.  Issue 16's: step Jacobians and Lyapunov spectra, against
JAX.

    python benchmarks/bench_analysis.py                 # about three minutes on two cores
    python benchmarks/bench_analysis.py --out results/analysis_2core_epyc.json
    python benchmarks/bench_analysis.py --jax-only      # issue 16's cases alone
    python benchmarks/bench_analysis.py --jax-only --smoke --repeats 1   # seconds; no figures

Issue 15's cases: every figure is the median of ``--repeats`` (default 3) calls after one
untimed call (compilation or the on-disk cache); the first call is reported apart.  No peer
there: no other package computes covariant Lyapunov vectors of RNNs.

Issue 16's cases (when jax is installed; the JAX twins are in ``jax_peers.py``), float64:

- ``numrnn.jacobians(net, x)`` for tanh, GRU and LSTM, T = 500, B = 1, N = I = 128, PyTorch's
  default initialisation (seed 0), x ~ N(0, 1) from seed 0, against ``jax.vmap(jax.jacfwd(one
  step))`` over the T steps after JAX's forward scan (J_t = d s_t / d s_{t-1}, s = h or [h, c]).
  Checked before timing: max |J_jax - J_numrnn| / max |J_numrnn| below 1e-10.
- ``numrnn.lyapunov_spectrum(net, n_steps=2000, k=k, seed=0)`` for k = 10 and k = 200 (the full
  spectrum) of the autonomous tanh network of issue 15's cases (N = 200, g = 2), against JAX's
  Benettin loop: one ``lax.scan`` carrying h and the frame Q, h_t = tanh(W_hh h_{t-1} + b),
  Q <- qr(diag(1 - h_t^2) W_hh Q), from numrnn's initial state and frame for the seed and with
  its transient (T // 10 = 200 steps); JAX's time includes its forward pass and the draw of h0
  and Q, as numrnn's call does.  Checked before timing: (1) JAX's first 50 states equal numrnn's
  to 1e-10 (the same h0 and map); (2) JAX's QR loop run along numrnn's own states gives numrnn's
  exponents to 1e-10 (relative to the largest); (3) the timed run, on JAX's own trajectory, gives
  them within 6 of numrnn's batch-means standard errors.  (3) cannot be tighter: the network is
  chaotic, so the two trajectories, equal to rounding at the start, part after about 100 steps
  (the rounding of tanh differs by an ulp or two, and grows like exp(lambda_1 t)), and after the
  transient the two runs sample the same attractor along different paths: their exponents agree
  to their statistical error (a few 1e-3 per step), not to rounding.

JAX is timed in two settings, and the better one is its figure: as it comes (XLA's pool on the
process's CPUs; its QR calls LAPACK's geqrf/orgqr in SciPy's OpenBLAS, at the process's thread
count), and with that OpenBLAS held to one thread for the call (numrnn.cpu.blas.single_threaded),
as numrnn's analysis holds it.  On a loaded 2-core machine the 2-thread OpenBLAS made JAX's
200 x 200 QR loop 2-40x slower.  Each case: one first call of each, made by the checks (JAX's
with the BLAS at one thread) and reported apart ("first": numrnn's Numba compilation or cache,
JAX's tracing and XLA compilation, plus one run), then ``--repeats`` (default 9) interleaved
rounds (numrnn, JAX, JAX with one BLAS thread, numrnn, ...); medians, and the ratio JAX time /
numrnn time (> 1: numrnn is faster).  Nine rounds, since the two or three Jacobian calls after
the first can be several times slower than the later ones (benchmarks/README.md).  The load
average is recorded: on this shared machine, runs with load above the core count are noise.
"""
import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

import numrnn
from numrnn.cpu import blas
from numrnn.experiments import StudyConfig, run_study


def timed(fn, repeats):
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), out


def first_call(fn):
    """(seconds, result) of a call: the first one compiles (or loads numrnn's on-disk cache)."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def interleaved(fns, repeats):
    """{name: median s} of ``repeats`` rounds calling each of ``fns`` in turn (after their first
    calls, made by the caller's checks)."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def rel_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def jax_turns(fn):
    """JAX's two settings: as it comes (its LAPACK calls, the QR, go through SciPy's OpenBLAS at
    the process's thread count), and with that BLAS held to one thread for the call, as numrnn's
    analysis holds it (numrnn.cpu.blas.single_threaded)."""
    turns = {"jax": fn}
    if blas.can_limit_threads():
        def held():
            with blas.single_threaded():
                return fn()

        turns["jax blas1"] = held
    return turns


def jax_row(name, fns, first, repeats, checks, refused):
    """Time numrnn against JAX's settings (unless a check refused the peer); print and return
    the row.  ``first``: {"numrnn", "jax": seconds} of the first calls, made by the checks
    (JAX's with the BLAS at one thread where it can be held)."""
    row = {"case": name, "peer": "jax", "checks": checks, "numrnn_first_s": first["numrnn"],
           "jax_first_s": first["jax"], "load": os.getloadavg()[0]}
    if refused:
        print(f"{name:58s} JAX refused, not timed: {refused}", flush=True)
        row["refused"] = refused
        return row
    med = interleaved(fns, repeats)
    by_setting = {k: v for k, v in med.items() if k.startswith("jax")}
    best = min(by_setting, key=by_setting.get)
    row.update(numrnn_median_s=med["numrnn"], jax_median_s=med[best],
               jax_setting="BLAS at 1 thread" if best == "jax blas1" else "as it comes",
               jax_median_s_by_setting=by_setting,
               ratio_jax_over_numrnn=med[best] / med["numrnn"], load=os.getloadavg()[0])
    others = ", ".join(f"{k} {v:.3f} s" for k, v in by_setting.items())
    print(f"{name:58s} numrnn {row['numrnn_median_s']:7.3f} s  JAX {row['jax_median_s']:7.3f} s"
          f"  JAX/numrnn {row['ratio_jax_over_numrnn']:5.2f}  ({others}); first: numrnn "
          f"{row['numrnn_first_s']:.2f} s, JAX {row['jax_first_s']:.2f} s (compile + one run)  "
          f"load {row['load']:.1f}", flush=True)
    return row


def jax_cases(lyap_net, repeats, smoke=False):
    """Issue 16's cases against JAX; [] (with a note) without jax."""
    try:
        import jax

        import jax_peers
    except ImportError:
        print("# jax is not installed (pip install -e .[bench]): issue 16's cases skipped")
        return [], None
    jnp = jax.numpy
    rows = []
    T_jac, T_lyap = (50, 100) if smoke else (500, 2000)
    N = 128
    for cell in ("tanh", "gru", "lstm"):
        net = numrnn.RNN(N, N, cell=cell, seed=0)
        x = np.random.default_rng(0).standard_normal((T_jac, 1, N))
        params, xj = jax_peers.parameters(net), jnp.asarray(x[:, 0])
        jac = jax_peers.make_jacobians(*jax_peers.cell_options(net))
        fns = {"numrnn": lambda net=net, x=x: numrnn.jacobians(net, x),
               **jax_turns(lambda jac=jac, params=params, xj=xj:
                           jax.block_until_ready(jac(params, xj)))}
        first = {}
        first["numrnn"], J = first_call(fns["numrnn"])
        first["jax"], J_jax = first_call(fns.get("jax blas1", fns["jax"]))
        err = rel_error(J_jax, J[:, 0])
        del J, J_jax
        refused = (f"max |J_jax - J_numrnn| / max |J_numrnn| = {err:.2e} > 1e-10"
                   if not err < 1e-10 else None)
        rows.append(jax_row(f"jacobians {cell}, T={T_jac}, B=1, N=I={N}", fns, first, repeats,
                            {"jacobian_rel_error": err}, refused))
        print(f"  check: max |J_jax - J_numrnn| / max |J_numrnn| = {err:.1e}", flush=True)
    net = lyap_net
    cell, alpha = jax_peers.cell_options(net)
    params = jax_peers.parameters(net)
    transient = T_lyap // 10  # numrnn's default
    n_check = min(50, T_lyap)
    for k in (10, net.hidden_size):
        def ours(k=k):
            return numrnn.lyapunov_spectrum(net, n_steps=T_lyap, k=k, seed=0)

        lyap = jax_peers.make_lyapunov(T_lyap, transient, alpha)

        def theirs(k=k, lyap=lyap):  # the draws of h0 and Q too, as numrnn's call makes them
            h0, q0 = jax_peers.lyapunov_start(net, k, 0)
            return np.asarray(lyap(params, jnp.asarray(h0), jnp.asarray(q0)))

        fns = {"numrnn": ours, **jax_turns(theirs)}
        first = {}
        first["numrnn"], reference = first_call(ours)
        first["jax"], own = first_call(fns.get("jax blas1", fns["jax"]))
        h0, q0 = jax_peers.lyapunov_start(net, k, 0)
        states = net.forward(np.zeros((T_lyap, net.input_size)), h0[None])[0]  # numrnn's
        start = np.asarray(jax_peers.make_autonomous_states(n_check, alpha)(
            params, jnp.asarray(h0)))
        along = jax_peers.make_lyapunov_along(transient, alpha)
        with blas.single_threaded():
            along = np.asarray(along(params["weight_hh_l0"], jnp.asarray(states),
                                     jnp.asarray(q0)))
        checks = {"start_rel_error": rel_error(start, states[:n_check]),
                  "along_rel_error": rel_error(along, reference.exponents),
                  "own_max_abs_diff": float(np.max(np.abs(own - reference.exponents))),
                  "own_max_diff_over_stderr": float(np.max(np.abs(own - reference.exponents)
                                                           / reference.stderr))}
        refused = []
        if not checks["start_rel_error"] < 1e-10:
            refused.append(f"its first {n_check} states differ from numrnn's by "
                           f"{checks['start_rel_error']:.2e} (relative)")
        if not checks["along_rel_error"] < 1e-10:
            refused.append(f"its QR loop along numrnn's states gives exponents "
                           f"{checks['along_rel_error']:.2e} (relative) from numrnn's")
        if not checks["own_max_diff_over_stderr"] < 6:
            refused.append(f"its exponents are {checks['own_max_diff_over_stderr']:.1f} "
                           "standard errors from numrnn's")
        what = "full" if k == net.hidden_size else f"k={k}"
        rows.append(jax_row(f"lyapunov_spectrum {what} ({k}), tanh N={net.hidden_size} g=2, "
                            f"T={T_lyap}", fns, first, repeats, checks,
                            "; ".join(refused) or None))
        print(f"  checks: first {n_check} states {checks['start_rel_error']:.1e}, QR loop along "
              f"numrnn's states {checks['along_rel_error']:.1e} (relative); own trajectory: "
              f"max |diff| {checks['own_max_abs_diff']:.1e} = "
              f"{checks['own_max_diff_over_stderr']:.1f} stderr", flush=True)
    return rows, jax_peers.version


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed calls per case (default 3 for issue 15's cases, 9 for issue "
                         "16's against JAX: the two or three Jacobian calls after the first "
                         "took 40-116 ms where the later ones took 7-16 on the 2-core Zen 4, "
                         "see benchmarks/README.md)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-study", action="store_true", help="skip the numrnn study timing")
    ap.add_argument("--jax-only", action="store_true",
                    help="run only issue 16's cases against JAX")
    ap.add_argument("--no-jax", action="store_true", help="skip issue 16's cases against JAX")
    ap.add_argument("--smoke", action="store_true",
                    help="issue 16's cases on short trajectories (Jacobians T=50, Lyapunov "
                         "T=100): a check that the script runs, not for figures")
    args = ap.parse_args()
    if args.repeats is not None and args.repeats < 1:
        ap.error(f"--repeats: expected a count of 1 or more, got {args.repeats}")
    blas_note = blas.vector_width_note()
    print(f"# {blas.summary()}")
    if blas_note:
        print(f"# note: {blas_note}")
    rows = []
    net = numrnn.RNN(1, 200, init="gaussian", gain=2.0, zero_diagonal=True, bias_init="zeros",
                     seed=0)
    T = 2000
    cases = [
        ("lyapunov_spectrum k=10", lambda: numrnn.lyapunov_spectrum(net, n_steps=T, k=10,
                                                                     seed=0)),
        ("lyapunov_spectrum k=200 (full)", lambda: numrnn.lyapunov_spectrum(net, n_steps=T,
                                                                             seed=0)),
        ("lyapunov_spectrum k=200, noise_std=0.5", lambda: numrnn.lyapunov_spectrum(
            net, n_steps=T, seed=0, noise_std=0.5)),
        ("CLV k=20, every time (1600)", lambda: numrnn.covariant_lyapunov_vectors(
            net, n_steps=T, k=20, seed=0)),
        ("CLV k=200, one time", lambda: numrnn.covariant_lyapunov_vectors(
            net, n_steps=T, times=[1000], seed=0)),
        ("CLV k=200, 160 times", lambda: numrnn.covariant_lyapunov_vectors(
            net, n_steps=T, times=np.arange(200, 1800, 10), seed=0)),
        ("CLV k=200, one time, R on disk", lambda: numrnn.covariant_lyapunov_vectors(
            net, n_steps=T, times=[1000], seed=0, storage="disk")),
    ]
    for name, fn in ([] if args.jax_only else cases):
        first, median, _ = timed(fn, 3 if args.repeats is None else args.repeats)
        rows.append({"case": f"{name}; tanh N=200 g=2, T={T}", "first_s": first,
                     "median_s": median, "load": os.getloadavg()[0]})
        print(f"{rows[-1]['case']:70s} first {first:7.2f} s  median {median:7.3f} s  "
              f"load {rows[-1]['load']:.1f}", flush=True)
    jax_version = None
    if not args.no_jax:
        jax_rows, jax_version = jax_cases(net, 9 if args.repeats is None else args.repeats,
                                          smoke=args.smoke)
        rows += jax_rows
    if not (args.no_study or args.jax_only):
        cfg = StudyConfig()
        start = time.perf_counter()
        result = run_study(cfg)
        wall = time.perf_counter() - start
        rows.append({"case": "numrnn study defaults (11 gains x 3 seeds, N=200, full spectrum, "
                             "700 steps), serial, no figure", "first_s": wall, "median_s": wall,
                     "load": os.getloadavg()[0]})
        print(f"{rows[-1]['case']}: {wall:.1f} s  load {rows[-1]['load']:.1f}", flush=True)
        print(result.table())
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "numrnn": numrnn.__version__, "numpy": np.__version__, "jax": jax_version,
            "date": time.strftime("%Y-%m-%d"), "blas": blas.summary(),
            "blas_note": blas_note}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
