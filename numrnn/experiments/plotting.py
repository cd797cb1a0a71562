"""Figures of studies, training runs and fixed points (matplotlib, an optional extra).

matplotlib is imported inside each function, never by ``import numrnn``.  Figures are built with
the object-oriented ``matplotlib.figure.Figure`` (no pyplot state, no GUI backend), so they can be
written from scripts, workers and tests alike.
"""
import numpy as np

__all__ = ["plot_study", "plot_training", "plot_fixed_points", "pca_project", "require_matplotlib"]


def require_matplotlib():
    """The ``matplotlib.figure.Figure`` class; ImportError naming the extra to install if absent.

    The command line calls it before any work, so that a promised figure never fails at the end.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("figures need matplotlib, which is not installed: pip install "
                          "'numrnn[plot]'") from exc
    return Figure


def _figure(**kw):
    return require_matplotlib()(**kw)


def plot_study(result, path=None):
    """The study's figure: four panels against the gain g.

    (a) the largest Lyapunov exponent (each seed, and the mean over seeds with its error bar),
    the mean-field curve where the theory applies, and the gradient-norm decay rate; (b) the
    spectrum lambda_i against i/N, one curve per gain (mean over seeds, coloured by g); (c) the
    Kaplan-Yorke dimension per unit D_KY/N and (d) the Kolmogorov-Sinai entropy bound per unit
    h_KS/N, with error bars.  The error bars are those of :meth:`StudyResult.table`: the standard
    error of the mean over seeds (the batch-means stderr of one seed).

    Parameters
    ----------
    result : StudyResult
    path : str or path-like, optional
        Where to write the figure (PNG by extension).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from .meanfield import meanfield_lyapunov

    cfg = result.config
    summary = result.summary()
    gains = np.array([e["gain"] for e in summary])
    n = cfg.hidden_size
    err = ("mean +- s.e. over seeds" if len(cfg.seeds) > 1
           else "one seed +- batch-means s.e.")
    fig = _figure(figsize=(11, 8), layout="constrained")
    (ax1, ax2), (ax3, ax4) = fig.subplots(2, 2)
    g = result.column("gain")

    def mean_with_error(ax, key, **kw):
        ax.errorbar(gains, [e[key] for e in summary], yerr=[e[key + "_stderr"] for e in summary],
                    capsize=3, **kw)

    ax1.plot(g, result.column("lyapunov_max"), "o", ms=3, alpha=0.3, color="tab:blue")
    mean_with_error(ax1, "lyapunov_max", fmt="o-", ms=4, color="tab:blue",
                    label=f"lambda_max ({err})")
    mean_with_error(ax1, "grad_decay_rate", fmt="x--", ms=5, color="tab:orange",
                    label="gradient-norm decay rate")
    if cfg.has_meanfield():
        fine = np.linspace(min(cfg.gains), max(cfg.gains), 200)
        ax1.plot(fine, meanfield_lyapunov(fine, cfg.sigma_b), "k-", lw=1.5, label="mean field")
    ax1.axhline(0.0, color="grey", lw=0.8)
    ax1.set_xlabel("gain g")
    ax1.set_ylabel("per step")
    ax1.set_title(f"(a) largest Lyapunov exponent ({cfg.cell}, N={n})")
    ax1.legend(fontsize=8)

    cmap = colormaps["viridis"]
    norm = Normalize(gains.min(), gains.max() if gains.max() > gains.min() else gains.min() + 1)
    for gain in cfg.gains:
        spectra = np.array([r["exponents"] for r in result.rows if r["gain"] == gain])
        i = np.arange(1, spectra.shape[1] + 1)
        with np.errstate(invalid="ignore"):  # -inf exponents (a singular step) are not drawn
            ax2.plot(i / n, spectra.mean(axis=0), "-", lw=1.2, color=cmap(norm(gain)))
    ax2.axhline(0.0, color="grey", lw=0.8)
    ax2.set_xlabel("i / N")
    ax2.set_ylabel("lambda_i (per step, mean over seeds)")
    ax2.set_title("(b) Lyapunov spectrum" + ("" if cfg.n_exponents is None
                                             else f" (first {cfg.n_exponents})"))
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax2, label="gain g")

    for ax, key, label, title in (
            (ax3, "kaplan_yorke_dimension_per_unit", "D_KY / N",
             "(c) Kaplan-Yorke dimension per unit"),
            (ax4, "ks_entropy_per_unit", "h_KS / N (per step)",
             "(d) Kolmogorov-Sinai entropy (Pesin bound) per unit")):
        ax.plot(g, result.column(key), "o", ms=3, alpha=0.3, color="tab:green")
        mean_with_error(ax, key, fmt="o-", ms=4, color="tab:green", label=err)
        ax.set_xlabel("gain g")
        ax.set_ylabel(label)
        ax.set_title(title)
    bounds = np.array([e["kaplan_yorke_dimension_per_unit_lower_bound"] for e in summary])
    if np.isfinite(bounds).any():
        ax3.plot(gains, bounds, "^", ms=6, color="tab:red",
                 label=f"lower bound (k = {cfg.n_exponents} exponents)")
    if any(e["ks_entropy_is_lower_bound"] for e in summary):
        ax4.set_title(ax4.get_title() + f", lower bound (k = {cfg.n_exponents})")
    ax3.legend(fontsize=8)
    ax4.legend(fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_training(losses, chance, path=None, title="training"):
    """Training loss per step (and its running mean) against the chance baseline.

    Parameters
    ----------
    losses : ndarray, shape (steps,)
    chance : float
    path : str or path-like, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    losses = np.asarray(losses, dtype=np.float64)
    fig = _figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.semilogy(losses, lw=0.5, alpha=0.5, label="batch loss")
    w = min(50, len(losses))
    running = np.convolve(losses, np.ones(w) / w, mode="valid")
    ax.semilogy(np.arange(w - 1, len(losses)), running, lw=1.5, label=f"running mean ({w})")
    ax.axhline(chance, color="k", ls="--", label="chance")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def pca_project(states, n_components=2, basis_from=None):
    """Project states onto the principal components of ``basis_from`` (default: themselves).

    Parameters
    ----------
    states : ndarray, shape (M, S)
    n_components : int
    basis_from : ndarray, shape (K, S), optional

    Returns
    -------
    projected : ndarray, shape (M, n_components)
    components : ndarray, shape (n_components, S)
    mean : ndarray, shape (S,)
    """
    ref = np.asarray(states if basis_from is None else basis_from, dtype=np.float64)
    mean = ref.mean(axis=0)
    _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
    comps = vt[:n_components]
    return (np.asarray(states, np.float64) - mean) @ comps.T, comps, mean


def plot_fixed_points(points, stable, trajectories=None, path=None, title="fixed points"):
    """Fixed points projected on principal components, stable filled and unstable open.

    Parameters
    ----------
    points : ndarray, shape (M, S)
    stable : ndarray of bool, shape (M,)
    trajectories : ndarray, shape (T, B, S), optional
        States visited while the network runs its task, drawn as faint lines.  The projection is
        onto the principal components of the fixed points (of these states when there are fewer
        than 4 fixed points).
    path : str or path-like, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    points = np.asarray(points, np.float64)
    stable = np.asarray(stable, bool)
    # The fixed points span the interesting directions (for the flip-flop, the cube of memories);
    # with too few of them the visited states define the projection instead.
    basis = None
    if len(points) < 4 and trajectories is not None:
        basis = np.asarray(trajectories, np.float64).reshape(-1, points.shape[1])
    elif len(points) < 4:
        basis = np.vstack([points, points[:1] + 1e-3 * np.eye(points.shape[1])[:3]])
    n = min(3, points.shape[1])
    proj, comps, mean = pca_project(points, n, basis)
    fig = _figure(figsize=(6, 5), layout="constrained")
    if n == 3:
        ax = fig.add_subplot(projection="3d")
    else:
        ax = fig.add_subplot()
    if trajectories is not None:
        traj = np.asarray(trajectories, np.float64)
        for b in range(min(traj.shape[1], 8)):
            tp = (traj[:, b] - mean) @ comps.T
            ax.plot(*tp.T[:n], lw=0.4, alpha=0.4, color="grey")
    extra = {"depthshade": False} if n == 3 else {}
    ax.scatter(*proj[stable].T[:n], s=60, c="tab:blue", label=f"stable ({stable.sum()})", **extra)
    ax.scatter(*proj[~stable].T[:n], s=60, facecolors="none", edgecolors="tab:red",
               label=f"unstable ({(~stable).sum()})", **extra)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    if n == 3:
        ax.set_zlabel("PC 3")
    ax.set_title(title)
    ax.legend(fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
