"""Two versions of numrnn in one process, alternating call by call: changes of a few percent.

``ab_commits.py`` alternates whole processes, and resolves about 10% on the 2-core VMs. A change
of the fixed cost of a call (the Python around the kernels: a few microseconds in a hundred) is
smaller than that, and the machine drifts by more between two processes. Here the base commit's
``numrnn`` package is exported (``git archive``) into a temporary folder as a package of another
name, ``numrnn_base``, and imported next to this checkout's ``numrnn`` in the same process; both
build the same network from the same seed, and every round calls base and new back to back, in
alternating order (base, new, new, base, ...). Drift then hits both alike. The table gives each
version's 10th percentile and median over the calls and their ratios new / base.

Before timing, the two versions' results are compared: equal bits, or the largest difference
relative to the largest entry (a change may move the bits, as a new split rule does).

The base's kernels compile in the temporary folder on the first call (a minute or more for the
first cell and dtype: Numba's cache keys on the file's path). Inside ``numrnn_base`` a plain
``import numrnn`` (only ``numrnn.experiments`` has one) reaches the new version; the calls
timed here never make one.

Run:  python benchmarks/ab_calls.py HEAD~1 --cases "tanh,float32,1,32,1;gru,float64,1,32,200"
      python benchmarks/ab_calls.py fdbe61c --call forward --calls 3000 --json ab.json
"""
import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import ab_commits  # noqa: E402  (the cases' syntax)

CALLS = ("vjp", "forward", "forward_vjp")


def parse_cases(text):
    """"cell,dtype,B,N,T;..." -> [(cell, dtype, B, N, T)], or ValueError naming the bad case."""
    return ab_commits.parse_cases(text, ("B", "N", "T"))


def export_base(commit, folder):
    """The base commit's ``numrnn`` package, exported into ``folder`` as ``numrnn_base``."""
    archive = subprocess.run(["git", "-C", REPO, "archive", commit, "numrnn"],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"ab_calls.py: git archive {commit} failed: "
                         f"{archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
    os.rename(os.path.join(folder, "numrnn"), os.path.join(folder, "numrnn_base"))
    sys.path.insert(0, folder)
    base = importlib.import_module("numrnn_base")
    if not os.path.abspath(base.__file__).startswith(os.path.abspath(folder)):
        raise SystemExit(f"ab_calls.py: numrnn_base came from {base.__file__}, not {folder}")
    return base


def make_call(module, call, cell, dtype, B, N, T):
    net = module.RNN(N, N, cell=cell, dtype=dtype, seed=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, N)).astype(dtype)
    d = rng.standard_normal((T, B, N)).astype(dtype)
    if call == "vjp":
        return lambda: net.vjp(x, d)
    if call == "forward":
        return lambda: net.forward(x)
    return lambda: net.forward_vjp(x, d)


def arrays(result):
    """The arrays of a call's result, in a fixed order."""
    if isinstance(result, np.ndarray):
        return [result]
    if isinstance(result, dict):
        return [a for k in sorted(result) for a in arrays(result[k])]
    return [a for r in result for a in arrays(r)]


def difference(a, b):
    """'equal bits', or the largest |a - b| relative to the largest |a| over the arrays."""
    pairs = list(zip(arrays(a), arrays(b)))
    if all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in pairs):
        return "equal bits"
    worst = max(float(np.max(np.abs(x.astype(np.float64) - y)) / max(np.max(np.abs(x)), 1e-300))
                for x, y in pairs)
    return f"max rel. difference {worst:.1e}"


def measure(fns, calls):
    """Per-call seconds of each of the two functions, alternating which goes first."""
    times = ([], [])
    clock = time.perf_counter
    for i in range(calls):
        for j in ((0, 1) if i % 2 == 0 else (1, 0)):
            t = clock()
            fns[j]()
            times[j].append(clock() - t)
    return [np.array(t) for t in times]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", help="the base commit (any git revision)")
    ap.add_argument("--cases", default="tanh,float32,1,32,1;tanh,float32,1,32,200",
                    help="cell,dtype,B,N,T;... (default: %(default)s)")
    ap.add_argument("--call", default="vjp", choices=CALLS)
    ap.add_argument("--calls", type=int, default=2000, help="calls of each version per case")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    try:
        cases = parse_cases(args.cases)
    except ValueError as exc:
        ap.exit(2, f"ab_calls.py: {exc}\n")
    if args.calls < 10:
        ap.exit(2, f"ab_calls.py: --calls: expected at least 10, got {args.calls}\n")
    import numrnn
    from numrnn.cpu import blas

    rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", args.base],
                         capture_output=True, text=True)
    if rev.returncode != 0:
        ap.exit(2, f"ab_calls.py: {args.base!r} is not a commit of {REPO}\n")
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "numrnn"],
                           capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    new_name = head + (" + uncommitted changes" if dirty else "")
    rows = []
    with tempfile.TemporaryDirectory(prefix="numrnn-ab-") as folder:
        base = export_base(args.base, folder)
        print(f"# {args.call}: base {rev.stdout.strip()} ({os.path.dirname(base.__file__)}) "
              f"against {new_name} ({os.path.dirname(numrnn.__file__)}), one process, "
              f"{args.calls} calls each, alternating; {os.cpu_count()} CPUs; {blas.summary()}",
              flush=True)
        print("| cell | dtype | B | N | T | results | base p10 us | new p10 us | new / base p10 "
              "| base median us | new median us | new / base median |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for cell, dtype, B, N, T in cases:
            fns = [make_call(m, args.call, cell, dtype, B, N, T) for m in (base, numrnn)]
            compare = difference(fns[0](), fns[1]())  # (compiles both: untimed)
            measure(fns, min(50, args.calls))  # settle
            tb, tn = measure(fns, args.calls)
            p10 = [float(np.percentile(t, 10)) * 1e6 for t in (tb, tn)]
            med = [float(np.median(t)) * 1e6 for t in (tb, tn)]
            row = dict(cell=cell, dtype=dtype, B=B, N=N, T=T, call=args.call, results=compare,
                       base_p10_us=p10[0], new_p10_us=p10[1], ratio_p10=p10[1] / p10[0],
                       base_median_us=med[0], new_median_us=med[1], ratio_median=med[1] / med[0])
            rows.append(row)
            print(f"| {cell} | {dtype} | {B} | {N} | {T} | {compare} | {p10[0]:.1f} | "
                  f"{p10[1]:.1f} | {row['ratio_p10']:.3f} | {med[0]:.1f} | {med[1]:.1f} | "
                  f"{row['ratio_median']:.3f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(base=rev.stdout.strip(), new=new_name, call=args.call,
                           calls=args.calls, machine=blas.summary(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
