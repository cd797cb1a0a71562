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
    """Largest Lyapunov exponent, mean-field curve and gradient decay rate against gain; spectra.

    Parameters
    ----------
    result : StudyResult
    path : str or path-like, optional
        Where to write the figure (PNG by extension).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from .meanfield import meanfield_lyapunov

    cfg = result.config
    fig = _figure(figsize=(10, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    g = result.column("gain")
    ax1.plot(g, result.column("lyapunov_max"), "o", ms=4, alpha=0.6, label="measured (each seed)")
    ax1.plot(g, result.column("grad_decay_rate"), "x", ms=5, alpha=0.6,
             label="gradient-norm decay rate")
    if cfg.has_meanfield():
        fine = np.linspace(min(cfg.gains), max(cfg.gains), 200)
        ax1.plot(fine, meanfield_lyapunov(fine, cfg.sigma_b), "k-", lw=1.5, label="mean field")
    ax1.axhline(0.0, color="grey", lw=0.8)
    ax1.set_xlabel("gain g")
    ax1.set_ylabel("per step")
    ax1.set_title(f"largest Lyapunov exponent ({cfg.cell}, N={cfg.hidden_size})")
    ax1.legend(fontsize=8)
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    gains = list(cfg.gains)
    for j, gain in enumerate(gains):
        spectra = np.array([r["exponents"] for r in result.rows if r["gain"] == gain])
        ax2.plot(np.arange(1, spectra.shape[1] + 1), spectra.mean(axis=0), "-",
                 color=cmap(j / max(len(gains) - 1, 1)), label=f"g = {gain:g}")
    ax2.axhline(0.0, color="grey", lw=0.8)
    ax2.set_xlabel("exponent index i")
    ax2.set_ylabel("lambda_i (per step, mean over seeds)")
    ax2.set_title("Lyapunov spectrum" + ("" if cfg.n_exponents is None
                                         else f" (first {cfg.n_exponents})"))
    ax2.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
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
