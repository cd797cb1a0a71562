"""What a cold test run spends compiling: Numba's compile of every dispatcher, by kernel and by
test file.

CI runs the suite from a clean clone, so every kernel is compiled there (the on-disk cache is
empty), one at a time on one core.  This records each compile as a pytest plugin and sums it up:

    PYTHONPATH=benchmarks NUMBA_CACHE_DIR=$(mktemp -d) python -m pytest -q -p compile_costs tests
    python benchmarks/compile_costs.py compiles_<pid>.json        # the summary

The plugin listens to Numba's ``numba:compile`` events and writes, when the process ends,
``compiles_<pid>.json`` in ``COMPILE_COSTS_DIR`` (default: the working directory): one record per
compile (module, function, argument types, seconds, nesting depth, the test running).  Only
outermost compiles count in the sums (an inner one is part of its caller's time).  Child
processes (the simulator suite, the CLI tests) are not recorded.  Figures are in
benchmarks/README.md ("What the test suite compiles").
"""
import atexit
import collections
import json
import os
import re
import sys
import time


def _install():
    from numba.core import event

    records = []

    class _Timer(event.Listener):
        def __init__(self):
            self.started = []

        def on_start(self, ev):
            self.started.append(time.perf_counter())

        def on_end(self, ev):
            seconds = time.perf_counter() - self.started.pop()
            data = ev.data or {}
            fn = getattr(data.get("dispatcher"), "py_func", None)
            records.append((getattr(fn, "__module__", ""), getattr(fn, "__qualname__", "?"),
                            str(data.get("args")), seconds, len(self.started),
                            os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]))

    event.register("numba:compile", _Timer())

    @atexit.register
    def _write():
        folder = os.environ.get("COMPILE_COSTS_DIR", ".")
        with open(os.path.join(folder, f"compiles_{os.getpid()}.json"), "w") as fh:
            json.dump(records, fh)


def pytest_configure(config):
    """Loaded as a pytest plugin (``-p compile_costs``): start recording."""
    _install()


def _kernel(qualname):
    """The generated per-cell suffixes (fingerprints) stripped, so a kernel's compiles add up."""
    name = re.sub(r"_[0-9a-f]{16,32}$", "", qualname)
    return name.replace(".<locals>.", ".")


def summary(path, top=25):
    with open(path) as fh:
        records = json.load(fh)
    outer = [r for r in records if r[4] == 0]
    total = sum(r[3] for r in outer)
    print(f"{len(outer)} outermost compiles, {total:.0f} s in all "
          f"({len(records)} compiles with the nested ones)")
    by_kernel = collections.defaultdict(lambda: [0, 0.0])
    by_file = collections.defaultdict(float)
    for module, qualname, _, seconds, _, test in outer:
        entry = by_kernel[(module, _kernel(qualname))]
        entry[0] += 1
        entry[1] += seconds
        by_file[test.split("::")[0] or "(outside a test)"] += seconds
    print("\n| kernel | compiles | s | s each |\n|---|---|---|---|")
    for (module, name), (n, s) in sorted(by_kernel.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"| {module}.{name} | {n} | {s:.1f} | {s / n:.1f} |")
    print("\n| test file | s compiling |\n|---|---|")
    for name, s in sorted(by_file.items(), key=lambda kv: -kv[1])[:top]:
        print(f"| {name} | {s:.1f} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/compile_costs.py compiles_<pid>.json")
    summary(sys.argv[1])
