"""Skinny products and frame QRs: numrnn's compiled loops against the BLAS and LAPACK.

out = a @ m.T for a (k, n) with few rows k and m (n, n), float64, one thread (the BLAS held to
one thread: numrnn's threads each call it so), as each step of a Lyapunov or tangent loop makes
them.  Both from compiled code, the BLAS as np.dot(a, m.T-contiguous, out), the way the loops
called it before.  Each figure is the best of five runs of a loop of calls (about 0.1 s each),
in microseconds per product; both results are checked against NumPy first.

Then the QR of a frame of k vectors of n numbers as the Lyapunov loops run it
(numrnn.cpu.jacobians' ``_orthonormalise``: copy in, R, Q formed, copy out), by the compiled
Householder QR and by LAPACK's dgeqrf + dorgqr, the same way (each is the other's check).

Then (``--shapes``) the products a network's steps and its products over time make, k x n
times n x n_out in float64 and float32, one thread: the BLAS's gemm (np.dot(a, m.T-contiguous,
out)) against the compiled dot products (``products.times_transpose`` up to 64 rows, else the
blocked ``products.gemm_nt``), in GFLOP/s, with whether the compiler targets AVX-512
(``products.WIDE``: four rows of m at a time, else two) and the BLAS's kernels named.

Up to 64 rows (a step's product) the compiled loops of the per-step products are timed too
(``numrnn.cpu.recurrence._matmul``: rows of M^T added in, no dot products), the form
``recurrence.product_mode`` picks where the dot products' sums are too short
(``products.times_transpose_pays``), and the packed products with m packed once
(``products.times_packed``: register tiles of outer products, the form it picks from
``products.TILE_ROWS`` rows).  Above 64 rows the figures are the BLAS, ``products.gemm_nt`` as
it runs (the packed products from ``products.PACKED_MIN_ROWS`` rows with AVX-512) and its dot
products alone (``products._blocked``).

Then (``--tn``) the weight gradients' products out = a.T @ b, a (K, M), b (K, P) (K = steps x
sequences of a block of steps, M = G*N, P = N or I), float64 and float32, one thread: the BLAS's
gemm on the transposed operand (np.dot(a.T, b, out) from compiled code) against
``products.gemm_tn`` as it runs (the packed products from ``products.PACKED_TN_MIN_COLUMNS``
columns with AVX-512) and its dot products alone (K-blocks packed transposed, then the blocked
dot products, ``products._gemm_tn``), in GFLOP/s.

    python benchmarks/bench_products.py
    python benchmarks/bench_products.py --out results/products_2core_zen3.json
    python benchmarks/bench_products.py --sizes "" --shapes 16x512x512,6400x512x2048
    python benchmarks/bench_products.py --sizes "" --shapes "" --tn 200x2048x512
    python benchmarks/bench_products.py --sizes "" --shapes "" --tn "" --rules gru,float32,32,32,32

``--peak``: the 4 x 4 dot-product block on data that stays in L1 (4 rows of a and of m, 32 KiB),
on one thread and on two at once, float32 and float64: the ceiling of every compiled product;
then the packed products' register tile the same way (``products._tile``, a TILE_ROWS x 256
panel of a and a 256 x 2-vector panel of m).

Then (``--rules``) whole calls at T = 200, forward and vjp (forward and backward), of cell,
dtype, B, N, I cases, with the products' depth rules (``products.STEP_MIN_DEPTH_BYTES``,
``GEMM_MIN_DEPTH_BYTES``) as they are and set to 0 (dot products at every depth, as before the
rules), the two alternating call by call in one process (the machine's drift between processes
is larger than the difference), medians of ``--turns`` turns, in milliseconds; both settings'
outputs and gradients checked against each other first.

Then (``--packed``) whole calls the same way, cell, dtype, B, N cases (I = N), with the packed
products of a step and of ``gemm_nt`` and without them (the forms they replace; the weight
gradients' rule is fixed when the kernels compile, so it is the same in both settings).
"""
import argparse
import json
import os
import platform
import threading
import time

import numpy as np
from numba import njit

import numrnn
from numrnn.cpu import blas, jacobians, products, recurrence


@njit
def _blas(a, m_t, out, n):
    for _ in range(n):
        np.dot(a, m_t, out)


@njit
def _compiled(a, m, out, n):
    for _ in range(n):
        products.times_transpose(a, m, out)


@njit
def _loops(a, m_t, out, n):
    for _ in range(n):
        recurrence._matmul(a, m_t, out, False)


@njit(nogil=True)
def _in_l1(a, m, out, n):
    """n times the 4 x 4 dot-product block of products._four over the whole of a (4, K) and m
    (4, K) (small enough to stay in L1): the loops' own ceiling."""
    depth, start, rows = np.int64(a.shape[1]), np.int64(0), np.int64(4)
    for _ in range(n):
        products._four(a, start, m, start, rows, start, depth, out[:, :], out.dtype.type(0),
                       False)


@njit(nogil=True)
def _tile_in_l1(pa, pb, tile, n):
    """n times the packed products' register tile (products._tile) over a panel of a and one of
    m that stay in L1: its own ceiling."""
    depth = np.int64(pa.size // products.TILE_ROWS)
    width = np.int64(pb.size // depth)
    for _ in range(n):
        products._tile(pa, np.int64(0), np.int64(1), np.int64(products.TILE_ROWS), pb,
                       np.int64(0), width, depth, tile)


@njit
def _gemm(a, m, out, n):
    for _ in range(n):
        products.gemm_nt(a, m, out, products.PACKED_MIN_ROWS)


@njit
def _dots_gemm(a, m, out, n):
    """gemm_nt's dot products (products._blocked), which it runs below PACKED_MIN_ROWS rows
    or without AVX-512."""
    kc, mc, nc = products.GEMM_BLOCKS
    for _ in range(n):
        products._blocked(a, m, out[:, :], np.int64(kc), np.int64(mc), np.int64(nc))


@njit
def _packed_step(a, pb, out, n):
    """A step's product by the packed products, m packed once (as a pass packs M)."""
    pa, tile = products.scratch(a)
    for _ in range(n):
        products.times_packed(a[:, :], pb[0], out.shape[1], out[:, :], pa, tile)


@njit
def _blas_tn(a, b, out, n):
    for _ in range(n):
        np.dot(a.T, b, out)


@njit
def _compiled_tn(a, b, out, n):
    for _ in range(n):
        products.gemm_tn(a, b, out, 0, a.shape[1], False)


@njit
def _dots_tn(a, b, out, n):
    """gemm_tn's dot products (products._gemm_tn), which it runs below PACKED_TN_MIN_COLUMNS
    columns or without AVX-512."""
    for _ in range(n):
        products._gemm_tn(a, b, out[:, :], np.int64(0), np.int64(a.shape[1]), False)


@njit
def _qr(frame, dst, log_r, log_col, qw, n):
    no_r = np.empty((0, 0))
    for _ in range(n):
        jacobians._orthonormalise(frame, dst, 1.0, log_r, log_col, False, qw, no_r)


def _best(fn, args, calls):
    fn(*args, 2)
    best = np.inf
    for _ in range(5):
        t0 = time.perf_counter()
        fn(*args, calls)
        best = min(best, time.perf_counter() - t0)
    return best / calls * 1e6


def _race(label, ref, flops, *routes):
    """Each (loop, args) route's product checked against ``ref`` (SystemExit naming ``label``
    when one is off), then timed: microseconds per product of each route."""
    tol = 1e-13 if routes[0][1][0].dtype == np.float64 else 1e-5
    calls = max(5, int(3e8 / flops))
    outs = []
    for fn, args in routes:
        out = np.empty(ref.shape, args[0].dtype)
        fn(*args, out, 1)
        err = np.abs(out - ref).max() / np.abs(ref).max()
        if not err < tol:
            raise SystemExit(f"{label}: relative error {err:.1e}")
        outs.append(out)
    return [_best(fn, args + (out,), calls) for (fn, args), out in zip(routes, outs)]


def _on_threads(loop, data, calls, flops):
    """Best of five GFLOP/s of ``loop(*data[i], calls)`` (``flops`` a call) on one thread and on
    two at once, each thread its own data: {1: ..., 2: ...}."""
    loop(*data[0], 10)
    best = {1: 0.0, 2: 0.0}
    for _ in range(5):
        for n in (1, 2):
            workers = [threading.Thread(target=loop, args=data[i] + (calls,)) for i in range(n)]
            t0 = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            best[n] = max(best[n], n * flops * calls / (time.perf_counter() - t0) / 1e9)
    return best


def _peak(rng):
    """``--peak``: GFLOP/s of the dot-product block in L1 on one thread and on two at once
    (each its own data), float32 and float64: what no product built from it can pass; then the
    packed products' register tile the same way."""
    rows = []
    for dtype, depth in ((np.float32, 1024), (np.float64, 512)):  # a and m: 32 KiB together
        data = [(rng.standard_normal((4, depth)).astype(dtype),
                 rng.standard_normal((4, depth)).astype(dtype), np.empty((4, 4), dtype))
                for _ in range(2)]
        best = _on_threads(_in_l1, data, 100000, 2 * 16 * depth)
        print(f"peak {np.dtype(dtype).name} (4 x 4 dot-product block in L1, depth {depth}): "
              f"{best[1]:.0f} GFLOP/s on one thread, {best[2]:.0f} on two", flush=True)
        rows.append({"peak": np.dtype(dtype).name, "depth": depth, "one_thread_gflops": best[1],
                     "two_threads_gflops": best[2]})
        # the packed products' tile: a TILE_ROWS x 256 panel of a, a 256 x (two vectors) one of m
        width = products.TILE_VECTORS * 64 // np.dtype(dtype).itemsize
        depth = 256
        data = [(rng.standard_normal(products.TILE_ROWS * depth).astype(dtype),
                 rng.standard_normal(width * depth).astype(dtype),
                 np.empty(products.TILE_ROWS * width, dtype)) for _ in range(2)]
        best = _on_threads(_tile_in_l1, data, 20000, 2 * products.TILE_ROWS * width * depth)
        print(f"peak {np.dtype(dtype).name} (register tile {products.TILE_ROWS} x {width} in L1, "
              f"depth {depth}): {best[1]:.0f} GFLOP/s on one thread, {best[2]:.0f} on two",
              flush=True)
        rows.append({"tile_peak": np.dtype(dtype).name, "depth": depth,
                     "one_thread_gflops": best[1], "two_threads_gflops": best[2]})
    return rows


def _alternate(label, turns, net, x, d, settings, apply):
    """Forward and vjp of ``net`` under each of ``settings`` (name -> what ``apply`` sets),
    their results checked against each other first, then timed call by call in turns (the
    order swapped every turn), ``apply`` put back to the first setting at the end: medians in
    milliseconds, name -> (forward, vjp)."""
    names = list(settings)
    results = {}
    try:
        for name in names:
            apply(settings[name])
            results[name] = net.vjp(x, d)
            net.forward(x)
        tol = 1e-10 if np.dtype(net.dtype) == np.float64 else 1e-3
        for key, ref in results[names[0]].items():
            other = results[names[1]][key]
            err = np.abs(other - ref).max() / max(np.abs(ref).max(), 1e-300)
            if not err <= tol:
                raise SystemExit(f"{label}: {key} differs by {err:.1e} between settings")
        times = {name: ([], []) for name in names}
        for turn in range(turns):
            for name in (names if turn % 2 == 0 else names[::-1]):
                apply(settings[name])
                net.forward(x)
                t0 = time.perf_counter()
                net.forward(x)
                t1 = time.perf_counter()
                net.vjp(x, d)
                times[name][0].append(t1 - t0)
                times[name][1].append(time.perf_counter() - t1)
    finally:
        apply(settings[names[0]])
    return {name: (1e3 * np.median(f), 1e3 * np.median(fb)) for name, (f, fb) in times.items()}


def _case(case, inputs):
    """A network and its data for a ``cell,dtype,B,N[,I]`` case, T = 200."""
    cell, dtype, B, N = case.split(",")[:4]
    B, N = int(B), int(N)
    I = int(case.split(",")[4]) if inputs else N
    rng = np.random.default_rng(0)
    net = numrnn.RNN(I, N, cell=cell, dtype=dtype, seed=0)
    x = rng.standard_normal((200, B, I)).astype(dtype)
    d = rng.standard_normal((200, B, N)).astype(dtype)
    return net, x, d


def _rules(case, turns):
    """One ``--rules`` case: forward and vjp with the depth rules and without."""
    net, x, d = _case(case, inputs=True)

    def apply(depths):
        products.STEP_MIN_DEPTH_BYTES, products.GEMM_MIN_DEPTH_BYTES = depths

    med = _alternate(f"--rules {case}", turns, net, x, d,
                     {"rules": (products.STEP_MIN_DEPTH_BYTES, products.GEMM_MIN_DEPTH_BYTES),
                      "every depth": (0, 0)}, apply)
    (f_new, fb_new), (f_old, fb_old) = med["rules"], med["every depth"]
    print(f"rules {case} (ms, every depth -> rules): forward {f_old:.3f} -> {f_new:.3f} "
          f"({f_new / f_old:.2f}), vjp {fb_old:.3f} -> {fb_new:.3f} "
          f"({fb_new / fb_old:.2f})", flush=True)
    return {"rules": case, "turns": turns, "forward_ms": f_new, "vjp_ms": fb_new,
            "every_depth_forward_ms": f_old, "every_depth_vjp_ms": fb_old}


def _packed_calls(case, turns):
    """One ``--packed`` case: forward and vjp with the packed products of a step
    (``recurrence.product_mode``'s mode 4) and of the products over all steps (``gemm_nt`` from
    ``products.PACKED_MIN_ROWS`` rows), and with neither (the dot products or loops they
    replace)."""
    net, x, d = _case(case, inputs=False)
    mode = recurrence.product_mode

    def without(dtype, batch, n_in, n_out, rows=None):
        chosen = mode(dtype, batch, n_in, n_out, rows)
        if chosen != 4:
            return chosen
        return 3 if products.use_dot_products(products.times_transpose_pays(dtype, n_in)) else 0

    def apply(setting):
        recurrence.product_mode, products.PACKED_MIN_ROWS = setting

    med = _alternate(f"--packed {case}", turns, net, x, d,
                     {"packed": (mode, products.PACKED_MIN_ROWS), "without": (without, 2**62)},
                     apply)
    (f_new, fb_new), (f_old, fb_old) = med["packed"], med["without"]
    print(f"packed {case} (ms, without -> packed): forward {f_old:.3f} -> {f_new:.3f} "
          f"({f_new / f_old:.2f}), vjp {fb_old:.3f} -> {fb_new:.3f} "
          f"({fb_new / fb_old:.2f})", flush=True)
    return {"packed": case, "turns": turns, "forward_ms": f_new, "vjp_ms": fb_new,
            "without_forward_ms": f_old, "without_vjp_ms": fb_old}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,128,200,512")
    ap.add_argument("--rows", default="1,2,4,5,8,10,16,32")
    ap.add_argument("--qr-rows", default="2,3,4,5,8,10,16,32,64")
    ap.add_argument("--shapes", default="16x32x32,16x128x128,16x128x512,16x512x512,"
                    "16x512x2048,2x512x2048,10x200x200,200x200x200,3200x512x512,3200x512x2048,"
                    "3200x2048x512", help="k x n x n_out products, float64 and float32 ('' none)")
    ap.add_argument("--tn", default="200x512x512,200x2048x512,2048x128x128,2048x512x512,"
                    "2048x2048x512,3200x2048x512", help="K x M x P products a.T @ b, float64 "
                    "and float32 ('' none)")
    ap.add_argument("--rules", default="", help="cell,dtype,B,N,I;... whole calls with the "
                    "depth rules and without ('' none)")
    ap.add_argument("--packed", default="", help="cell,dtype,B,N;... whole calls with the "
                    "packed products and without ('' none)")
    ap.add_argument("--turns", type=int, default=30)
    ap.add_argument("--peak", action="store_true", help="the dot-product block's speed in L1")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    sizes = [int(v) for v in args.sizes.split(",") if v]
    with blas.single_threaded():
        if args.shapes:
            print(f"# compiled for AVX-512 (four rows of m at a time): {products.WIDE}; "
                  f"{blas.summary()}", flush=True)
        for shape in filter(None, args.shapes.split(",")):
            k, n, n_out = map(int, shape.split("x"))
            line = []
            for dtype in (np.float64, np.float32):
                a = rng.standard_normal((k, n)).astype(dtype)
                m = rng.standard_normal((n_out, n)).astype(dtype)
                m_t = np.ascontiguousarray(m.T)
                ref = a.astype(np.float64) @ m.T.astype(np.float64)
                flops = 2.0 * k * n * n_out
                routes = [(_blas, (a, m_t)), (_compiled if k <= 64 else _gemm, (a, m))]
                if k <= 64:
                    routes += [(_loops, (a, m_t)),
                               (_packed_step, (a, products.pack_matrix(m)))]
                else:
                    routes.append((_dots_gemm, (a, m)))
                times = _race(f"{shape} {np.dtype(dtype).name}", ref, flops, *routes)
                row = {"shape": shape, "dtype": np.dtype(dtype).name, "blas_us": times[0],
                       "compiled_us": times[1], "wide": products.WIDE,
                       "blas_gflops": flops / times[0] / 1e3,
                       "compiled_gflops": flops / times[1] / 1e3}
                if k <= 64:
                    row.update(loops_us=times[2], loops_gflops=flops / times[2] / 1e3,
                               packed_us=times[3], packed_gflops=flops / times[3] / 1e3)
                else:
                    row.update(packed=bool(products.WIDE and k >= products.PACKED_MIN_ROWS),
                               dots_us=times[2], dots_gflops=flops / times[2] / 1e3)
                rows.append(row)
                line.append(f"{np.dtype(dtype).name} " + " / ".join(
                    f"{flops / t / 1e3:.0f}" for t in times))
            print(f"{shape} (GFLOP/s, BLAS / " + ("dots / loops / packed" if k <= 64 else
                  "gemm_nt / dots") + "): " + "  ".join(line), flush=True)
        for shape in filter(None, args.tn.split(",")):
            K, M, P = map(int, shape.split("x"))
            line = []
            for dtype in (np.float64, np.float32):
                a = rng.standard_normal((K, M)).astype(dtype)
                b = rng.standard_normal((K, P)).astype(dtype)
                ref = a.T.astype(np.float64) @ b.astype(np.float64)
                flops = 2.0 * K * M * P
                t_blas, t_ours, t_dots = _race(f"tn {shape} {np.dtype(dtype).name}", ref, flops,
                                               (_blas_tn, (a, b)), (_compiled_tn, (a, b)),
                                               (_dots_tn, (a, b)))
                rows.append({"tn": shape, "dtype": np.dtype(dtype).name, "blas_us": t_blas,
                             "compiled_us": t_ours, "wide": products.WIDE,
                             "blas_gflops": flops / t_blas / 1e3,
                             "compiled_gflops": flops / t_ours / 1e3,
                             "packed": bool(products.WIDE and M >= products.TILE_ROWS
                                            and P >= products.PACKED_TN_MIN_COLUMNS),
                             "dots_us": t_dots, "dots_gflops": flops / t_dots / 1e3,
                             "compiled_pays": products.gemm_tn_pays(dtype, K, M, P)})
                line.append(f"{np.dtype(dtype).name} {flops / t_blas / 1e3:.0f} / "
                            f"{flops / t_ours / 1e3:.0f} / {flops / t_dots / 1e3:.0f}")
            print(f"tn {shape} (GFLOP/s, BLAS / gemm_tn / dots): " + "  ".join(line),
                  flush=True)
        for n in sizes:
            m = rng.standard_normal((n, n))
            m_t = np.ascontiguousarray(m.T)
            line = []
            for k in map(int, args.rows.split(",")):
                a = rng.standard_normal((k, n))
                ref = a @ m_t
                o1, o2 = np.empty((k, n)), np.empty((k, n))
                _blas(a, m_t, o1, 1)
                _compiled(a, m, o2, 1)
                for o in (o1, o2):
                    err = np.abs(o - ref).max() / np.abs(ref).max()
                    if not err < 1e-13:
                        raise SystemExit(f"n={n} k={k}: relative error {err:.1e}")
                calls = max(20, int(1e8 / (2 * k * n * n)))
                t_blas = _best(_blas, (a, m_t, o1), calls)
                t_ours = _best(_compiled, (a, m, o2), calls)
                rows.append({"n": n, "k": k, "blas_us": t_blas, "compiled_us": t_ours,
                             "blas_over_compiled": t_blas / t_ours})
                line.append(f"k={k} {t_blas:.1f}/{t_ours:.1f}")
            print(f"n={n} (BLAS / compiled, us): " + "  ".join(line), flush=True)
        for n in sizes:
            line = []
            for k in map(int, args.qr_rows.split(",")):
                if k > n:
                    continue
                frame = rng.standard_normal((k, n))
                out = {}
                for route, cut in (("lapack", 0), ("compiled", 10**6)):
                    qw = jacobians.qr_workspace(k, n, cut)
                    dst, log_r = np.empty((k, n)), np.empty(k)
                    _qr(frame, dst, log_r, np.empty(k), qw, 1)
                    out[route] = (dst, log_r)
                    calls = max(20, int(2e7 / (4 * k * k * n)))
                    out[route + "_us"] = _best(_qr, (frame, dst, log_r, np.empty(k), qw), calls)
                q, lr = out["compiled"]
                err = max(np.abs(q - out["lapack"][0]).max(), np.abs(lr - out["lapack"][1]).max())
                if not err < 1e-12:
                    raise SystemExit(f"QR n={n} k={k}: the routes differ by {err:.1e}")
                rows.append({"qr": True, "n": n, "k": k, "lapack_us": out["lapack_us"],
                             "compiled_us": out["compiled_us"],
                             "lapack_over_compiled": out["lapack_us"] / out["compiled_us"]})
                line.append(f"k={k} {out['lapack_us']:.1f}/{out['compiled_us']:.1f}")
            print(f"QR n={n} (LAPACK / compiled, us): " + "  ".join(line), flush=True)
    if args.peak:
        rows += _peak(rng)
    for case in filter(None, (c.strip() for c in args.rules.split(";"))):
        rows.append(_rules(case, args.turns))
    for case in filter(None, (c.strip() for c in args.packed.split(";"))):
        rows.append(_packed_calls(case, args.turns))
    if args.out:
        meta = {"machine": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(), "load": os.getloadavg(), "blas": blas.summary(),
                "wide": products.WIDE}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
