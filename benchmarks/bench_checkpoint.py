"""Checkpointed BPTT (issue 14): peak memory and time against full BPTT, in long runs.

    python benchmarks/bench_checkpoint.py --out benchmarks/results/checkpoint_2core_epyc.json
    python benchmarks/bench_checkpoint.py --quick      # T = 10^4 and 10^5 only

Each case runs in a fresh process (so that its peak resident memory is its own): N = 256,
I = 1, float64, the loss on h_n alone (``vjp(x, None, d_h_n=...)``, so the outputs are never
kept), full BPTT where its tape fits this machine and checkpointed BPTT with
``checkpoint="auto"`` (about sqrt(T) steps per segment).  Reported per case: wall seconds
(median of ``--repeats``, after one untimed call that compiles or loads the kernels), the peak of
NumPy's traced allocations (tracemalloc, measured on one more call) and the process's peak
resident memory (ru_maxrss: interpreter, Numba and the kernels included, about 0.2 GB); and
"ideal", the memory of a sqrt(T) tape: 2 sqrt(T) steps' worth of states (T/k checkpoints of the
state and one segment of k = sqrt(T) steps of records) plus the T-long arrays every method holds
(the input, its gradient and the gradient norms).  Checkpointed and full runs of a case also
compare their gradients bit for bit.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np

CASES = [  # (cell, B, T, run the full tape too)
    ("tanh", 1, 10**4, True), ("lstm", 1, 10**4, True),
    ("tanh", 32, 10**4, True), ("lstm", 32, 10**4, True),
    ("tanh", 1, 10**5, True), ("lstm", 1, 10**5, True),
    ("tanh", 32, 10**5, False), ("lstm", 32, 10**5, False),
    ("tanh", 1, 10**6, False), ("lstm", 1, 10**6, False),
]


def run_case(cell, B, T, full, repeats):
    import numrnn
    from numrnn import driver

    net = numrnn.RNN(1, 256, cell=cell, init="gaussian", gain=0.9, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, 1))
    v = rng.standard_normal((1, B, 256))
    d_h_n = (v, np.zeros_like(v)) if cell == "lstm" else v
    row = {"cell": cell, "B": B, "T": T, "N": 256}
    k = driver.auto_interval(net, driver.backend_of(net), T, B)
    row["k"] = k
    # a sqrt(T) tape: T/k states and k steps of records (the states, aux and projection of a
    # step: what the full tape keeps per step) at k = sqrt(T)
    per_state = B * 256 * net.state_count * 8
    per_record = B * 256 * (net.state_count + net.definition.aux_count + net.gate_count) * 8
    arrays = T * B * (8 + 8 + 8)  # x, its gradient, the norms
    grads = net.parameter_count() * 8  # the gradient buffer, which every method fills
    row["ideal_bytes"] = int(T ** 0.5 * (per_state + per_record) + arrays + grads)

    def call(checkpoint):
        return net.vjp(x, None, d_h_n=d_h_n, checkpoint=checkpoint)

    results = {}
    for label, checkpoint in ([("full", None)] if full else []) + [("checkpointed", k)]:
        if label == "full":
            row["full_tape_bytes"] = int(driver.bytes_needed(net, T, B, backward=True))
        long = T >= 10**6  # one traced, timed call (the kernels load from the disk cache)
        if not long:
            call(checkpoint)
        times = []
        for _ in range(1 if long else repeats):
            if long:
                tracemalloc.start()
            start = time.perf_counter()
            results[label] = call(checkpoint)
            times.append(time.perf_counter() - start)
        if not long:
            tracemalloc.start()
            call(checkpoint)
        row[f"{label}_traced_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        row[f"{label}_s"] = float(np.median(times))
    if full:
        row["bitwise_equal"] = all(np.array_equal(results["full"][key],
                                                  results["checkpointed"][key])
                                   for key in results["full"])
        row["time_ratio"] = row["checkpointed_s"] / row["full_s"]
    row["maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row["load"] = os.getloadavg()[0]
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="only these B")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        cell, B, T, full = args.case.split(",")
        print(json.dumps(run_case(cell, int(B), int(T), full == "1", args.repeats)))
        return
    rows = []
    for cell, B, T, full in CASES:
        if args.quick and T > 10**5 or args.batch and B not in args.batch:
            continue
        proc = subprocess.run([sys.executable, __file__, "--case", f"{cell},{B},{T},{int(full)}",
                               "--repeats", str(args.repeats)], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-2000:], file=sys.stderr)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        gib = 2.0**30
        full_s = f"{row['full_s']:.2f} s" if "full_s" in row else "-"
        print(f"{cell:5s} B={B:<3d} T={T:<8d} k={row['k']:<5d} full {full_s:>9s}  checkpointed "
              f"{row['checkpointed_s']:.2f} s  ratio {row.get('time_ratio', float('nan')):.2f}  "
              f"traced {row['checkpointed_traced_bytes'] / gib:.3f} GiB (ideal "
              f"{row['ideal_bytes'] / gib:.3f})  rss {row['maxrss_bytes'] / gib:.2f} GiB  "
              f"bitwise {row.get('bitwise_equal', '-')}  load {row['load']:.1f}", flush=True)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "numpy": np.__version__, "date": time.strftime("%Y-%m-%d")}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
