"""A small batch's step split over threads by units, against the batch split.

``numrnn.cpu.recurrence.unit_blocks`` decides, from the sizes and the dtype alone, whether each
step of a small batch is split by units over numrnn's threads (a spin barrier per step) or the
batch is split by sequences (at B = 1 on two blocks: the step runs whole on one thread).  This
script measures both ways on the same network in one process, alternating (the split forced by
replacing the rule with its edges, :func:`numrnn.cpu.recurrence.unit_edges`; forbidden by
``config.SPLIT_MIN_STEP_WORK`` = 10**18), each call after a short idle and one untimed forward,
for:

- forward + vjp at T = 200 (``RNN.vjp``, the table of ``bench_cpu.py``);
- forward alone at T = 2000 (the trajectory of an analysis, ``numrnn.lyapunov_spectrum``'s
  first pass).

B = 1 unless a case says (``cell:N:B``), I = N, float64 by default (a float64 multiply-add
counts twice in the rule: the step of a small batch is bound by reading M).  Medians of
``--rounds`` rounds; the ratio is batch split / unit split (> 1: the unit split is faster), with
the rule's choice at the default thresholds.
With jax installed, JAX's forward + vjp (``jax_peers``) is timed in the same rounds, as in
``bench_cpu.py`` (threads as they come).

    python benchmarks/bench_split.py
    python benchmarks/bench_split.py --cases tanh:160,gru:96 --dtype float32 --out results/x.json
    python benchmarks/bench_split.py --cases lstm:512:4,tanh:256:8 --rounds 9
"""
import argparse
import json
import os
import platform
import time

import numpy as np

import numrnn
from numrnn import config
from numrnn.cpu import blas, recurrence, threads

try:
    import jax

    import jax_peers
except ImportError:  # JAX is optional (the bench extra)
    jax = jax_peers = None

SETTLE_S = 0.005  # longer than the pool's idle spin (see bench_cpu.py)
DEFAULT_CASES = ("tanh:128,tanh:160,tanh:200,relu:160,relu:200,gru:80,gru:96,gru:112,"
                 "lstm:64,lstm:80,lstm:96")
WHOLE = 10**18


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _forced(B, N, RN, GN, steps, dtype):
    return recurrence.unit_edges(N)


def _choose(split):
    """The unit split forced (True) or forbidden (False)."""
    recurrence.unit_blocks = _forced if split else _RULE
    config.SPLIT_MIN_STEP_WORK = _DEFAULT if split else WHOLE


_RULE, _DEFAULT = recurrence.unit_blocks, config.SPLIT_MIN_STEP_WORK


def measure(cell, N, dtype, rounds, with_jax, B=1):
    net = numrnn.RNN(N, N, cell=cell, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, B, N)).astype(dtype)
    d_out = rng.standard_normal((200, B, N)).astype(dtype)
    x_long = rng.standard_normal((2000, B, N)).astype(dtype)
    G = net.gate_count
    chosen = recurrence.unit_blocks(B, N, N, G * N, 200, dtype) is not None
    peer = None  # JAX's forward + vjp, when timed
    if with_jax:
        cell_name, alpha = jax_peers.cell_options(net)
        params = jax_peers.parameters(net)
        xj, dj = jax.numpy.asarray(x), jax.numpy.asarray(d_out)
        fvjp = jax_peers.make_forward_vjp(cell_name, alpha)

        def jax_vjp():
            jax.block_until_ready(fvjp(params, xj, dj))
        jax_vjp()
        peer = jax_vjp
    samples = {k: [] for k in ("split vjp", "whole vjp", "split fwd", "whole fwd", "jax vjp")}
    try:
        for split in (True, False):  # compile and warm both paths
            _choose(split)
            net.vjp(x, d_out)
            net.forward(x_long)
        for _ in range(rounds):
            for split, name in ((True, "split"), (False, "whole")):
                _choose(split)
                time.sleep(SETTLE_S)
                net.forward(x)
                samples[f"{name} vjp"].append(_timed(lambda: net.vjp(x, d_out)))
                samples[f"{name} fwd"].append(_timed(lambda: net.forward(x_long)))
            if peer is not None:
                time.sleep(SETTLE_S)
                samples["jax vjp"].append(_timed(peer))
    finally:
        recurrence.unit_blocks, config.SPLIT_MIN_STEP_WORK = _RULE, _DEFAULT
    med = {k: 1e3 * float(np.median(v)) for k, v in samples.items() if v}
    row = dict(cell=cell, N=N, B=B, dtype=np.dtype(dtype).name, work=B * N * G * N,
               split_by_rule=chosen, **{k.replace(" ", "_") + "_ms": v for k, v in med.items()},
               vjp_ratio=med["whole vjp"] / med["split vjp"],
               fwd_ratio=med["whole fwd"] / med["split fwd"], load=os.getloadavg()[0])
    if "jax vjp" in med:
        ours = med["split vjp"] if chosen else med["whole vjp"]
        row["jax_over_numrnn_vjp"] = med["jax vjp"] / ours
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=DEFAULT_CASES, help="cell:N[:B],... (B = 1 unless given; "
                    "I = N)")
    ap.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--no-jax", action="store_true")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    if threads.num_blocks() < 2:
        raise SystemExit("one block on this machine: a step is never split")
    with_jax = jax_peers is not None and not args.no_jax
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.dtype}, median of {args.rounds} rounds; ratio = batch split / unit split; "
          f"thresholds {config.SPLIT_MIN_STEP_WORK} float32 multiply-adds a step, "
          f"{config.SPLIT_MAX_ROWS} sequences a block and {config.SPLIT_MIN_SEQUENCE_WORK} a "
          f"sequence's step above that; {blas.summary()}")
    print("| cell | N | B | multiply-adds a step | split by the rule | vjp T=200 batch / unit "
          "split (ms) | ratio | forward T=2000 batch / unit split (ms) | ratio |"
          + (" JAX vjp ms | JAX / numrnn |" if with_jax else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|---|" if with_jax else ""))
    rows = []
    for case in args.cases.split(","):
        cell, n, *b = case.split(":")
        B = int(b[0]) if b else 1
        r = measure(cell, int(n), np.dtype(args.dtype).type, args.rounds, with_jax, B)
        rows.append(r)
        line = (f"| {cell} | {n} | {B} | {r['work']} | {'yes' if r['split_by_rule'] else 'no'} | "
                f"{r['whole_vjp_ms']:.2f} / {r['split_vjp_ms']:.2f} | {r['vjp_ratio']:.2f} | "
                f"{r['whole_fwd_ms']:.2f} / {r['split_fwd_ms']:.2f} | {r['fwd_ratio']:.2f} |")
        if with_jax:
            line += f" {r['jax_vjp_ms']:.2f} | {r['jax_over_numrnn_vjp']:.2f} |"
        print(line, flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(machine=platform.processor() or platform.machine(),
                           cores=os.cpu_count(), dtype=args.dtype, rounds=args.rounds,
                           threshold=config.SPLIT_MIN_STEP_WORK,
                           max_rows=config.SPLIT_MAX_ROWS,
                           sequence_threshold=config.SPLIT_MIN_SEQUENCE_WORK,
                           blas=blas.summary(), rows=rows),
                      fh, indent=1)


if __name__ == "__main__":
    main()
