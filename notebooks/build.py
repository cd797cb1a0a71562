"""Write the notebooks of this folder from the cell lists below, and optionally execute them.

    python notebooks/build.py            # write the .ipynb files (no outputs)
    python notebooks/build.py --execute  # write and execute them in place (outputs and figures)

The notebooks are the source readers open; this script keeps them reproducible and reviewable
as plain Python.  CI executes every notebook (tests/test_notebooks.py).  Needs the ``notebooks``
extra: ``pip install 'numrnn[notebooks]'``.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

SETUP = """\
import numpy as np
import matplotlib
import matplotlib.pyplot as plt
import numrnn
%matplotlib inline
plt.rcParams["figure.dpi"] = 80
print("numrnn", numrnn.__version__)"""

QUICKSTART = [
    ("md", """\
# numrnn quick start

numrnn runs recurrent networks (tanh, relu, linear, rate, LSTM, GRU) in compiled Numba kernels, with
PyTorch's parameter layout, an exact vector-Jacobian product (backpropagation through time) and the
tools to study the network as a dynamical system.  This notebook shows the engine: forward pass,
gradients, a finite-difference check, parity with PyTorch, and a short training run."""),
    ("code", SETUP),
    ("md", """\
## Forward pass
Inputs are time-major `(T, B, I)` like `torch.nn.RNN` (or `batch_first=True`); the result is the
last layer's states for every step and the final state of every layer."""),
    ("code", """\
net = numrnn.RNN(input_size=3, hidden_size=32, cell="lstm", num_layers=2, seed=0)
x = np.random.default_rng(1).standard_normal((100, 4, 3))   # T=100 steps, B=4 sequences
output, (h_n, c_n) = net.forward(x)
print(net)
print("output", output.shape, " h_n", h_n.shape, " c_n", c_n.shape)
print({name: p.shape for name, p in net.state_dict().items()})"""),
    ("md", """\
## Gradients: the vector-Jacobian product
`net.vjp(x, d_output)` returns the gradient of `sum(output * d_output)` with respect to every
parameter, the input and the initial state.  Here the loss is the last output only, so
`state_grad_norm`, the norm of dL/dh_t for every step, shows how far back the gradient reaches."""),
    ("code", """\
d_out = np.zeros_like(output)
d_out[-1] = 1.0
grads = net.vjp(x, d_out)
print(sorted(k for k in grads if k.startswith("weight")))
fig, ax = plt.subplots(figsize=(6, 3))
for cell in ["tanh", "lstm", "gru"]:
    g = numrnn.RNN(3, 32, cell=cell, seed=0).vjp(x, d_out)
    ax.semilogy(g["state_grad_norm"][:, 0], label=cell)
ax.set_xlabel("time step t"); ax.set_ylabel("|dL/dh_t|"); ax.legend(); ax.set_title("gradient reaching back from t = T-1")
plt.show()"""),
    ("md", """\
## Checking a gradient against finite differences
`numrnn.gradcheck(f, inputs)` compares an analytic gradient with central differences in float64
and reports the max and mean relative error per input."""),
    ("code", """\
small = numrnn.RNN(2, 4, cell="gru", seed=3)
xs = np.random.default_rng(4).standard_normal((6, 2, 2))
w = np.random.default_rng(5).standard_normal((6, 2, 4))

def loss_and_grad(params):
    small.load_state_dict(params)
    out, _ = small.forward(xs)
    g = small.vjp(xs, w)
    return float(np.sum(out * w)), {k: g[k] for k in params}

print(numrnn.gradcheck(loss_and_grad, small.state_dict()))"""),
    ("md", """\
## Parity with PyTorch
When PyTorch is installed, `net.to_torch()` and `numrnn.RNN.from_torch(module)` copy the weights;
outputs and gradients agree to rounding in float64."""),
    ("code", """\
try:
    import torch
except ImportError:
    torch = None
    print("PyTorch is not installed: skipping the parity check")
if torch is not None:
    module = net.to_torch()
    xt = torch.from_numpy(x).requires_grad_(True)
    out_t, _ = module(xt)
    (out_t * torch.from_numpy(d_out)).sum().backward()
    print("output max |difference|:", float(np.abs(out_t.detach().numpy() - output).max()))
    worst = max(float(np.abs(p.grad.numpy() - grads[name]).max()) for name, p in module.named_parameters())
    print("gradients max |difference|:", worst)
    print("input gradient max |difference|:", float(np.abs(xt.grad.numpy() - grads["input"]).max()))"""),
    ("md", """\
## Training on a memory task
`numrnn.experiments` generates the classic tasks (adding, copy memory, flip-flop, Lorenz
forecasting, character-level language modelling) and trains a network with a linear readout on the
engine's vjp (Adam or SGD, gradient clipping).  The same is one command: `numrnn train --task
flipflop`.  A short run on the 3-bit flip-flop:"""),
    ("code", """\
from numrnn.analysis import fixed_points
from numrnn.experiments import FlipFlop, train
from numrnn.experiments.plotting import plot_training

task = FlipFlop(T=40, p=0.1)
ff_net = numrnn.RNN(task.input_size, 24, cell="gru", seed=0)
result = train(ff_net, task, steps=120, batch_size=32, lr=0.02, seed=0)
print(result.status)
plot_training(result.losses, task.chance, title="3-bit flip-flop, GRU N=24")"""),
    ("code", """\
batch = task.sample(1, rng=7)
out, _ = ff_net.forward(batch.x)
pred = result.readout.forward(out)
fig, axes = plt.subplots(3, 1, figsize=(7, 4), sharex=True)
for i, ax in enumerate(axes):
    ax.plot(batch.x[:, 0, i], color="lightgrey", label="input pulses")
    ax.plot(batch.y[:, 0, i], "k--", label="target")
    ax.plot(pred[:, 0, i], label="network")
axes[0].legend(fontsize=7, loc="upper right"); axes[-1].set_xlabel("step")
plt.show()"""),
]

CHAOS = [
    ("md", """\
# The transition to chaos in random networks

A random tanh network h_t = tanh(W h_{t-1} + b) with W_ij ~ N(0, g^2/N) is quiescent for small
gain g and chaotic for large g (Sompolinsky, Crisanti and Sommers 1988).  The largest Lyapunov
exponent lambda_1, the mean exponential growth rate of small perturbations per step, changes sign at
the transition; its mean-field prediction for large N (Molgedey et al. 1992; Poole et al. 2016) is

q* = g^2 E[tanh^2(sqrt(q*) z)] + sigma_b^2,   lambda_max = 0.5 ln(g^2 E[sech^4(sqrt(q*) z)]),

with z ~ N(0, 1).  Here: full Lyapunov spectra from `numrnn.lyapunov_spectrum` (Benettin's QR
method) against gain, and the largest exponent next to the mean-field curve."""),
    ("code", SETUP),
    ("code", """\
from numrnn.experiments import meanfield_lyapunov

N, steps = 64, 500
gains = [0.8, 1.2, 1.6, 2.0, 3.0]
spectra = {}
for g in gains:
    net = numrnn.RNN(1, N, init="gaussian", gain=g, bias=False, seed=0)
    spectra[g] = numrnn.lyapunov_spectrum(net, n_steps=steps, transient=100, seed=1)
    print(f"g = {g}: {spectra[g]!r}".splitlines()[0])"""),
    ("code", """\
fig, ax = plt.subplots(figsize=(6, 4))
for g, res in spectra.items():
    ax.plot(np.arange(1, N + 1) / N, res.exponents, label=f"g = {g}")
ax.axhline(0, color="grey", lw=0.8)
ax.set_xlabel("i / N"); ax.set_ylabel("lambda_i (per step)"); ax.set_title(f"Lyapunov spectra, tanh, N = {N}")
ax.legend(); plt.show()
print("Kaplan-Yorke dimension:", {g: round(r.kaplan_yorke_dimension, 1) for g, r in spectra.items()})"""),
    ("md", """\
The largest exponent over a finer sweep, three networks per gain, against the mean-field
prediction.  Below g = 1 the origin is a stable fixed point, the Jacobian there is W, and
lambda_1 = ln of W's spectral radius, which tends to g as N grows (the circular law); above g = 1
the exponent is positive and approaches the mean-field curve as N grows.  This is `numrnn study`'s measurement; the command runs it over seeds and writes tables."""),
    ("code", """\
fine = np.linspace(0.5, 3.0, 11)
lam = np.array([[numrnn.lyapunov_spectrum(numrnn.RNN(1, 200, init="gaussian", gain=g, bias=False, seed=s),
                                          n_steps=500, k=1, transient=200, seed=s).exponents[0]
                 for s in range(3)] for g in fine])
curve = np.linspace(0.5, 3.0, 200)
fig, ax = plt.subplots(figsize=(6, 4))
ax.errorbar(fine, lam.mean(1), yerr=lam.std(1), fmt="o", label="numrnn, N = 200 (3 seeds)")
ax.plot(curve, meanfield_lyapunov(curve), "k-", label="mean field")
ax.axhline(0, color="grey", lw=0.8); ax.axvline(1, color="grey", lw=0.8, ls=":")
ax.set_xlabel("gain g"); ax.set_ylabel("lambda_1 (per step)"); ax.legend(); plt.show()"""),
    ("md", """\
Biases push the transition to larger gain: with sigma_b > 0 the mean-field zero crossing moves
right (the order-to-chaos phase diagram of Poole et al. 2016)."""),
    ("code", """\
fig, ax = plt.subplots(figsize=(6, 4))
for sb in [0.0, 0.3, 0.6]:
    ax.plot(curve, meanfield_lyapunov(curve, sb), label=f"sigma_b = {sb}")
ax.axhline(0, color="grey", lw=0.8); ax.set_xlabel("gain g"); ax.set_ylabel("mean-field lambda_max")
ax.legend(); plt.show()"""),
]

GRADIENTS = [
    ("md", """\
# Vanishing and exploding gradients, measured

Backpropagation through time multiplies the gradient by one step Jacobian per step back in time, so
its norm grows or decays roughly like exp(lambda tau) over a lag tau, with lambda the largest
Lyapunov exponent of the forward dynamics (Pascanu, Mikolov and Bengio 2013; Engelken et al. 2020).
Here the gradient norms come straight from the engine's BPTT (`state_grad_norm` of `net.vjp`), for
tanh, LSTM and GRU networks under Gaussian and orthogonal initialisation, and are set next to the
largest exponent measured independently by `numrnn.lyapunov_spectrum` on the same trajectory."""),
    ("code", SETUP),
    ("code", """\
rng = np.random.default_rng(0)
N, T, B, I = 64, 300, 8, 4
x = rng.standard_normal((T, 1, I))            # one driven trajectory ...
xb = np.repeat(x, B, axis=1)                  # ... copied B times, one random cotangent each
v = rng.standard_normal((1, B, N)); v /= np.linalg.norm(v, axis=2, keepdims=True)

def gradient_norms(net):
    \"\"\"|dL/dh_{T-1-tau}| for L = <v, h_{T-1}>, averaged in log over B random unit v.\"\"\"
    d_h_n = (v, np.zeros_like(v)) if net.cell == "lstm" else v
    g = net.vjp(xb, np.zeros((T, B, N)), d_h_n=d_h_n)
    return np.exp(np.log(g["state_grad_norm"][::-1]).mean(axis=1))   # index = lag

runs = {}
for cell in ["tanh", "lstm", "gru"]:
    for init in ["gaussian", "orthogonal"]:
        for gain in [0.8, 1.5]:
            net = numrnn.RNN(I, N, cell=cell, init=init, gain=gain, seed=1)
            lam = numrnn.lyapunov_spectrum(net, x, k=1, transient=50, seed=2).exponents[0]
            runs[cell, init, gain] = (gradient_norms(net), lam)
            print(f"{cell:5s} {init:10s} g={gain}: lambda_max = {lam:+.4f} per step")"""),
    ("code", """\
fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
lags = np.arange(T)
for ax, cell in zip(axes, ["tanh", "lstm", "gru"]):
    for (c, init, gain), (norms, lam) in runs.items():
        if c != cell:
            continue
        line, = ax.semilogy(lags, norms, ls="-" if init == "gaussian" else "--",
                            label=f"{init}, g={gain}")
        ax.semilogy(lags, norms[1] * np.exp(lam * (lags - 1)), ":", color=line.get_color(), lw=1)
    ax.set_title(cell); ax.set_xlabel("lag tau (steps back)"); ax.set_ylim(1e-30, 1e15)
axes[0].set_ylabel("|dL/dh_{T-tau}|"); axes[0].legend(fontsize=8)
fig.suptitle("BPTT gradient norms (solid/dashed) and exp(lambda_max tau) (dotted)")
plt.show()"""),
    ("md", """\
A gradient is one vector; the Jacobian product d h_T / d h_{T-tau} maps every direction.  Its
singular values (`numrnn.analysis.gradient_propagation`, accumulated by QR in log space so that
products over hundreds of steps neither overflow nor underflow) show the whole fan: the largest
one grows like exp(lambda_1 tau), the others like the later Lyapunov exponents."""),
    ("code", """\
from numrnn.analysis import gradient_propagation

fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, gain in zip(axes, [0.8, 1.5]):
    net = numrnn.RNN(I, N, init="gaussian", gain=gain, seed=1)
    prop = gradient_propagation(net, x, lags=np.arange(1, 151), seed=0)
    logsv = np.asarray(prop.log_singular_values).reshape(len(prop.lags), -1)
    ax.plot(prop.lags, logsv[:, ::4], lw=0.8)
    rate, lam = np.ravel(prop.decay_rate)[0], np.ravel(prop.lyapunov_max)[0]   # batch of one
    ax.set_title(f"tanh, g = {gain}: decay rate {rate:+.3f}, lambda_max {lam:+.3f}")
    ax.set_xlabel("lag tau")
axes[0].set_ylabel("ln singular values of dh_T/dh_{T-tau} (every 4th)")
plt.show()"""),
    ("md", """\
The dotted lines, drawn from the largest Lyapunov exponent alone, follow the measured gradient
norms: the exponent is the per-step rate at which gradients vanish (lambda < 0) or explode
(lambda > 0).  The driven tanh network crosses from vanishing to exploding between the two gains,
orthogonal and Gaussian weights alike.  The untrained LSTM and GRU contract at both gains: their
gates, half open at random initialisation, shrink the state by a factor well below one per step,
so their gradients vanish too; long memory in gated cells is learned (forget/update gates saturating open),
not given by the architecture.  The same comparison over a gain sweep for tanh networks, fitting
the decay rate of the gradient norm over the first 60 lags:"""),
    ("code", """\
gains = np.linspace(0.5, 2.5, 9)
rates, lams = [], []
for g in gains:
    net = numrnn.RNN(I, N, init="gaussian", gain=g, seed=3)
    norms = gradient_norms(net)
    rates.append(np.polyfit(np.arange(1, 60), np.log(norms[1:60]), 1)[0])
    lams.append(numrnn.lyapunov_spectrum(net, x, k=1, transient=50, seed=4).exponents[0])
fig, ax = plt.subplots(figsize=(5, 4))
ax.plot(lams, rates, "o")
lim = [min(lams + rates) - 0.05, max(lams + rates) + 0.05]
ax.plot(lim, lim, "k--", lw=1, label="rate = lambda_max")
ax.set_xlabel("largest Lyapunov exponent (per step)"); ax.set_ylabel("fitted gradient-norm rate (per step)")
ax.legend(); plt.show()"""),
]

FLIPFLOP = [
    ("md", """\
# The flip-flop network's fixed points

Sussillo and Barak (2013) opened the black box of a trained recurrent network by finding its fixed
points: states s* with F(s*) = s* under zero input.  A network trained on the 3-bit flip-flop (three
input channels with rare +-1 pulses; each output holds the sign of its channel's last pulse) must
store 2^3 = 8 memories, and it does so with 8 stable fixed points at the corners of a cube, joined
by saddles.  Here: train a tanh network on the task with numrnn (exact BPTT, Adam), then find and
classify its fixed points with `numrnn.fixed_points` (also `numrnn.analysis.fixed_points`).  The same is two commands: `numrnn train
--task flipflop --cell tanh` and `numrnn fixed-points numrnn-train/params.npz`."""),
    ("code", SETUP),
    ("code", """\
from numrnn.analysis import fixed_points
from numrnn.experiments import FlipFlop, train
from numrnn.experiments.plotting import plot_fixed_points, plot_training

task = FlipFlop(T=100, n_bits=3, p=0.05)
net = numrnn.RNN(task.input_size, 24, cell="tanh", seed=0)
result = train(net, task, steps=1500, batch_size=32, lr=0.01, seed=np.random.default_rng([0, 2]),
               stop_below=0.003)
print(result.status)
plot_training(result.losses, task.chance, title="3-bit flip-flop, tanh N=24")"""),
    ("code", """\
fp = fixed_points(net, n_initial=256, seed=0)
print(fp)
stable = np.asarray(fp.stable)
print(f"{len(stable)} fixed points: {stable.sum()} stable, {(~stable).sum()} unstable")"""),
    ("md", """\
Each stable fixed point is one memory: the readout maps it to one of the 8 sign patterns.  The
unstable ones are saddles between memories; the number of unstable directions says how many bits
a small push can flip."""),
    ("code", """\
readout = result.readout
patterns = np.sign(readout.forward(np.asarray(fp.points)[stable])).astype(int)
print("memories (readout signs of the stable fixed points):")
print(patterns)
print("distinct:", len({tuple(p) for p in patterns}))
print("unstable directions of the saddles:", sorted(np.asarray(fp.n_unstable)[~stable].tolist()))"""),
    ("code", """\
batch = task.sample(8, rng=3)
states, _ = net.forward(batch.x)
plot_fixed_points(np.asarray(fp.points), stable, trajectories=states,
                  title="flip-flop: fixed points on the top 3 principal components")"""),
    ("md", """\
The eigenvalues of the Jacobian at a stable fixed point are all inside the unit circle; their
time constants -1/ln|lambda| say how fast the network settles back into a memory after a
perturbation."""),
    ("code", """\
eig = np.asarray(fp.eigenvalues)
fig, ax = plt.subplots(figsize=(4.5, 4.5))
t = np.linspace(0, 2 * np.pi, 200)
ax.plot(np.cos(t), np.sin(t), "k-", lw=0.8)
for i in range(len(eig)):
    ax.plot(eig[i].real, eig[i].imag, "o" if stable[i] else "x", ms=4, alpha=0.6,
            color="tab:blue" if stable[i] else "tab:red")
ax.set_aspect("equal"); ax.set_xlabel("Re lambda"); ax.set_ylabel("Im lambda")
ax.set_title("Jacobian eigenvalues (o stable, x unstable)"); plt.show()"""),
]

COVARIANT = [
    ("md", """\
# Covariant Lyapunov vectors and the hyperbolicity of a chaotic rate network

The Lyapunov exponents say how fast perturbations grow; the **covariant Lyapunov vectors** (CLVs)
say along which directions.  v_i(t) is carried by the dynamics onto v_i(t+1), J_{t+1} v_i(t) =
exp(local growth) v_i(t+1), and grows on average at rate lambda_i.  Unlike the orthonormal
Gram-Schmidt vectors of Benettin's method, they are intrinsic to the dynamics (independent of the
norm and of time reversal), so the angles between them mean something: where the unstable
subspace span(v_1..v_nu) comes close to the stable one, the system is *not hyperbolic*, and
perturbations can pass from one to the other (Kuptsov and Parlitz 2012).

`numrnn.covariant_lyapunov_vectors` runs Ginelli et al.'s (2007) method: a forward QR pass that
stores the triangular factors, then a backward iteration of C_{t-1} = R_t^{-1} C_t; both loops
are compiled.  Here: the continuous-time rate network tau dh/dt = -h + W tanh(h), W_ij ~ N(0,
g^2/N), Euler steps of alpha = dt/tau = 0.1, at three gains."""),
    ("code", SETUP),
    ("md", """\
Finite N moves the onset of chaos above the mean-field g = 1 (at N = 100 and g = 1.5 these
networks settle on a limit cycle), so the gains are 2, 3 and 4.  The forward frame aligns over
100 tau, the backward iteration converges over another 100 tau, and the vectors are kept every
5 steps of the 150 tau between.  One step is alpha tau, so exponents per tau are the per-step
ones divided by alpha."""),
    ("code", """\
import time

N, alpha = 100, 0.1
gains = [2.0, 3.0, 4.0]
results = {}
for g in gains:
    net = numrnn.RNN(1, N, cell="rate", alpha=alpha, init="gaussian", gain=g, bias=False, seed=0)
    start = time.perf_counter()
    results[g] = numrnn.covariant_lyapunov_vectors(
        net, n_steps=3500, transient=1000, backward_transient=1000,
        times=np.arange(1000, 2500, 5), seed=1)
    print(f"g = {g}: {time.perf_counter() - start:.1f} s, all {N} CLVs at {results[g].times.size} times")
print(results[3.0])"""),
    ("code", """\
fig, ax = plt.subplots(figsize=(6, 4))
for g, res in results.items():
    ax.plot(np.arange(1, N + 1) / N, res.exponents / alpha, ".-", ms=3, label=f"g = {g}")
ax.axhline(0, color="grey", lw=0.8)
ax.set_xlabel("i / N"); ax.set_ylabel("lambda_i (per tau)")
ax.set_title(f"Lyapunov spectra, rate network, N = {N}"); ax.legend(); plt.show()
for g, res in results.items():
    print(f"g = {g}: leading exponents per tau", np.round(res.exponents[:5] / alpha, 3))"""),
    ("md", """\
## Angles between the unstable and the stable subspaces

A flow has one exponent equal to 0, along the trajectory itself (here the one closest to 0,
within its error bar).  The unstable subspace E+ is spanned by the CLVs above it; the angle that
measures hyperbolicity is the smallest principal angle between E+ and the centre-stable subspace
E0 + E- spanned by all the others, `res.split_angles(n)` with n = dim E+ (`res.angles` uses the
number of positive exponents, which here would count the neutral direction in or out by chance).
Its distribution over time shows how often the two come close: mass near 0 is a near-tangency."""),
    ("code", """\
fig, ax = plt.subplots(figsize=(6, 4))
bins = np.linspace(-4, 0.3, 40)
for g, res in results.items():
    neutral = int(np.argmin(np.abs(res.exponents)))     # the flow direction, lambda ~ 0
    theta = res.split_angles(neutral)[:, 0]             # E+ = span(v_1 .. v_neutral)
    ax.hist(np.log10(theta), bins=bins, histtype="step", lw=1.5, density=True,
            label=f"g = {g}: dim E+ = {neutral}, min {theta.min():.1e} rad")
ax.set_xlabel("log10 angle(E+, E0 + E-) (rad)"); ax.set_ylabel("density"); ax.legend(fontsize=8)
ax.set_title("near-tangencies: angles close to 0"); plt.show()"""),
    ("md", """\
The angle stays far from pi/2: typically a few hundredths to a few tenths of a radian, and at
some times below 0.01 rad, more often at the larger gains.  The rate network is chaotic but its
unstable and stable directions come close to tangency: no uniform hyperbolicity, as Kuptsov and
Parlitz found for most physical systems.

## Where the CLVs live: localisation
The participation ratio PR = 1 / (N sum_j v_j^4) of a unit vector is the fraction of the N units
that carry it (1 for a vector spread evenly, 1/N for a single unit)."""),
    ("code", """\
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for g, res in results.items():
    V = res.vectors[:, 0]                               # (n_times, S, k), B = 1
    pr = 1.0 / (N * np.sum(V ** 4, axis=1))             # (n_times, k)
    axes[0].plot(np.arange(1, N + 1) / N, pr.mean(axis=0), label=f"g = {g}")
axes[0].set_xlabel("CLV index i / N"); axes[0].set_ylabel("participation ratio (time mean)")
axes[0].legend(); axes[0].set_title("localisation of each CLV")
res = results[3.0]
w = res.vectors[:, 0, :, 0] ** 2                        # weight of each unit in v_1(t)
order = np.argsort(w.mean(axis=0))[::-1]
im = axes[1].imshow(w[:, order].T, aspect="auto", cmap="magma",
                    extent=[res.times[0] * alpha, res.times[-1] * alpha, N, 0])
axes[1].set_xlabel("time (tau)"); axes[1].set_ylabel("unit (by mean weight)")
axes[1].set_title("v_1(t)^2 over the units, g = 3"); fig.colorbar(im, ax=axes[1]); plt.show()
pr1 = 1.0 / (N * np.sum(w ** 2, axis=1))                  # PR of v_1(t), every time
print(f"g = 3: v_1 is carried by {pr1.mean():.0%} of the units on average "
      f"(from {pr1.min():.0%} to {pr1.max():.0%} over time)")"""),
    ("md", """\
A random Gaussian vector has PR = 1/3: the first and the last CLVs are about as spread out as
that, the middle of the spectrum more localised, at every gain.  At any one time v_1 is carried
by a changing set of units (right): the instability moves over the network with the trajectory.
Last, the defining property, checked against the step Jacobians of
`numrnn.jacobians`: five steps carry v_i(t) onto v_i(t + 5) (|cos| = 1 to rounding)."""),
    ("code", """\
net = numrnn.RNN(1, N, cell="rate", alpha=alpha, init="gaussian", gain=3.0, bias=False, seed=0)
x, h0 = np.zeros((1300, 1)), np.random.default_rng(2).standard_normal((1, N))
res = numrnn.covariant_lyapunov_vectors(net, x, h0, k=10, transient=500, backward_transient=200,
                                        times=[1000, 1005], seed=3)
out, _ = net.forward(x[:1001], h0)                      # the state after step 1000 ...
J = numrnn.jacobians(net, x[1001:1006], out[1000][None])  # ... and the Jacobians of steps 1001-1005
u = J[4] @ J[3] @ J[2] @ J[1] @ J[0] @ res.vectors[0, 0]
u /= np.linalg.norm(u, axis=0)
print("|cos(J^5 v_i(t), v_i(t+5))|:", np.round(np.abs(np.sum(u * res.vectors[1, 0], axis=0)), 12))"""),
]


def _notebook(cells):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, src in cells:
        nb.cells.append(nbformat.v4.new_markdown_cell(src) if kind == "md"
                        else nbformat.v4.new_code_cell(src))
    return nb


NOTEBOOKS = {"01_quickstart.ipynb": QUICKSTART, "02_transition_to_chaos.ipynb": CHAOS,
             "03_vanishing_exploding_gradients.ipynb": GRADIENTS,
             "04_flipflop_fixed_points.ipynb": FLIPFLOP,
             "05_covariant_lyapunov_vectors.ipynb": COVARIANT}


def execute(path, timeout=600):
    """Execute a notebook in its folder; return the executed notebook (raises on any error)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    return nb


def main(argv):
    import nbformat

    names = [a for a in argv if not a.startswith("-")] or list(NOTEBOOKS)
    for name in names:
        path = HERE / name
        nbformat.write(_notebook(NOTEBOOKS[name]), path)
        if "--execute" in argv:
            nbformat.write(execute(path), path)
        print("wrote", path)


if __name__ == "__main__":
    main(sys.argv[1:])
