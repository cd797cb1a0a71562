"""Checking that an allocation fits before making it.

A tape or a Jacobian array larger than the memory left is not an error NumPy reports in time: the
allocation succeeds (memory is overcommitted) and the kernel kills the process when the pages are
touched, with no message.  So numrnn compares what a call will allocate with the memory available
(the smaller of /proc/meminfo's MemAvailable and the free part of the cgroup's limit) and raises
``MemoryError`` naming the sizes first.  ``numrnn.config.MEMORY_CHECK = False`` turns it off.
"""
import os

from . import config

__all__ = ["available_bytes", "check", "format_bytes", "steps_that_fit", "CHECK_FROM"]

#: Requests below this many bytes are not compared with the memory available: reading /proc and
#: the cgroup files costs about 0.15 ms, more than a small call itself, and an allocation this
#: small is not the one that exhausts a machine.
CHECK_FROM = 64 * 2**20


def _read_int(path):
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available():
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_free():
    """Bytes left under this process's cgroup memory limit, or None without a limit.

    Inside a container the cgroup path of /proc/self/cgroup may not exist under the mount (the
    container sees its own cgroup as the root), so the mount's root is tried too.
    """
    try:
        with open("/proc/self/cgroup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":  # cgroup v2
            root, files = "/sys/fs/cgroup", ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):  # cgroup v1
            root, files = "/sys/fs/cgroup/memory", ("memory.limit_in_bytes",
                                                    "memory.usage_in_bytes")
        else:
            continue
        for base in (os.path.join(root, path.lstrip("/")), root):
            limit = _read_int(os.path.join(base, files[0]))
            used = _read_int(os.path.join(base, files[1]))
            if limit is not None and used is not None:
                if limit < 2**60:
                    return max(limit - used, 0)
                break
    return None


def available_bytes():
    """Memory this process can still allocate, in bytes, or None where it cannot be told."""
    known = [v for v in (_meminfo_available(), _cgroup_free()) if v is not None]
    return min(known) if known else None


def format_bytes(n):
    """1536 -> '1.5 KiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024.0 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TiB"  # pragma: no cover


def check(what, nbytes, detail, fits=None):
    """Raise MemoryError if ``nbytes`` exceed the memory available.

    Parameters
    ----------
    what : str
        The call and the thing allocated ("forward_vjp: the BPTT tape").
    nbytes : int
        Bytes the call will hold at its peak.
    detail : str
        The sizes that determine it ("T=40000 steps, B=32 sequences, N=256 units").
    fits : callable, optional
        ``fits(available_bytes) -> str``: what would fit (for example the largest T).
    """
    if not config.MEMORY_CHECK or nbytes < CHECK_FROM:
        return
    avail = available_bytes()
    if avail is None or nbytes <= avail:
        return
    from .cpu import scratch  # the idle scratch buffers of this thread are memory it can have

    if scratch.release():
        avail = available_bytes()
        if avail is None or nbytes <= avail:
            return
    tail = f"; {fits(avail)}" if fits is not None else ""
    raise MemoryError(f"{what} for {detail} needs {format_bytes(nbytes)}, but only "
                      f"{format_bytes(avail)} of memory are available{tail}")


def steps_that_fit(T, nbytes, advice):
    """A ``fits`` for :func:`check` when the bytes grow with the number of steps T: the largest
    T that fits, and ``advice`` (what to do instead)."""
    def fits(avail):
        t_max = int(T * avail // nbytes)
        if t_max < 1:
            return "not even one step of this batch fits"
        return f"at most T={t_max} steps of this batch fit: {advice}"
    return fits
