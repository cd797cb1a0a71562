"""What a short idle before a call costs numrnn and JAX: back to back against bench_cpu.py's turn.

``bench_cpu.py`` starts each contender's turn after 5 ms idle and one untimed forward call (so
that the previous contender's threads have settled). This script times forward + vjp of one
case both ways, for numrnn and JAX@2 (threads as they come), in alternating rounds of one
process: "back to back" (calls one after another) and "after idle" (each call after the turn's
idle and untimed forward). numrnn's pool is run at its default threads and at one thread
(``config.NUM_THREADS = 1``), to tell its threads apart from the rest of the call.

Run:  python benchmarks/idle_cost.py                       (tanh float32 B = 1 N = 32 T = 200)
      python benchmarks/idle_cost.py --case lstm,float64,1,128 --rounds 8 --calls 40
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_cpu  # noqa: E402  (the cases, the JAX twin and the protocol's idle)
from numrnn import config  # noqa: E402
from numrnn.cpu import blas  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", default="tanh,float32,1,32", help="cell,dtype,B,N")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=40, help="calls per contender, mode and round")
    args = ap.parse_args(argv)
    try:
        cell, dtype, B, N = args.case.split(",")
        B, N = int(B), int(N)
    except ValueError:
        ap.exit(2, f"idle_cost.py: --case: expected cell,dtype,B,N, got {args.case!r}\n")
    net, _, x, d = bench_cpu.make_case(cell, dtype, B, N, args.steps)
    nf, nfb = bench_cpu.numrnn_fns(net, x, d)
    default_threads = config.NUM_THREADS
    contenders = {"numrnn": (nf, nfb, default_threads), "numrnn@1": (nf, nfb, 1)}
    if bench_cpu.jax_peers is not None:
        jf, jfb, _ = bench_cpu.jax_fns(net, x, d)
        contenders["jax@2"] = (jf, jfb, default_threads)
    for f, fb, _ in contenders.values():
        f()
        fb()
    samples = {}
    for r in range(args.rounds):
        names = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
        for name in names:
            f, fb, n_threads = contenders[name]
            config.NUM_THREADS = n_threads
            for mode in ("back to back", "after idle"):
                times = samples.setdefault((name, mode), [])
                for _ in range(args.calls):
                    if mode == "after idle":
                        time.sleep(bench_cpu.SETTLE_S)
                        f()
                    t = time.perf_counter()
                    fb()
                    times.append(time.perf_counter() - t)
    config.NUM_THREADS = default_threads
    print(f"# {cell} {dtype} B={B} N={N} T={args.steps}: forward + vjp, {args.rounds} rounds of "
          f"{args.calls} calls, alternating; idle = {bench_cpu.SETTLE_S * 1e3:g} ms and one "
          f"untimed forward; {os.cpu_count()} CPUs; {blas.summary()}")
    print("| contender | back to back median us (p10) | after idle median us (p10) | "
          "after idle / back to back (median) |")
    print("|---|---|---|---|")
    for name in contenders:
        a, b = (np.array(samples[(name, m)]) * 1e6 for m in ("back to back", "after idle"))
        print(f"| {name} | {np.median(a):.0f} ({np.percentile(a, 10):.0f}) | {np.median(b):.0f} "
              f"({np.percentile(b, 10):.0f}) | {np.median(b) / np.median(a):.2f} |")


if __name__ == "__main__":
    main()
