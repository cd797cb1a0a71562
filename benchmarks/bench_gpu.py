"""numrnn on the GPU: parity with the CPU engine at real sizes, then timings against cuDNN.

One prepared script for one device call (it must finish well inside the call's limit):

1. Parity: ``RNN.forward_vjp`` on device="cuda" against device="cpu" for every cell, both dtypes,
   every path (block, persistent with W_hh on chip or in global memory, stepwise, the warp-sum
   fallback without shuffles), multi-layer bidirectional with truncation; plus determinism (two
   GPU runs, same bits).
2. Timing at T = 1000, input size = hidden size = N, B in {1, 8, 32, 256}, N in {32, 128, 512,
   1024}, float32 and float64: numrnn (device arrays in and out, parameters uploaded per call as
   the API does) against ``torch.nn.RNN/LSTM/GRU`` on cuDNN; forward and forward+backward (torch:
   ``output.sum().backward()`` with the input requiring grad, numrnn: ``forward_vjp``), CUDA events
   after a warm-up call (whose time, compile included, is printed as "first"), median of a few
   repeats.  A time guard skips what would overrun and says so.

Run (on a machine with a GPU and torch)::

    PYTHONUNBUFFERED=1 python benchmarks/bench_gpu.py [--budget SECONDS] [--out DIR]

Prints the table of ratios (cuDNN time / numrnn time: > 1 means numrnn is faster) and writes it,
with the parity log, to DIR (default $OUT or .).
"""
import argparse
import os
import sys
import time
import traceback

import numpy as np

T0 = time.time()


def log(*a):
    print(*a, flush=True)
    if LOGF is not None:
        print(*a, file=LOGF, flush=True)


LOGF = None
TINY = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


PROGRESS = [time.time(), "start"]


def progress(what):
    PROGRESS[0] = time.time()
    PROGRESS[1] = what


def watchdog(limit):
    """A hung kernel cannot be interrupted: say what hung and end the process."""
    import threading

    def run():
        while True:
            time.sleep(5)
            if time.time() - PROGRESS[0] > limit:
                log(f"WATCHDOG: no progress for {limit:.0f}s in {PROGRESS[1]}; exiting")
                os._exit(3)
    threading.Thread(target=run, daemon=True).start()


def rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b), initial=0.0) / max(np.max(np.abs(b), initial=0.0), 1e-300))


def parity(numrnn, gpu, launch):
    rng = np.random.default_rng(0)
    cases = []
    for dt in (np.float64, np.float32):
        for cell in ("tanh", "relu", "linear", "rate", "lstm", "gru"):
            for N, B in ((32, 4), (256, 8)):
                cases.append(dict(cell=cell, dtype=dt, N=N, B=B, T=64, kw={}))
    cases += [
        dict(cell="lstm", dtype=np.float64, N=64, B=3, T=40,
             kw=dict(num_layers=2, bidirectional=True), truncate=7),
        dict(cell="gru", dtype=np.float32, N=48, B=5, T=30, kw=dict(batch_first=True)),
        dict(cell="rate", dtype=np.float64, N=40, B=2, T=30, kw=dict(alpha=0.3)),
        dict(cell="lstm", dtype=np.float64, N=200, B=6, T=30, kw={}, force=dict(
            FORCE_PATH="persistent", FORCE_WEIGHTS_ON_CHIP=False)),
        dict(cell="gru", dtype=np.float64, N=96, B=5, T=12, kw={}, force=dict(
            FORCE_PATH="stepwise")),
        dict(cell="tanh", dtype=np.float64, N=256, B=9, T=30, kw={}, force=dict(
            WARP_SHUFFLE=False)),
        dict(cell="lstm", dtype=np.float32, N=1024, B=2, T=20, kw={}),
        dict(cell="gru", dtype=np.float32, N=512, B=40, T=20, kw={}),
    ]
    if TINY:  # a smoke run of this script under the CUDA simulator
        cases = cases[::7] + cases[-8:]
        for c in cases:
            c["N"], c["B"], c["T"] = min(c["N"], 6), min(c["B"], 3), min(c["T"], 4)
    worst = {np.dtype(np.float32): 0.0, np.dtype(np.float64): 0.0}
    fails = 0
    for c in cases:
        progress(f"parity {c}")
        saved = {k: getattr(launch, k) for k in c.get("force", {})}
        try:
            for k, v in c.get("force", {}).items():
                setattr(launch, k, v)
            net = numrnn.RNN(c["N"], c["N"], cell=c["cell"], dtype=c["dtype"], seed=1, **c["kw"])
            T, B = c["T"], c["B"]
            shape = (B, T, c["N"]) if net.batch_first else (T, B, c["N"])
            x = rng.standard_normal(shape).astype(c["dtype"])
            oshape = shape[:2] + (net.num_directions * c["N"],)
            d = rng.standard_normal(oshape).astype(c["dtype"])
            o1, h1, g1 = net.forward_vjp(x, d, truncate=c.get("truncate"))
            net.to("cuda")
            o2, h2, g2 = net.forward_vjp(x, d, truncate=c.get("truncate"))
            errs = {"output": rel(o2, o1)}
            errs.update({k: rel(g2[k], g1[k]) for k in g1})
            e = max(errs.values())
            dt = np.dtype(c["dtype"])
            tol = 1e-10 if dt == np.float64 else 2e-3
            ok = e <= tol and all(np.isfinite(v) for v in errs.values())
            fails += not ok
            worst[dt] = max(worst[dt], e)
            p = gpu.info()
            log(f"parity {c['cell']:6s} {dt.name} N={c['N']:4d} B={B:3d} T={T} {c['kw']} "
                f"{c.get('force', '')}: max rel err {e:.2e} ({max(errs, key=errs.get)}) "
                f"{'ok' if ok else 'FAIL'}  fwd={p['forward']['path']}"
                f"/{'onchip' if p['forward']['weights_on_chip'] else 'global'}"
                f" grid={p['forward']['grid']} bwd={p['backward']['path']}"
                f"/{'onchip' if p['backward']['weights_on_chip'] else 'global'}"
                f" grid={p['backward']['grid']}")
        except Exception:
            fails += 1
            log(f"parity {c['cell']} {c['dtype'].__name__} N={c['N']} ERROR\n"
                + traceback.format_exc(limit=6))
        finally:
            for k, v in saved.items():
                setattr(launch, k, v)
    # determinism: the same call twice, the same bits
    try:
        net = numrnn.RNN(512, 512, cell="lstm", dtype=np.float32, seed=3, num_layers=2,
                         device="cuda")
        x = rng.standard_normal((50, 16, 512)).astype(np.float32)
        d = rng.standard_normal((50, 16, 512)).astype(np.float32)
        if TINY:
            net = numrnn.RNN(512, 4, cell="lstm", dtype=np.float32, seed=3, device="cuda")
            x, d = x[:3, :2], d[:3, :2, :4]
        r1 = net.forward_vjp(x, d)[2]
        r2 = net.forward_vjp(x, d)[2]
        same = all(np.array_equal(r1[k], r2[k]) for k in r1)
        fails += not same
        log(f"determinism (2-layer LSTM f32 N=512 B=16 T=50, two runs): "
            f"{'bitwise identical' if same else 'DIFFERENT'}")
    except Exception:
        fails += 1
        log("determinism ERROR\n" + traceback.format_exc(limit=6))
    log(f"parity: worst rel err f64 {worst[np.dtype(np.float64)]:.2e}, f32 "
        f"{worst[np.dtype(np.float32)]:.2e}; {fails} failure(s)")
    return fails


def timings(numrnn, gpu, budget, quick):
    import torch
    from numba import cuda

    rows = []
    Ns = (32, 128, 512, 1024)
    Bs = (1, 8, 32, 256)
    cellmap = {"tanh": "RNN", "lstm": "LSTM", "gru": "GRU"}
    order = [(dt, B, N) for B in Bs for dt in (np.float32, np.float64) for N in Ns]
    skipped = []
    T = 1000
    for dt, B, N in order:
        for cell in ("tanh", "lstm", "gru"):
            if time.time() - T0 > budget:
                skipped.append((np.dtype(dt).name, B, N, cell))
                continue
            progress(f"timing {cell} {np.dtype(dt).name} B={B} N={N}")
            try:
                rows.append(time_one(numrnn, gpu, torch, cuda, cell, cellmap[cell], dt, B, N, T,
                                     quick))
                r = rows[-1]
                log(f"{r['cell']:4s} {r['dtype']} B={B:3d} N={N:4d} | numrnn fwd {r['n_f']:8.2f} "
                    f"f+b {r['n_fb']:8.2f} (first {r['first']:6.0f}) | cuDNN fwd {r['t_f']:8.2f} "
                    f"f+b {r['t_fb']:8.2f} | ratio fwd {r['t_f'] / r['n_f']:5.2f} f+b "
                    f"{r['t_fb'] / r['n_fb']:5.2f} | {r['path']}  [{time.time() - T0:.0f}s]")
            except Exception:
                log(f"timing {cell} {np.dtype(dt).name} B={B} N={N} ERROR\n"
                    + traceback.format_exc(limit=5))
    return rows, skipped


def _median_ms(fn, reps, cuda):
    times = []
    for _ in range(reps):
        s, e = cuda.event(), cuda.event()
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(cuda.event_elapsed_time(s, e))
    return float(np.median(times))


def time_one(numrnn, gpu, torch, cuda, cell, tname, dt, B, N, T, quick):
    rng = np.random.default_rng(B * 7919 + N)
    tdt = torch.float32 if dt == np.float32 else torch.float64
    mod = getattr(torch.nn, tname)(N, N, dtype=tdt).cuda()
    net = numrnn.RNN.from_torch(mod.cpu())
    mod = mod.cuda()
    net.to("cuda")
    x_h = rng.standard_normal((T, B, N)).astype(dt)
    x = cuda.to_device(x_h)
    d = cuda.to_device(np.ones((T, B, N), dt))
    heavy = B * N * N * (4 if cell == "lstm" else 3 if cell == "gru" else 1) >= 256 * 512 * 512
    reps = 2 if (heavy or quick) else 3
    t0 = time.time()
    net.forward_vjp(x, d)
    cuda.synchronize()
    first = (time.time() - t0) * 1e3
    n_f = _median_ms(lambda: net.forward(x), reps, cuda)
    n_fb = _median_ms(lambda: net.forward_vjp(x, d), reps, cuda)
    info = gpu.info()
    path = (f"{info['forward']['path']}/{'chip' if info['forward']['weights_on_chip'] else 'glob'}"
            f"x{info['forward']['grid']} "
            f"{info['backward']['path']}/{'chip' if info['backward']['weights_on_chip'] else 'glob'}"
            f"x{info['backward']['grid']}")
    xt = torch.from_numpy(x_h).cuda()
    xg = xt.clone().requires_grad_(True)

    def tf():
        with torch.no_grad():
            mod(xt)

    def tfb():
        out, _ = mod(xg)
        out.sum().backward()

    tf()
    tfb()
    torch.cuda.synchronize()

    def tmed(fn):
        ts = []
        for _ in range(reps):
            s = torch.cuda.Event(enable_timing=True)
            e = torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            ts.append(s.elapsed_time(e))
        return float(np.median(ts))

    t_f = tmed(tf)
    t_fb = tmed(tfb)
    return dict(cell=tname, dtype=np.dtype(dt).name, B=B, N=N, n_f=n_f, n_fb=n_fb, t_f=t_f,
                t_fb=t_fb, first=first, path=path)


def main():
    global LOGF
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=400.0,
                    help="seconds after which no new timing starts")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--skip-parity", action="store_true")
    ap.add_argument("--watchdog", type=float, default=120.0,
                    help="seconds without progress after which the process ends")
    ap.add_argument("--quick", action="store_true", help="2 repeats everywhere")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    LOGF = open(os.path.join(args.out, "bench_gpu.log"), "w")
    watchdog(args.watchdog)
    import numrnn
    from numrnn import gpu
    from numrnn.gpu import launch

    log(f"gpu: {gpu.info()}")
    try:
        import torch
        log(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
            f"{torch.cuda.get_device_name()}")
    except Exception as exc:
        log(f"torch unavailable: {exc}")
    fails = 0 if args.skip_parity else parity(numrnn, gpu, launch)
    log(f"[{time.time() - T0:.0f}s] parity done")
    rows, skipped = timings(numrnn, gpu, args.budget, args.quick)
    lines = ["| cell | dtype | B | N | numrnn fwd ms | cuDNN fwd ms | fwd ratio | numrnn f+b ms | "
             "cuDNN f+b ms | f+b ratio | numrnn first call ms | path (fwd, bwd) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['dtype']} | {r['B']} | {r['N']} | {r['n_f']:.2f} | "
                     f"{r['t_f']:.2f} | {r['t_f'] / r['n_f']:.2f} | {r['n_fb']:.2f} | "
                     f"{r['t_fb']:.2f} | {r['t_fb'] / r['n_fb']:.2f} | {r['first']:.0f} | "
                     f"{r['path']} |")
    table = "\n".join(lines)
    if skipped:
        table += (f"\n\nSkipped by the time guard ({args.budget:.0f} s): "
                  + ", ".join(f"{c} {d} B={b} N={n}" for d, b, n, c in skipped))
    with open(os.path.join(args.out, "bench_gpu.md"), "w") as f:
        f.write(table + "\n")
    log("\nT = 1000, I = N; ratio = cuDNN time / numrnn time (> 1: numrnn faster)")
    log(table)
    log(f"parity failures: {fails}; total {time.time() - T0:.0f}s")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
