"""A dependency-free text progress bar for the command line and long sweeps."""
import sys
import time

__all__ = ["ProgressBar"]


class ProgressBar:
    """A one-line progress bar on a terminal; sparse plain lines when the stream is not a terminal.

    Parameters
    ----------
    total : int
        Number of units of work.
    desc : str
        Label printed before the bar.
    stream : file-like, default sys.stderr
    enabled : bool
        False draws nothing (library use, quiet mode).
    width : int
        Characters of the bar itself.

    Examples
    --------
    >>> import io
    >>> from numrnn.experiments import ProgressBar
    >>> buf = io.StringIO()
    >>> with ProgressBar(3, "demo", stream=buf) as bar:
    ...     for _ in range(3):
    ...         bar.update(postfix="ok")
    >>> "3/3" in buf.getvalue()
    True
    """

    def __init__(self, total, desc="", *, stream=None, enabled=True, width=30):
        self.total = max(int(total), 1)
        self.desc = desc
        self.stream = sys.stderr if stream is None else stream
        self.enabled = bool(enabled)
        self.width = int(width)
        self.count = 0
        self.start = time.perf_counter()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = -1.0
        self._last_line_count = -1
        self.postfix = ""

    def update(self, n=1, postfix=None):
        """Advance by ``n`` units; ``postfix`` is shown after the bar (e.g. the current loss)."""
        self.count = min(self.count + n, self.total)
        if postfix is not None:
            self.postfix = str(postfix)
        self._draw()

    def _line(self):
        frac = self.count / self.total
        filled = int(round(frac * self.width))
        elapsed = time.perf_counter() - self.start
        bar = "#" * filled + "-" * (self.width - filled)
        if self.count == self.total:
            eta_s = f"{elapsed:5.1f}s"
        elif self.count:
            eta_s = f"eta {elapsed / self.count * (self.total - self.count):5.1f}s"
        else:  # nothing done yet: no rate to extrapolate from
            eta_s = "eta     ?"
        tail = f" {self.postfix}" if self.postfix else ""
        return f"{self.desc} [{bar}] {self.count}/{self.total} {eta_s}{tail}"

    def _draw(self, final=False):
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._tty:
            if final or self.count == self.total or now - self._last_draw > 0.1:
                self.stream.write("\r" + self._line() + ("\n" if final else ""))
                self.stream.flush()
                self._last_draw = now
        else:
            # a log file gets about ten lines per bar, not one per update
            step = max(self.total // 10, 1)
            if final or self.count == self.total or self.count // step != self._last_line_count:
                if final and self._last_line_count == self.total:
                    return
                self.stream.write(self._line() + "\n")
                self.stream.flush()
                self._last_line_count = (self.total if self.count == self.total
                                         else self.count // step)

    def close(self):
        """Finish the line."""
        self._draw(final=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
