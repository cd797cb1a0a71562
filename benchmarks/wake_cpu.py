"""A pool thread woken on its caller's CPU: numrnn's split forward after the process idled,
with the thread moving off that CPU (numrnn's way) and without (as before).

When both CPUs of a virtual machine have been idle, Linux can wake numrnn's sleeping pool
thread on the CPU of the thread that posts the job, busy as it is (a halted virtual CPU counts
as preempted, so not as idle).  The two threads of a :func:`numrnn.cpu.threads.together` run
then share one CPU, and every step's barrier waits for the scheduler until the load balancer
moves one of them.  numrnn's pool thread moves itself off its caller's CPU when it finds itself
there (``threads._leave_cpu``).  This script times one case's forward pass (split by units at
B = 1) after each of three idles, in rounds that alternate the two ways call by call in one
process ("stay": ``_leave_cpu`` replaced by a function that moves nothing).

Run:  python benchmarks/wake_cpu.py                           (tanh float64 B = 1 N = 128 T = 500)
      python benchmarks/wake_cpu.py --cell gru --hidden 256 --calls 40
"""
import argparse
import os
import time

import numpy as np

import numrnn
from numrnn.cpu import threads


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cell", default="tanh")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--calls", type=int, default=30, help="calls per way and idle")
    args = ap.parse_args(argv)
    for name in ("hidden", "steps", "calls"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}: expected 1 or more, got {getattr(args, name)}")
    net = numrnn.RNN(args.hidden, args.hidden, cell=args.cell, seed=0)
    x = np.random.default_rng(0).standard_normal((args.steps, args.hidden))
    leave = threads._leave_cpu
    ways = {"move": leave, "stay": lambda cpu: False}
    for _ in range(3):  # compiled, the pool made, and past its first (one-thread) run
        net.forward(x)

    def busy(seconds):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            pass

    idles = {"30 ms asleep": lambda: time.sleep(0.03), "5 ms asleep": lambda: time.sleep(0.005),
             "none (back to back)": lambda: None, "30 ms busy": lambda: busy(0.03)}
    times = {(i, w): [] for i in idles for w in ways}
    moves = dict.fromkeys(idles, 0)
    try:
        for idle, before in idles.items():
            for c in range(args.calls):
                for way in (list(ways) if c % 2 == 0 else list(ways)[::-1]):
                    threads._leave_cpu = ways[way]
                    before()
                    m = sum(w.moves for w in threads._pool or [])
                    t = time.perf_counter()
                    net.forward(x)
                    times[(idle, way)].append(time.perf_counter() - t)
                    moves[idle] += sum(w.moves for w in threads._pool or []) - m
                    # no run of one thread between the calls (threads.together's WAITED_RUNS)
                    threads._alone_until, threads._waited_runs = 0.0, 0
    finally:
        threads._leave_cpu = leave
    print(f"# {args.cell} float64 B=1 N={args.hidden} T={args.steps}: net.forward after each "
          f"idle, {args.calls} calls per way, alternating call by call; {os.cpu_count()} CPUs, "
          f"threads {threads.num_threads()}")
    print("| idle before the call | way | median ms | p90 ms | max ms | calls over 5 ms | "
          "moves |")
    print("|---|---|---|---|---|---|---|")
    for idle in idles:
        for way in ways:
            a = np.array(times[(idle, way)]) * 1e3
            print(f"| {idle} | {way} | {np.median(a):.2f} | {np.percentile(a, 90):.2f} | "
                  f"{a.max():.1f} | {(a > 5).sum()} of {len(a)} | "
                  f"{moves[idle] if way == 'move' else '-'} |")


if __name__ == "__main__":
    main()
