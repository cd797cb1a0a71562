"""numrnn against torch.nn.RNN/LSTM/GRU and JAX on the CPU, in the same process.

For every case (cell, dtype, B, N = I, T): forward, and forward+vjp against the peers' forward
+ backward (gradients of the weights and the input).  Two peers, each at 1 and at 2 threads:

- torch: ``torch.nn.RNN/LSTM/GRU`` with ``torch.set_num_threads(1 or 2)``;
- JAX (issue 16; when jax is installed, else the script runs with torch alone): the twins in
  ``jax_peers.py``, ``jax.jit`` of a ``lax.scan`` over time with the input projection of every
  step hoisted into one product, forward+vjp by ``jax.vjp``; x64 enabled, float32 cases in
  float32.  XLA's CPU thread pool is sized when jax is imported and cannot be changed after, so
  "JAX at 1 thread" pins every thread of the process (each task in /proc/self/task, since
  ``sched_setaffinity(0, ...)`` moves only the calling thread, and XLA's workers exist already)
  to one CPU with ``os.sched_setaffinity`` for its turn, and gives each thread its affinity back
  after; "2 threads" is the process's own affinity.  Where affinity cannot be set (not Linux),
  JAX at 1 thread is skipped.

The peer is the best of the four (torch@1, torch@2, JAX@1, JAX@2), per column.  Before timing,
each peer's output and gradients (every weight and the input) are compared with numrnn's:
max |peer - numrnn| / max |numrnn| per array below 1e-10 in float64 and 1e-3 in float32; a peer
that disagrees is printed and not timed.  Compile time is reported on its own: numrnn's first
call (Numba compilation, or loading the on-disk cache) and JAX's first calls (tracing and XLA
compilation of the forward and of the forward+vjp).  Steady-state figures are medians of
interleaved repeats (numrnn, torch@1, torch@2, JAX@1, JAX@2, numrnn, ...), with the machine's
load average recorded.  Each contender's turn starts with one untimed forward call: torch's
OpenMP workers keep spinning for a while after a 2-thread call and took a core from whatever ran
next (numrnn's forward at B = 32, N = 128, float32 relu: 6.8 ms on its own, 10.9 ms right after
torch's forward+backward, 7.6 ms after one untimed call; 2-core EPYC).  A pause instead of the
call is worse: after 50 ms idle the same forward took 9.9 ms and forward+vjp 33 ms against 18.
Each case is also given as a fraction of the machine's matrix-product ceiling (GFLOP/s of a
large square BLAS gemm in the same dtype), counting the matrix-product FLOPs of the recurrent
network: forward 2*T*B*(I+N)*G*N, forward+backward three times that.

Run:  python benchmarks/bench_cpu.py            (full grid, a few minutes)
      python benchmarks/bench_cpu.py --quick    (fewer repeats)
      python benchmarks/bench_cpu.py --json out.json
"""
import argparse
import contextlib
import functools
import json
import os
import platform
import time

import numpy as np
import torch

import numrnn
from numrnn.cpu import blas

try:  # the JAX peer (pip install -e .[bench]); without it, torch alone
    import jax

    import jax_peers
except ImportError:
    jax = jax_peers = None

TORCH_CLASS = {"tanh": torch.nn.RNN, "relu": torch.nn.RNN, "lstm": torch.nn.LSTM,
               "gru": torch.nn.GRU}
GATES = {"tanh": 1, "relu": 1, "lstm": 4, "gru": 3}
TOLERANCE = {"float64": 1e-10, "float32": 1e-3}
#: Pause before each contender's turn: longer than numrnn's pool threads spin after a call
#: (numrnn.cpu.threads.IDLE_SPIN_SECONDS), so they never share a core with a peer's turn.
SETTLE_S = 0.005


def matmul_ceiling(dtype, n=1024, repeats=5):
    """GFLOP/s of a square n x n gemm (numpy's BLAS, all threads)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    a @ b
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def make_case(cell, dtype, B, N, T, seed=0):
    rng = np.random.default_rng(seed)
    net = numrnn.RNN(N, N, cell=cell, dtype=dtype, seed=seed)
    kw = dict(nonlinearity=cell) if cell in ("tanh", "relu") else {}
    module = TORCH_CLASS[cell](N, N, dtype=torch.float64 if dtype == np.float64 else
                               torch.float32, **kw)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.from_numpy(net.state_dict()[name]))
    x = rng.standard_normal((T, B, N)).astype(dtype)
    d_out = rng.standard_normal((T, B, N)).astype(dtype)
    return net, module, x, d_out


def numrnn_fns(net, x, d_out):
    return (lambda: net.forward(x)), (lambda: net.vjp(x, d_out))


def torch_fns(module, x, d_out):
    xt = torch.from_numpy(x)
    dt = torch.from_numpy(d_out)

    def fwd():
        with torch.no_grad():
            module(xt)

    def fwd_bwd():
        module.zero_grad(set_to_none=True)
        xg = xt.detach().requires_grad_(True)
        out, _ = module(xg)
        out.backward(dt)

    return fwd, fwd_bwd


def torch_result(module, x, d_out):
    """(output, {name: gradient}) of torch's forward + backward, as NumPy, for the check."""
    module.zero_grad(set_to_none=True)
    xg = torch.from_numpy(x).requires_grad_(True)
    out, _ = module(xg)
    out.backward(torch.from_numpy(d_out))
    grads = {name: p.grad.numpy() for name, p in module.named_parameters()}
    grads["input"] = xg.grad.numpy()
    return out.detach().numpy(), grads


def jax_fns(net, x, d_out):
    """(forward, forward+vjp, result) of the JAX twin; each call blocks until JAX is done."""
    cell, alpha = jax_peers.cell_options(net)
    params = jax_peers.parameters(net)
    xj, dj = jax.numpy.asarray(x), jax.numpy.asarray(d_out)
    forward = jax_peers.make_forward(cell, alpha)
    forward_vjp = jax_peers.make_forward_vjp(cell, alpha)

    def fwd():
        jax.block_until_ready(forward(params, xj))

    def fwd_bwd():
        jax.block_until_ready(forward_vjp(params, xj, dj))

    def result():
        out, d_params, d_x = forward_vjp(params, xj, dj)
        grads = {name: np.asarray(g) for name, g in d_params.items()}
        grads["input"] = np.asarray(d_x)
        return np.asarray(out), grads

    return fwd, fwd_bwd, result


def worst_error(reference, result):
    """(max relative error, array name) of a peer's (output, grads) against numrnn's."""
    (out_ref, grads_ref), (out, grads) = reference, result
    pairs = [("output", out, out_ref)] + [(k, grads[k], grads_ref[k]) for k in grads]
    errors = []
    for name, a, b in pairs:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        errors.append((float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)), name))
    return max(errors)


def _threads():
    return [int(t) for t in os.listdir("/proc/self/task")]


def can_pin():
    return hasattr(os, "sched_setaffinity") and os.path.isdir("/proc/self/task")


class one_cpu:
    """Every thread of this process on one CPU inside the block, each given its own affinity
    back after (threads started inside get the calling thread's).  ``os.sched_setaffinity(0)``
    alone would move only the calling thread: XLA's workers (and torch's, numrnn's) are
    threads of their own."""

    def __enter__(self):
        self.default = os.sched_getaffinity(0)
        cpu = {min(self.default)}
        self.saved = {}
        for tid in _threads():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                self.saved[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, cpu)
        return self

    def __exit__(self, *exc):
        for tid in _threads():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, self.saved.get(tid, self.default))
        return False


@contextlib.contextmanager
def torch_threads(n):
    """torch at n threads for the turn (the setting stays, as before the JAX peer)."""
    torch.set_num_threads(n)
    yield


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(cell, dtype, B, N, T, repeats):
    net, module, x, d_out = make_case(cell, dtype, B, N, T)
    tol = TOLERANCE[np.dtype(dtype).name]
    nf, nfb = numrnn_fns(net, x, d_out)
    # warm-up (compile for numrnn: cached kernels make this small after the first case)
    compile_s = timed(nf) + timed(nfb)
    reference = net.forward(x)[0], net.vjp(x, d_out)
    # the contenders' turns: name -> (forward, forward+vjp, context of the turn)
    turns = {}
    errors = {}
    tf, tfb = torch_fns(module, x, d_out)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        tf()
        tfb()
    errors["torch"] = worst_error(reference, torch_result(module, x, d_out))
    if errors["torch"][0] <= tol:
        for threads in (1, 2):
            turns[f"torch@{threads}"] = (tf, tfb, functools.partial(torch_threads, threads))
    jax_compile_s = None
    if jax_peers is not None:
        jf, jfb, jresult = jax_fns(net, x, d_out)
        jax_compile_s = timed(jf) + timed(jfb)  # tracing and XLA compilation of both
        errors["jax"] = worst_error(reference, jresult())
        if errors["jax"][0] <= tol:
            if can_pin():
                turns["jax@1"] = (jf, jfb, one_cpu)
            turns["jax@2"] = (jf, jfb, contextlib.nullcontext)
    for peer, (err, name) in errors.items():
        if err > tol:
            print(f"# {peer} refused for {cell} {np.dtype(dtype).name} B={B} N={N}: its {name} "
                  f"differs from numrnn's by {err:.2e} (relative; tolerance {tol:g}); not timed",
                  flush=True)
    samples = {k: [] for k in ("nf", "nfb")}
    for name in turns:
        samples[f"{name} f"], samples[f"{name} fb"], samples[f"{name} cpu"] = [], [], []
    for _ in range(repeats):
        time.sleep(SETTLE_S)
        nf()  # untimed: the previous contender's threads settle, this one's data is in cache
        samples["nf"].append(timed(nf))
        samples["nfb"].append(timed(nfb))
        for name, (fwd, fwd_bwd, context) in turns.items():
            time.sleep(SETTLE_S)  # numrnn's pool threads spin 1 ms after a call: let them sleep
            with context():
                fwd()
                samples[f"{name} f"].append(timed(fwd))
                cpu = time.process_time()
                samples[f"{name} fb"].append(timed(fwd_bwd))
                samples[f"{name} cpu"].append((time.process_time() - cpu)
                                              / samples[f"{name} fb"][-1])
    med = {k: float(np.median(v)) for k, v in samples.items()}
    flops_fwd = 2.0 * T * B * (N + N) * GATES[cell] * N
    row = dict(cell=cell, dtype=np.dtype(dtype).name, B=B, N=N, T=T, compile_s=compile_s,
               numrnn_fwd_ms=1e3 * med["nf"], numrnn_fb_ms=1e3 * med["nfb"],
               gflops_fwd=flops_fwd / med["nf"] / 1e9,
               gflops_fb=3 * flops_fwd / med["nfb"] / 1e9,
               jax_compile_s=jax_compile_s,
               max_rel_error={peer: err for peer, (err, _) in errors.items()},
               load=os.getloadavg()[0])
    for peer in ("torch", "jax"):
        for col, key in (("fwd", "f"), ("fb", "fb")):
            times = {int(n.split("@")[1]): med[f"{n} {key}"] for n in turns
                     if n.startswith(peer + "@")}
            best = min(times, key=times.get) if times else None
            row[f"{peer}_{col}_ms"] = 1e3 * times[best] if times else None
            row[f"{peer}_threads_{col}"] = best
            row[f"{peer}_{col}_ms_by_threads"] = {n: 1e3 * t for n, t in times.items()}
        row[f"{peer}_cpu_per_wall_fb"] = {int(n.split("@")[1]): med[f"{n} cpu"] for n in turns
                                          if n.startswith(peer + "@")}
    for col in ("fwd", "fb"):
        timed_peers = [p for p in ("torch", "jax") if row[f"{p}_{col}_ms"] is not None]
        best = min(timed_peers, key=lambda p: row[f"{p}_{col}_ms"]) if timed_peers else None
        row[f"peer_{col}"] = None if best is None else f"{best}@{row[f'{best}_threads_{col}']}"
        row[f"peer_{col}_ms"] = None if best is None else row[f"{best}_{col}_ms"]
        row[f"ratio_{col}"] = (None if best is None
                               else row[f"peer_{col}_ms"] / row[f"numrnn_{col}_ms"])
    return row


def _ms(v):
    return "-" if v is None else f"{v:.2f}"


def _ratio(v):
    return "-" if v is None else f"{v:.2f}x"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    ap.add_argument("--cells", default="tanh,relu,lstm,gru")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--hidden", default="32,128,512")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    repeats = 3 if args.quick else 7
    ceilings = {dt: matmul_ceiling(dt) for dt in args.dtypes.split(",")}
    jax_version = None if jax_peers is None else jax_peers.version
    peers = f"torch {torch.__version__}" + (", jax not installed" if jax_version is None
                                            else f" and jax {jax_version}")
    jax_note = ("" if jax_version is None else
                "JAX@1 = every thread pinned to one CPU (sched_setaffinity)" if can_pin() else
                "no affinity here: JAX at 2 threads only")
    print(f"# numrnn {numrnn.__version__} vs {peers} on "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"T = {args.steps}, median of {repeats} interleaved runs, each turn after one untimed "
          f"forward call; peer = best of torch and JAX at 1 and 2 threads{'; ' if jax_note else ''}"
          f"{jax_note}")
    print("# matmul ceiling (1024^3 gemm): " + ", ".join(f"{k} {v:.1f} GFLOP/s"
                                                         for k, v in ceilings.items()))
    blas_note = blas.vector_width_note()
    print(f"# {blas.summary()}; torch's kernels: {torch.backends.cpu.get_cpu_capability()}")
    if blas_note:
        print(f"# note: {blas_note}")
    print("# ratio = peer time / numrnn time (> 1: numrnn is faster)")
    print("| cell | dtype | B | N | fwd ms numrnn | torch | JAX | peer | fwd ratio "
          "| f+b ms numrnn | torch | JAX | peer | f+b ratio | f+b % of ceiling "
          "| compile s numrnn / JAX | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for dt in args.dtypes.split(","):
        for cell in args.cells.split(","):
            for B in map(int, args.batch.split(",")):
                for N in map(int, args.hidden.split(",")):
                    r = measure(cell, np.dtype(dt).type, B, N, args.steps, repeats)
                    r["ceiling_gflops"] = ceilings[dt]
                    rows.append(r)
                    jc = "-" if r["jax_compile_s"] is None else f"{r['jax_compile_s']:.2f}"
                    print(f"| {cell} | {dt} | {B} | {N} | {_ms(r['numrnn_fwd_ms'])} | "
                          f"{_ms(r['torch_fwd_ms'])} | {_ms(r['jax_fwd_ms'])} | "
                          f"{r['peer_fwd'] or '-'} | {_ratio(r['ratio_fwd'])} | "
                          f"{_ms(r['numrnn_fb_ms'])} | {_ms(r['torch_fb_ms'])} | "
                          f"{_ms(r['jax_fb_ms'])} | {r['peer_fb'] or '-'} | "
                          f"{_ratio(r['ratio_fb'])} | "
                          f"{100 * r['gflops_fb'] / ceilings[dt]:.0f}% | "
                          f"{r['compile_s']:.2f} / {jc} | {r['load']:.1f} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(ceilings=ceilings, rows=rows, torch=torch.__version__,
                           jax=jax_version, numrnn=numrnn.__version__,
                           blas=blas.summary(), blas_note=blas_note,
                           torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
                           protocol="untimed forward before each turn; JAX@1: all threads "
                                    "pinned to one CPU by sched_setaffinity"),
                      fh, indent=1)


if __name__ == "__main__":
    main()
