"""A user-written cell against the built-in one: the GRU of the README's "Your own cell".

The README's code block is executed as a user would copy it; its ``my_gru`` and numrnn's built-in
"gru" then run forward + vjp (full BPTT) on the same weights and data, interleaved, and the
median times are compared (the issue's target: the user cell at no less than 0.7x the built-in's
speed at B = 32, N = 128).  Compile time is measured in fresh processes with an empty Numba cache
directory (the cost a user pays once per machine: the kernels of a cell are cached on disk under
its fingerprint afterwards), and again with the cache warm.

Run:  python benchmarks/bench_user_cell.py [--json out.json] [--repeats 9]
"""
import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_cell():
    """The README's user GRU (the Python block of "Your own cell", executed)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own cell", 1)[1].split("\n## ", 1)[0]
    block = section.split("```python", 1)[1].split("```", 1)[0]
    # only the definition: the block's own example runs (forward, Lyapunov, ...) are not timed
    definition = block.split("net = numrnn.RNN(", 1)[0]
    ns = {}
    exec(compile(definition, "README.md", "exec"), ns)
    return ns["my_gru"]


def make(cell, dtype, B, N, T):
    import numrnn

    net = numrnn.RNN(N, N, cell=cell, dtype=dtype, seed=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, N)).astype(dtype)
    d = rng.standard_normal((T, B, N)).astype(dtype)
    return net, x, d


def first_call(which, dtype, B, N, T):
    """Seconds of the first forward_vjp (compilation or cache load) in this process."""
    cell = readme_cell() if which == "user" else "gru"
    net, x, d = make(cell, np.dtype(dtype), B, N, T)
    t = time.perf_counter()
    net.forward_vjp(x, d)
    return time.perf_counter() - t


def compile_times(dtype, B, N, T):
    """First-call seconds of each cell in fresh processes: cold (empty cache), then warm."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for state in ("cold", "warm"):
            for which in ("builtin", "user"):
                code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
                        f"import bench_user_cell as b; "
                        f"print(b.first_call({which!r}, {dtype!r}, {B}, {N}, {T}))")
                res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                     text=True, check=True)
                out[f"{which}_{state}_s"] = float(res.stdout.strip().splitlines()[-1])
    return out


def steady(dtype, B, N, T, repeats):
    user, builtin = readme_cell(), "gru"
    cases = {name: make(cell, dtype, B, N, T) for name, cell in (("user", user),
                                                                  ("builtin", builtin))}
    for net, x, d in cases.values():
        net.forward_vjp(x, d)
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (net, x, d) in cases.items():
            t = time.perf_counter()
            net.forward_vjp(x, d)
            times[name].append(time.perf_counter() - t)
    med = {name: float(np.median(v)) for name, v in times.items()}
    net_u, x, d = cases["user"]
    net_b = cases["builtin"][0]
    net_u.load_state_dict(net_b.state_dict())
    gu, gb = net_u.vjp(x, d), net_b.vjp(x, d)
    err = max(float(np.max(np.abs(gu[k] - gb[k])) / max(np.max(np.abs(gb[k])), 1e-300))
              for k in gb)
    return {"user_ms": med["user"] * 1e3, "builtin_ms": med["builtin"] * 1e3,
            "user_speed_vs_builtin": med["builtin"] / med["user"], "max_rel_grad_diff": err}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args(argv)
    import numrnn

    rows = []
    print(f"# numrnn {numrnn.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; forward + vjp, T = {args.steps}, I = N")
    print("| dtype | B | N | README GRU ms | built-in GRU ms | user speed / built-in | "
          "first call cold: built-in, user s | warm: built-in, user s |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in ("float64", "float32"):
        for B, N in ((32, 128), (1, 128), (32, 512)):
            row = dict(dtype=dtype, B=B, N=N, T=args.steps,
                       **steady(np.dtype(dtype), B, N, args.steps, args.repeats))
            if (B, N) == (32, 128):
                row.update(compile_times(dtype, B, N, args.steps))
            rows.append(row)
            comp = (f"{row['builtin_cold_s']:.1f}, {row['user_cold_s']:.1f} | "
                    f"{row['builtin_warm_s']:.2f}, {row['user_warm_s']:.2f}"
                    if "user_cold_s" in row else "- | -")
            print(f"| {dtype} | {B} | {N} | {row['user_ms']:.2f} | {row['builtin_ms']:.2f} | "
                  f"{row['user_speed_vs_builtin']:.2f}x | {comp} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.platform(), "cores": os.cpu_count(),
                       "numrnn": numrnn.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
