"""Ensembles of networks in one call (issue 14, item 2): numrnn.Ensemble against a loop over the
members and against JAX's vmap over parameters.

    pip install -e .[bench]                       # jax, for the peer
    python benchmarks/bench_ensemble.py           # about four minutes on two cores
    python benchmarks/bench_ensemble.py --out benchmarks/results/ensemble_2core_epyc.json

What is timed, for M = 64 tanh networks (8 gains from 0.3 to 1.0 x 8 seeds, W_hh ~ N(0, g^2/N):
below the edge of chaos, where two correct implementations agree to rounding after 2000 steps;
a chaotic network amplifies their ulp differences exponentially, and the cost does not depend on
the gain), PyTorch's h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), B = 1 sequence of
T = 2000 steps, I = 1,
float64, N = 32 and 128:

- forward+vjp of L = sum(output * d_output) (one d_output per member): ``Ensemble.forward_vjp``,
  a Python loop of ``member.forward_vjp``, and ``jax.jit(jax.vmap(jax.value_and_grad(loss)))``
  over the stacked parameters with the input shared (``in_axes=(0, None, 0)``), ``lax.scan``
  over time.  numrnn computes more than JAX here (the input and h0 gradients and the per-step
  gradient norm too).  JAX's gradients are checked against numrnn's before timing (float64,
  ``jax_enable_x64``; relative error below 1e-10); numrnn's members are checked bitwise against
  the loop's.
- Lyapunov spectra (k = 10, autonomous, 2000 steps): ``Ensemble.lyapunov_spectrum`` against a
  loop of ``numrnn.lyapunov_spectrum``.

Every figure is the median of ``--repeats`` rounds after one untimed call (compilation, the
on-disk cache, JAX's tracing); the first call is reported apart.  The contenders are
interleaved within each round, so a change of load reaches all of them alike; the load average
is recorded before and after (on this shared machine, a load above the core count is noise).
"""
import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

import numrnn
from numrnn.cpu import threads


def load():
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def jax_peer(params, x, d_out):
    """(compiled value_and_grad over the stacked params, (jax arrays)) or None without JAX."""
    try:
        import jax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    def loss(p, x, d):
        def step(h, xt):
            h = jnp.tanh(xt @ p["weight_ih_l0"].T + p["bias_ih_l0"] + h @ p["weight_hh_l0"].T
                         + p["bias_hh_l0"])
            return h, h

        h0 = jnp.zeros((x.shape[1], p["weight_hh_l0"].shape[0]), x.dtype)
        _, out = jax.lax.scan(step, h0, x)
        return jnp.sum(out * d)

    fn = jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(0, None, 0)))
    args = ({k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(x), jnp.asarray(d_out))

    def run():
        value, grads = fn(*args)
        jax.block_until_ready(grads)
        return value, grads

    return run, jax.__version__


def rel_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def first_and_rest(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def case(N, M, T, repeats, lyap_k, lyap_steps):
    gains = np.round(np.linspace(0.3, 1.0, 8), 2)
    ens = numrnn.Ensemble.random(1, N, gains=list(gains), seeds=list(range(M // 8)))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, 1, 1))
    d_out = rng.standard_normal((M, T, 1, N))

    def loop():
        return [net.forward_vjp(x, d_out[m]) for m, net in enumerate(ens)]

    def together():
        return ens.forward_vjp(x, d_out)

    def lyap_loop():
        return [numrnn.lyapunov_spectrum(net, n_steps=lyap_steps, k=lyap_k, seed=0)
                for net in ens]

    def lyap_together():
        return ens.lyapunov_spectrum(n_steps=lyap_steps, k=lyap_k, seed=0)

    contenders = {"loop": loop, "ensemble": together,
                  "lyapunov loop": lyap_loop, "lyapunov ensemble": lyap_together}
    first = {}
    first["loop"], solo = first_and_rest(loop)
    first["ensemble"], (out, h_n, grads) = first_and_rest(together)
    for m in range(M):  # the members are the networks run alone, bit for bit
        assert np.array_equal(out[m], solo[m][0])
        for k, g in solo[m][2].items():
            assert np.array_equal(grads[k][m], g), (m, k)
    first["lyapunov loop"], lyap_solo = first_and_rest(lyap_loop)
    first["lyapunov ensemble"], lyap = first_and_rest(lyap_together)
    for r, s in zip(lyap, lyap_solo):
        assert np.array_equal(r.exponents, s.exponents)
    peer = jax_peer(ens.stacked_parameters(), x, d_out)
    jax_version = None
    if peer is not None:
        run, jax_version = peer
        first["jax vmap"], (value, jgrads) = first_and_rest(run)
        value = np.asarray(value)
        assert rel_error(value, np.einsum("mtbn,mtbn->m", out, d_out)) < 1e-10
        for k, g in jgrads.items():
            err = rel_error(g, grads[k])
            assert err < 1e-10, (k, err)
        contenders["jax vmap"] = run
    times = {k: [] for k in contenders}
    load_before = load()
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    load_after = load()
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {"N": N, "M": M, "T": T, "B": 1, "I": 1, "lyapunov_k": lyap_k,
           "lyapunov_steps": lyap_steps, "median_s": med, "first_call_s": first,
           "all_s": times, "load_before": load_before, "load_after": load_after,
           "members_in_parallel": ens._in_parallel(T, 1),
           "ratio_loop_over_ensemble": med["loop"] / med["ensemble"],
           "ratio_lyapunov_loop_over_ensemble": med["lyapunov loop"] / med["lyapunov ensemble"]}
    if "jax vmap" in med:
        row["ratio_jax_over_ensemble"] = med["jax vmap"] / med["ensemble"]
    return row, jax_version


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows, jax_version = [], None
    for N in args.sizes:
        row, jax_version = case(N, args.members, args.steps, args.repeats, 10, args.steps)
        rows.append(row)
        med = row["median_s"]
        print(f"N={N:4d} M={row['M']} T={row['T']} B=1  "
              + "  ".join(f"{k} {v * 1e3:8.1f} ms" for k, v in med.items())
              + f"  | loop/ens {row['ratio_loop_over_ensemble']:.2f}"
              + (f"  jax/ens {row['ratio_jax_over_ensemble']:.2f}"
                 if "ratio_jax_over_ensemble" in row else "")
              + f"  lyap loop/ens {row['ratio_lyapunov_loop_over_ensemble']:.2f}"
              + f"  (load {row['load_before']:.2f} -> {row['load_after']:.2f})", flush=True)
        print("   first calls: " + "  ".join(f"{k} {v:.2f} s"
                                             for k, v in row["first_call_s"].items()))
    meta = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": threads.num_threads(), "numrnn": numrnn.__version__,
            "numpy": np.__version__, "jax": jax_version, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
