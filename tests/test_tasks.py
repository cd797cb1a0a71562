"""Tasks: generators, chance baselines, seeding, the Lorenz integrator's order."""
import numpy as np
import pytest

from numrnn.experiments import (AddingProblem, CharLM, CopyMemory, FlipFlop, LorenzForecast,
                                cross_entropy_loss, lorenz_trajectory, make_task, mse_loss)
from tests.tolerance import assert_close

# --- invalid input first ------------------------------------------------------------------


@pytest.mark.parametrize("call, exc, words", [
    (lambda: make_task("parity"), ValueError, ["task", "adding", "'parity'"]),
    (lambda: AddingProblem(1), ValueError, ["T", "2"]),
    (lambda: AddingProblem(0), ValueError, ["T", ">= 1"]),
    (lambda: AddingProblem(10.5), TypeError, ["T", "integer"]),
    (lambda: CopyMemory(10, n_symbols=1), ValueError, ["n_symbols"]),
    (lambda: FlipFlop(10, p=1.5), ValueError, ["p", "1.5"]),
    (lambda: LorenzForecast(10, washout=10), ValueError, ["washout", "T=10"]),
    (lambda: CharLM(10, text="short"), ValueError, ["T: expected at most 4", "T + 1 = 11",
                                                    "the text has 5", "got 10"]),
    (lambda: CharLM(10 ** 5), ValueError, [f"T: expected at most {len(CharLM(5).text) - 1}",
                                           "got 100000"]),
    (lambda: CharLM(10, text=b"bytes are not text"), TypeError, ["text", "bytes"]),
    (lambda: AddingProblem(10).sample(0), ValueError, ["batch_size"]),
    (lambda: AddingProblem(10, dtype=np.int32), TypeError, ["dtype"]),
    (lambda: CharLM(5).encode("\u00e9"), ValueError, ["character", "vocabulary"]),
])
def test_bad_arguments(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value)


# --- seeding ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, 2.5, "abc", [3, -1], True])
def test_bad_seeds_name_the_argument(seed):
    """A task's generator argument is `rng`: a bad one is named, never NumPy's bare
    SeedSequence message."""
    for call in (lambda: AddingProblem(10).sample(2, rng=seed),
                 lambda: lorenz_trajectory(3, transient=0, rng=seed)):
        with pytest.raises((TypeError, ValueError), match=r"^rng: expected None, a non-negative"):
            call()



@pytest.mark.parametrize("name", ["adding", "copy", "flipflop", "lorenz", "charlm"])
def test_same_seed_same_batch(name):
    task = make_task(name, 20)
    a, b = task.sample(4, rng=7), task.sample(4, rng=7)
    c = task.sample(4, rng=8)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    assert a.x.shape[:2] == a.y.shape[:2] == a.mask.shape
    assert a.x.shape[2] == task.input_size and a.x.dtype == np.float64


def test_float32_tasks():
    batch = FlipFlop(10, dtype=np.float32).sample(2, rng=0)
    assert batch.x.dtype == batch.y.dtype == np.float32


# --- adding problem ----------------------------------------------------------------------


def test_adding_problem_structure(rng):
    T = 30
    batch = AddingProblem(T).sample(500, rng)
    markers = batch.x[:, :, 1]
    assert np.all(markers.sum(axis=0) == 2)
    assert np.all(markers[:T // 2].sum(axis=0) == 1)
    assert_close(batch.y[-1, :, 0], (batch.x[:, :, 0] * markers).sum(axis=0), what="target")
    assert batch.mask[-1].all() and not batch.mask[:-1].any()


def test_adding_problem_chance_is_one_sixth(rng):
    """Predicting the constant 1 has MSE Var(u1 + u2) = 2/12 = 1/6 (Arjovsky et al. 2016).

    Tolerance: 5 standard errors of the mean of (s - 1)^2 over 20,000 sequences
    (std of (s-1)^2 is about 0.19, so 5 * 0.19 / sqrt(2e4) = 0.007).
    """
    task = AddingProblem(20)
    batch = task.sample(20_000, rng)
    loss = mse_loss(np.ones_like(batch.y), batch.y, batch.mask)
    assert abs(loss - 1 / 6) < 0.007
    assert task.chance == 1 / 6


# --- copy memory -------------------------------------------------------------------------


def test_copy_memory_structure_and_chance(rng):
    """The memoryless strategy has cross-entropy 10 ln 8 / (T + 20) exactly (Arjovsky et al. 2016):
    blank with certainty for T + 10 steps, then uniform over the 8 symbols."""
    T = 15
    task = CopyMemory(T)
    batch = task.sample(64, rng)
    L = T + 20
    assert batch.x.shape == (L, 64, 10) and batch.y.shape == (L, 64)
    assert np.all(batch.x.sum(axis=2) == 1)
    symbols = batch.x[:10].argmax(axis=2)
    assert np.all((symbols >= 1) & (symbols <= 8))
    assert np.all(batch.x[T + 9, :, 9] == 1)  # the delimiter
    assert np.array_equal(batch.y[-10:], symbols) and not batch.y[:-10].any()
    logits = np.full((L, 64, 9), -200.0)
    logits[:L - 10, :, 0] = 0.0
    logits[L - 10:, :, 1:] = 0.0
    assert_close(cross_entropy_loss(logits, batch.y), 10 * np.log(8) / (T + 20))
    assert_close(task.chance, 10 * np.log(8) / (T + 20))


# --- flip-flop ---------------------------------------------------------------------------


def test_flipflop_holds_last_pulse(rng):
    task = FlipFlop(60, n_bits=3, p=0.1)
    batch = task.sample(8, rng)
    assert np.all(batch.x[0] != 0)
    state = np.zeros((8, 3))
    for t in range(60):
        state = np.where(batch.x[t] != 0, batch.x[t], state)
        assert np.array_equal(batch.y[t], state)
    assert task.chance == 1.0 and mse_loss(np.zeros_like(batch.y), batch.y) == 1.0


# --- Lorenz ------------------------------------------------------------------------------


def test_lorenz_rk4_is_fourth_order():
    """Classical RK4 has global error O(dt^4): the slope of log(error) against log(dt) is 4.

    The reference is the same integrator at dt = 1e-4; the fitted slope over dt = 0.01 .. 0.0025
    must lie in [3.7, 4.3] (the pre-asymptotic range bends it slightly).
    """
    x0 = np.array([[1.0, 1.0, 20.0]])
    horizon = 0.5
    ref = lorenz_trajectory(1, dt=1e-4, x0=x0, transient=int(horizon / 1e-4) - 1)[0, 0]
    dts = np.array([0.01, 0.005, 0.0025])
    errs = []
    for dt in dts:
        end = lorenz_trajectory(1, dt=dt, x0=x0, transient=int(round(horizon / dt)) - 1)[0, 0]
        errs.append(np.linalg.norm(end - ref))
    slope = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    assert 3.7 <= slope <= 4.3, slope


def test_lorenz_forecast_targets_are_shifted_inputs(rng):
    task = LorenzForecast(40, horizon=3, washout=5)
    batch = task.sample(3, rng)
    assert_close(batch.y[:-3], batch.x[3:], what="y(t) = x(t + horizon)")
    assert not batch.mask[:5].any() and batch.mask[5:].all()
    assert 0.5 < task.chance < 1.5  # standardised components


# --- character language model -----------------------------------------------------------


def test_charlm_windows_and_chance(rng):
    task = CharLM(30)
    assert "Shall I compare thee" in task.text
    batch = task.sample(5, rng)
    chars = batch.x.argmax(axis=2)
    assert np.array_equal(chars[1:], batch.y[:-1])
    text = task.decode(np.concatenate([chars[:, 0], batch.y[-1:, 0]]))
    assert text in task.text
    assert 0 < task.chance < np.log(len(task.vocab))
    assert task.decode(task.encode("Love alters not")) == "Love alters not"
