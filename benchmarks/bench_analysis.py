"""Cost of the dynamical-systems analysis of issue 15: full Lyapunov spectra, covariant Lyapunov
vectors, noise, and the main job (``numrnn study``) with its defaults.

    python benchmarks/bench_analysis.py                 # about three minutes on two cores
    python benchmarks/bench_analysis.py --out results/analysis_2core_epyc.json

Every figure is the median of ``--repeats`` calls after one untimed call (compilation or the
on-disk cache); the first call is reported apart.  There is no peer in this table: no other
package computes covariant Lyapunov vectors of RNNs, and the full-spectrum comparison with JAX
belongs to bench_cpu's issue (16).  The load average is recorded: on this shared machine, runs
with load above the core count are noise.
"""
import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

import numrnn
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-study", action="store_true", help="skip the numrnn study timing")
    args = ap.parse_args()
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
    for name, fn in cases:
        first, median, _ = timed(fn, args.repeats)
        rows.append({"case": f"{name}; tanh N=200 g=2, T={T}", "first_s": first,
                     "median_s": median, "load": os.getloadavg()[0]})
        print(f"{rows[-1]['case']:70s} first {first:7.2f} s  median {median:7.3f} s  "
              f"load {rows[-1]['load']:.1f}", flush=True)
    if not args.no_study:
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
            "numrnn": numrnn.__version__, "numpy": np.__version__,
            "date": time.strftime("%Y-%m-%d")}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
