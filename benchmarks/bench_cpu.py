"""numrnn against torch.nn.RNN/LSTM/GRU on the CPU, in the same process.

For every case (cell, dtype, B, N = I, T): forward, and forward+vjp against torch's forward +
backward() (gradients of the weights and the input).  The peer is the better of torch at 1 and at
2 threads.  Compile time (numrnn's first call) is reported on its own; steady-state figures are
medians of interleaved repeats (numrnn, torch@1, torch@2, numrnn, ...), with the machine's load
average recorded.  Each contender's turn starts with one untimed forward call: torch's OpenMP
workers keep spinning for a while after a 2-thread call and took a core from whatever ran next
(numrnn's forward at B = 32, N = 128, float32 relu: 6.8 ms on its own, 10.9 ms right after
torch's forward+backward, 7.6 ms after one untimed call; 2-core EPYC).  A pause instead of the
call is worse: after 50 ms idle the same forward took 9.9 ms and forward+vjp 33 ms against 18.  Each case is also given as a fraction of the machine's matrix-product ceiling
(GFLOP/s of a large square BLAS gemm in the same dtype), counting the matrix-product FLOPs of the
recurrent network: forward 2*T*B*(I+N)*G*N, forward+backward three times that.

Run:  python benchmarks/bench_cpu.py            (full grid, a few minutes)
      python benchmarks/bench_cpu.py --quick    (fewer repeats)
      python benchmarks/bench_cpu.py --json out.json
"""
import argparse
import json
import os
import platform
import time

import numpy as np
import torch

import numrnn

TORCH_CLASS = {"tanh": torch.nn.RNN, "relu": torch.nn.RNN, "lstm": torch.nn.LSTM,
               "gru": torch.nn.GRU}
GATES = {"tanh": 1, "relu": 1, "lstm": 4, "gru": 3}


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


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(cell, dtype, B, N, T, repeats):
    net, module, x, d_out = make_case(cell, dtype, B, N, T)
    nf, nfb = numrnn_fns(net, x, d_out)
    tf, tfb = torch_fns(module, x, d_out)
    # warm-up (compile for numrnn: cached kernels make this small after the first case)
    compile_s = timed(nf) + timed(nfb)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        tf()
        tfb()
    samples = {k: [] for k in ("nf", "nfb", "tf1", "tfb1", "tf2", "tfb2")}
    for _ in range(repeats):
        nf()  # untimed: the previous contender's threads settle, this one's data is in cache
        samples["nf"].append(timed(nf))
        samples["nfb"].append(timed(nfb))
        for threads in (1, 2):
            torch.set_num_threads(threads)
            tf()
            samples[f"tf{threads}"].append(timed(tf))
            samples[f"tfb{threads}"].append(timed(tfb))
    med = {k: float(np.median(v)) for k, v in samples.items()}
    flops_fwd = 2.0 * T * B * (N + N) * GATES[cell] * N
    return dict(cell=cell, dtype=np.dtype(dtype).name, B=B, N=N, T=T, compile_s=compile_s,
                numrnn_fwd_ms=1e3 * med["nf"], numrnn_fb_ms=1e3 * med["nfb"],
                torch_fwd_ms=1e3 * min(med["tf1"], med["tf2"]),
                torch_fb_ms=1e3 * min(med["tfb1"], med["tfb2"]),
                torch_threads_fwd=1 if med["tf1"] <= med["tf2"] else 2,
                torch_threads_fb=1 if med["tfb1"] <= med["tfb2"] else 2,
                gflops_fwd=flops_fwd / med["nf"] / 1e9,
                gflops_fb=3 * flops_fwd / med["nfb"] / 1e9,
                load=os.getloadavg()[0])


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
    print(f"# numrnn {numrnn.__version__} vs torch {torch.__version__} on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, T = {args.steps}, median of {repeats} interleaved runs, "
          "each turn after one untimed forward call")
    print("# matmul ceiling (1024^3 gemm): " + ", ".join(f"{k} {v:.1f} GFLOP/s"
                                                         for k, v in ceilings.items()))
    print("| cell | dtype | B | N | fwd ms (numrnn / torch) | fwd speed-up | f+b ms (numrnn / torch) "
          "| f+b speed-up | f+b % of ceiling | compile s | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for dt in args.dtypes.split(","):
        for cell in args.cells.split(","):
            for B in map(int, args.batch.split(",")):
                for N in map(int, args.hidden.split(",")):
                    r = measure(cell, np.dtype(dt).type, B, N, args.steps, repeats)
                    r["ceiling_gflops"] = ceilings[dt]
                    rows.append(r)
                    print(f"| {cell} | {dt} | {B} | {N} | {r['numrnn_fwd_ms']:.2f} / "
                          f"{r['torch_fwd_ms']:.2f} | {r['torch_fwd_ms'] / r['numrnn_fwd_ms']:.2f}x | "
                          f"{r['numrnn_fb_ms']:.2f} / {r['torch_fb_ms']:.2f} | "
                          f"{r['torch_fb_ms'] / r['numrnn_fb_ms']:.2f}x | "
                          f"{100 * r['gflops_fb'] / ceilings[dt]:.0f}% | {r['compile_s']:.2f} | "
                          f"{r['load']:.1f} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(ceilings=ceilings, rows=rows, torch=torch.__version__,
                           numrnn=numrnn.__version__, protocol="untimed forward before each turn"),
                      fh, indent=1)


if __name__ == "__main__":
    main()
