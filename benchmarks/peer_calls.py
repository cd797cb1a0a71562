"""numrnn against torch in one process, alternating call by call: a peer ratio without the drift
between processes.

``bench_cpu.py`` times each contender in its own turn (after an idle and an untimed forward) and
takes the median of three interleaved runs; on a noisy VM the same point moves by 30% between
two grids. Here, for each case, numrnn's forward and forward + vjp and torch's forward and
forward + backward (at ``--torch-threads``) are called one after another, round after round, in
one process, so that drift hits all four alike. The outputs and gradients are compared first
(the largest difference relative to the largest entry). The table gives each contender's best
and median in milliseconds and the ratios torch / numrnn (> 1: numrnn is faster).

Run:  python benchmarks/peer_calls.py                     (lstm float32 B = 32 N = 512 T = 200)
      python benchmarks/peer_calls.py --cases "lstm,float32,1,512;gru,float64,32,128" --rounds 15
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ab_commits  # noqa: E402  (the cases' syntax)
import bench_cpu  # noqa: E402  (the cases and the contenders' calls)


def _largest_difference(net, module, x, d_out):
    """The largest difference of outputs and gradients, relative to each one's largest entry."""
    out_t, grads_t = bench_cpu.torch_result(module, x, d_out)
    out_n = net.forward(x)[0]
    grads_n = net.vjp(x, d_out)
    worst = float(np.max(np.abs(out_n - out_t)) / max(np.max(np.abs(out_t)), 1e-300))
    for name, g in grads_t.items():
        worst = max(worst, float(np.max(np.abs(grads_n[name] - g))
                                 / max(np.max(np.abs(g)), 1e-300)))
    return worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="lstm,float32,32,512", help="cell,dtype,B,N;...")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--torch-threads", type=int, default=2)
    args = ap.parse_args(argv)
    try:
        cases = ab_commits.parse_cases(args.cases)
    except ValueError as exc:
        ap.exit(2, f"peer_calls.py: {exc}\n")
    if args.rounds < 3 or args.steps < 1 or args.torch_threads < 1:
        ap.exit(2, "peer_calls.py: --rounds must be at least 3, --steps and --torch-threads at "
                   "least 1\n")
    import torch

    from numrnn.cpu import blas
    torch.set_num_threads(args.torch_threads)
    print(f"# numrnn against torch@{args.torch_threads} ({torch.__version__}), one process, "
          f"alternating, {args.rounds} rounds, T = {args.steps}, I = N; {os.cpu_count()} CPUs; "
          f"{blas.summary()}")
    print("| cell | dtype | B | N | largest difference | fwd ms numrnn | torch | fwd ratio | "
          "f+b ms numrnn | torch | f+b ratio (best) | f+b ratio (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cell, dtype, B, N in cases:
        net, module, x, d_out = bench_cpu.make_case(cell, dtype, B, N, args.steps)
        worst = _largest_difference(net, module, x, d_out)
        nf, nb = bench_cpu.numrnn_fns(net, x, d_out)
        tf, tb = bench_cpu.torch_fns(module, x, d_out)
        fns = {"nf": nf, "nb": nb, "tf": tf, "tb": tb}
        times = {k: [] for k in fns}
        for f in fns.values():
            f()
        for _ in range(args.rounds):
            for k, f in fns.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
        best = {k: min(v) * 1e3 for k, v in times.items()}
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        print(f"| {cell} | {dtype} | {B} | {N} | {worst:.1e} | {best['nf']:.2f} | "
              f"{best['tf']:.2f} | {best['tf'] / best['nf']:.2f}x | {best['nb']:.2f} | "
              f"{best['tb']:.2f} | {best['tb'] / best['nb']:.2f}x | "
              f"{med['tb'] / med['nb']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
