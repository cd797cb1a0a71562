"""Two versions of numrnn, timed in alternating processes: a change's effect under the noise.

On the 2-core VMs this project is measured on, the same code's forward + vjp moves by 30% from one
run of ``bench_cpu.py`` to the next (the host takes cores, caches and clocks in turns), so one
grid per version cannot resolve a change of a few percent.  This script runs each version in its
own process, alternating the two (base, new, new, base, base, ...) for ``--rounds`` rounds, each
process timing every case with ``bench_cpu.py``'s protocol (5 ms idle, one untimed forward call,
then forward and forward + vjp timed; the median of ``--calls`` such turns).  Drift that spans a
round hits both versions; the table gives each version's median over the rounds and the
per-round ratio new / base (median, and its range over the rounds).

The base is a commit, checked out in a temporary git worktree (removed after; its kernels compile
there on the first round, before timing).  The new version is this checkout, as it is on disk
(uncommitted edits included), or another commit with ``--new``.  Each process checks that it
imported numrnn from its own tree.  numrnn only: no peers, so the two versions see the same
machine and nothing else.

Run:  python benchmarks/ab_commits.py HEAD~1 --cases "tanh,float32,1,32;lstm,float64,32,128"
      python benchmarks/ab_commits.py 4260f50 --new 7d813f4 --rounds 6 --json ab.json
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SETTLE_S = 0.005


def parse_cases(text, sizes=("B", "N")):
    """"cell,dtype,B,N;..." -> [(cell, dtype, B, N)] (``sizes``: the integers after the dtype,
    by name), or ValueError naming the bad case."""
    names = ", ".join(sizes[:-1]) + " and " + sizes[-1]
    cases = []
    for spec in filter(None, (s.strip() for s in text.split(";"))):
        parts = spec.split(",")
        if len(parts) != 2 + len(sizes) or parts[1] not in ("float32", "float64"):
            raise ValueError(f"--cases: expected cell,float32|float64,{','.join(sizes)}, got "
                             f"{spec!r}")
        try:
            values = tuple(int(p) for p in parts[2:])
        except ValueError:
            raise ValueError(f"--cases: {names} must be integers, got {spec!r}") from None
        if min(values) < 1:
            raise ValueError(f"--cases: {names} must be at least 1, got {spec!r}")
        cases.append((parts[0], parts[1], *values))
    if not cases:
        raise ValueError("--cases: expected at least one case")
    return cases


def child(cases, calls, steps, tree):
    """Time every case in this process (numrnn imported from ``tree``); print one JSON line."""
    import numrnn

    where = os.path.realpath(numrnn.__file__)
    if not where.startswith(os.path.realpath(tree) + os.sep):
        raise SystemExit(f"ab_commits: numrnn came from {where}, not from {tree}")
    out = {}
    for cell, dtype, B, N in cases:
        rng = np.random.default_rng(0)
        net = numrnn.RNN(N, N, cell=cell, dtype=dtype, seed=0)
        x = rng.standard_normal((steps, B, N)).astype(dtype)
        d = rng.standard_normal((steps, B, N)).astype(dtype)
        for _ in range(3):  # compile (or load the cache), then settle
            net.forward(x)
            net.vjp(x, d)
        fwd, fb = [], []
        for _ in range(calls):
            time.sleep(SETTLE_S)
            net.forward(x)
            t = time.perf_counter()
            net.forward(x)
            fwd.append(time.perf_counter() - t)
            t = time.perf_counter()
            net.vjp(x, d)
            fb.append(time.perf_counter() - t)
        out[",".join(map(str, (cell, dtype, B, N)))] = dict(fwd=float(np.median(fwd)),
                                                              fb=float(np.median(fb)))
    print(json.dumps(dict(numrnn=where, times=out)))


def run_child(tree, args):
    env = dict(os.environ, PYTHONPATH=tree + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", tree, "--cases", args.cases,
           "--calls", str(args.calls), "--steps", str(args.steps)]
    res = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        said = (res.stderr or res.stdout).strip().splitlines() or ["(no output)"]
        raise RuntimeError(f"the timing process in {tree} failed: {said[-1]}")
    return json.loads(res.stdout.strip().splitlines()[-1])["times"]


@contextlib.contextmanager
def worktree(commit):
    """A temporary detached worktree of ``commit``, removed after."""
    path = tempfile.mkdtemp(prefix="numrnn-ab-")
    os.rmdir(path)
    made = subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", "--quiet", path,
                           commit], capture_output=True, text=True)
    if made.returncode != 0:
        said = made.stderr.strip().splitlines() or ["(no output)"]
        raise ValueError(f"cannot check out {commit!r}: {said[-1]}")
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", path],
                       capture_output=True)


def run_rounds(args):
    """[{"base": times, "new": times}] for each round, the two processes in alternating order."""
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(worktree(args.base))
        new = REPO if args.new is None else stack.enter_context(worktree(args.new))
        rounds = []
        for r in range(args.rounds):
            order = ("base", "new") if r % 2 == 0 else ("new", "base")
            rounds.append({v: run_child(base if v == "base" else new, args) for v in order})
            print(f"# round {r + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    return rounds


def summarise(cases, rounds):
    """Rows of (case, base ms, new ms, ratio median, ratio min, ratio max) per time kind."""
    rows = []
    for cell, dtype, B, N in cases:
        key = ",".join(map(str, (cell, dtype, B, N)))
        row = dict(cell=cell, dtype=dtype, B=B, N=N)
        for kind in ("fwd", "fb"):
            base = np.array([r["base"][key][kind] for r in rounds])
            new = np.array([r["new"][key][kind] for r in rounds])
            ratio = new / base
            row[kind] = dict(base_ms=1e3 * float(np.median(base)),
                             new_ms=1e3 * float(np.median(new)),
                             ratio=float(np.median(ratio)), ratio_min=float(ratio.min()),
                             ratio_max=float(ratio.max()))
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", nargs="?", help="the commit to compare against (e.g. HEAD~1)")
    ap.add_argument("--new", help="a commit for the new version (default: this checkout)")
    ap.add_argument("--cases", default="tanh,float32,1,32;tanh,float32,32,32",
                    help='"cell,dtype,B,N;..." (default: %(default)s)')
    ap.add_argument("--rounds", type=int, default=4, help="process pairs (default 4)")
    ap.add_argument("--calls", type=int, default=20, help="timed turns per process (20)")
    ap.add_argument("--steps", type=int, default=200, help="T (default 200)")
    ap.add_argument("--json", help="write the rounds and the summary here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        cases = parse_cases(args.cases)
        for name in ("rounds", "calls", "steps"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name}: expected at least 1, got {getattr(args, name)}")
        if args.child is None and args.base is None:
            raise ValueError("base: expected a commit to compare against")
    except ValueError as exc:
        print(f"ab_commits: {exc}", file=sys.stderr)
        return 2
    if args.child is not None:
        child(cases, args.calls, args.steps, args.child)
        return 0
    try:
        rounds = run_rounds(args)
    except (ValueError, RuntimeError) as exc:
        print(f"ab_commits: {exc}", file=sys.stderr)
        return 2
    rows = summarise(cases, rounds)
    new_name = args.new or "this checkout"
    print(f"# {args.base} (base) against {new_name} (new), T = {args.steps}, {args.rounds} rounds "
          f"of alternating processes, each the median of {args.calls} turns; load "
          f"{os.getloadavg()[0]:.1f}")
    print("| cell | dtype | B | N | fwd ms base | new | new / base (range) "
          "| f+b ms base | new | new / base (range) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        f, b = row["fwd"], row["fb"]
        print(f"| {row['cell']} | {row['dtype']} | {row['B']} | {row['N']} | "
              f"{f['base_ms']:.3f} | {f['new_ms']:.3f} | {f['ratio']:.3f} "
              f"({f['ratio_min']:.2f}-{f['ratio_max']:.2f}) | {b['base_ms']:.3f} | "
              f"{b['new_ms']:.3f} | {b['ratio']:.3f} ({b['ratio_min']:.2f}-{b['ratio_max']:.2f}) |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(base=args.base, new=new_name, rounds=rounds, summary=rows), fh,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
