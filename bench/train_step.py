"""Benchmark one LSTM training step: our Numba kernels against PyTorch, in the same run.

One step = forward over T steps + BPTT + global gradient-norm clipping + Adam(W) update,
for a 1-layer LSTM (hidden H) with a linear head, batch B, D = 1 input and 1 output,
float32, ONE thread for everything (Numba, BLAS, PyTorch).

    Numba:   loss_and_grad(params, x, target, washout, grad, workspace=ws); Adam.update(grad)
             (ws reused across steps, as detector.model.train does; --no-workspace, or a
             revision without network.Workspace, lets loss_and_grad allocate per call)
    PyTorch: nn.LSTM + nn.Linear, F.mse_loss, backward, clip_grad_norm_, optim.Adam.step

Phases, in this order:

1. Numba warm-up (JIT compilation or cache load; not timed).
2. Numba alone with glibc's allocator untouched, before torch is even imported: what a
   Numba-only training process pays. When temporaries are allocated per step (~5 MB at
   the default shapes; --no-workspace), glibc's adaptive malloc hands them back to the OS
   each step and every step page-faults them in again; page faults per step are reported.
3. glibc malloc is pinned (``mallopt``: fixed mmap and trim thresholds; ``--malloc glibc``
   leaves it alone) so that both implementations get the same, deterministic allocator:
   otherwise torch's large frees raise glibc's adaptive thresholds and make the Numba
   step cheaper than in a process without torch.
4. Sanity check: the Numba weights are copied into the torch model; the first loss and
   gradient must agree (both sides compute the same function), else exit status 2.
5. Timed rounds: the two run in alternating blocks of steps (the order swaps every round)
   so that machine noise hits both alike; each block starts with a few untimed steps
   that absorb the cost of switching from one implementation to the other.

torch is optional and NOT a project dependency: without it the Numba figures are printed
alone. See bench/README.md for how to get torch in a separate virtualenv.

    python bench/train_step.py [--hidden 32 --steps 100 --batch 64 --repeats 300 --warmup 20]
"""

from __future__ import annotations

import os

# One thread for everyone, set before numpy / numba / torch are imported.
for _var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime as dt  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
from machine import (  # noqa: E402  (bench/ is the script's directory)
    cpu_model,
    git_revision,
    minor_faults,
    openblas_core,
    pin_malloc,
)

from detector.model import network  # noqa: E402
from detector.model.network import loss_and_grad  # noqa: E402
from detector.model.optim import Adam  # noqa: E402
from detector.model.params import LSTMParams, make_shape  # noqa: E402

# torch is imported by load_torch(), after the Numba-only phase.
torch: Any = None
nn: Any = None
F: Any = None

GOAL = 1.0  # from the issue: numba / torch <= 1.0
LOSS_RTOL = 1e-5  # first loss, numba vs torch, same weights
GRAD_RTOL = 1e-4  # first gradient: max |diff| <= GRAD_RTOL * max |grad|
TRAJ_RTOL = 1e-3  # losses over the first few full steps (informational, looser)


def load_torch() -> str | None:
    """Import torch into the module globals; return why not, or None on success."""
    global torch, nn, F
    # torch is optional. A broken install fails in other ways than ImportError: a CUDA
    # wheel without its nvidia-* libraries raises ValueError or OSError while importing.
    try:
        import torch as _torch
        from torch import nn as _nn
        from torch.nn import functional as _functional
    except (ImportError, OSError, ValueError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    torch, nn, F = _torch, _nn, _functional
    return None


# --------------------------------------------------------------------------- data


def make_batch(T: int, B: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy sines, one per sequence; x (T, B, 1), target = x shifted one step ahead."""
    rng = np.random.default_rng(seed + 1)
    t = np.arange(T + 1, dtype=np.float64)[:, None]
    period = rng.uniform(10.0, 40.0, size=(1, B))
    phase = rng.uniform(0.0, 2 * np.pi, size=(1, B))
    seq = np.sin(2 * np.pi * t / period + phase) + 0.1 * rng.standard_normal((T + 1, B))
    seq = seq[:, :, None].astype(np.float32)
    return np.ascontiguousarray(seq[:-1]), np.ascontiguousarray(seq[1:])


# --------------------------------------------------------------------------- numba side


HAS_WORKSPACE = hasattr(network, "Workspace")  # reusable forward/backward buffers


class NumbaStep:
    """One training step as detector.model.train does it: with a reusable workspace when
    the network module has one (and use_workspace), else allocating per call."""

    def __init__(
        self,
        params: LSTMParams,
        x: np.ndarray,
        target: np.ndarray,
        args: Any,
        use_workspace: bool = True,
    ) -> None:
        self.params = params
        self.opt = Adam(params, lr=args.lr, clip_norm=args.clip, weight_decay=args.weight_decay)
        self.x, self.target = x, target
        self.grad = np.empty_like(params.theta)
        self.kwargs: dict[str, Any] = {}
        if use_workspace and HAS_WORKSPACE:
            T, B = x.shape[:2]
            self.kwargs["workspace"] = network.Workspace.allocate(params, T, B)

    def __call__(self) -> float:
        loss, _ = loss_and_grad(self.params, self.x, self.target, 0, self.grad, **self.kwargs)
        self.opt.update(self.grad)
        return loss


# --------------------------------------------------------------------------- torch side


def make_torch_model(params: LSTMParams) -> Any:
    """nn.LSTM + nn.Linear holding exactly the weights in ``params`` (1 layer, no hidden
    head layer). Gate order i, f, g, o is the same in both; our row-vector W (D, 4H) and
    U (H, 4H) are torch's weight_ih_l0 / weight_hh_l0 transposed; torch's two biases sum,
    so ours goes into bias_ih_l0 and bias_hh_l0 is zero; V2 (H, D_out) = linear.weight.T."""
    shape = params.shape
    assert shape.layers == 1 and shape.head_hidden == 0 and not shape.residual

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(shape.n_inputs, shape.hidden)  # time-major (T, B, D)
            self.head = nn.Linear(shape.hidden, shape.n_outputs)

        def forward(self, x: Any) -> Any:
            out, _ = self.lstm(x)
            return self.head(out)

    net = Net()
    t = params.tensors()
    with torch.no_grad():
        net.lstm.weight_ih_l0.copy_(torch.from_numpy(t["layer0.W"].T.copy()))
        net.lstm.weight_hh_l0.copy_(torch.from_numpy(t["layer0.U"].T.copy()))
        net.lstm.bias_ih_l0.copy_(torch.from_numpy(t["layer0.b"].copy()))
        net.lstm.bias_hh_l0.zero_()
        net.head.weight.copy_(torch.from_numpy(t["head.V2"].T.copy()))
        net.head.bias.copy_(torch.from_numpy(t["head.a2"].copy()))
    return net


def torch_grad_as_theta(net: Any, params: LSTMParams) -> np.ndarray:
    """The torch gradient in our flat layout (bias: bias_ih + bias_hh, as both add)."""
    g = np.zeros_like(params.theta)
    view = LSTMParams(params.shape, g).tensors()
    lstm = net.lstm
    view["layer0.W"][:] = lstm.weight_ih_l0.grad.numpy().T
    view["layer0.U"][:] = lstm.weight_hh_l0.grad.numpy().T
    view["layer0.b"][:] = lstm.bias_ih_l0.grad.numpy()
    view["head.V2"][:] = net.head.weight.grad.numpy().T
    view["head.a2"][:] = net.head.bias.grad.numpy()
    return g


class TorchStep:
    def __init__(self, net: Any, x: np.ndarray, target: np.ndarray, args: Any) -> None:
        self.net = net
        self.params = [p for p in net.parameters() if p.requires_grad]
        if args.weight_decay > 0:  # AdamW, decaying the weight matrices only (as ours does)
            groups = [
                {
                    "params": [p for p in self.params if p.ndim == 2],
                    "weight_decay": args.weight_decay,
                },
                {"params": [p for p in self.params if p.ndim < 2], "weight_decay": 0.0},
            ]
            self.opt = torch.optim.AdamW(groups, lr=args.lr)
        else:
            self.opt = torch.optim.Adam(self.params, lr=args.lr)
        self.clip = args.clip
        self.x = torch.from_numpy(x)
        self.target = torch.from_numpy(target)

    def __call__(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(self.net(self.x), self.target)
        loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        return float(loss.item())


# --------------------------------------------------------------------------- sanity check


def sanity_check(
    params0: LSTMParams, x: np.ndarray, target: np.ndarray, args: Any
) -> dict[str, Any]:
    """Same weights on both sides: first loss and gradient must match; then a few full
    steps (clip + Adam) with torch's redundant bias_hh frozen, so that both optimise the
    same parameter set, should track each other."""
    p = params0.copy()
    loss_n, grad_n = loss_and_grad(p, x, target, 0, np.empty_like(p.theta))
    net = make_torch_model(params0)
    loss_t_tensor = F.mse_loss(net(torch.from_numpy(x)), torch.from_numpy(target))
    loss_t_tensor.backward()
    loss_t = float(loss_t_tensor.item())
    grad_t = torch_grad_as_theta(net, params0)
    loss_rel = abs(loss_n - loss_t) / max(abs(loss_t), 1e-12)
    grad_rel = float(np.max(np.abs(grad_n - grad_t)) / max(float(np.max(np.abs(grad_t))), 1e-30))

    # A few full training steps on fresh copies.
    n_steps = 5
    p = params0.copy()
    numba_step = NumbaStep(p, x, target, args)
    net = make_torch_model(params0)
    net.lstm.bias_hh_l0.requires_grad_(False)
    torch_step = TorchStep(net, x, target, args)
    traj_n = [numba_step() for _ in range(n_steps)]
    traj_t = [torch_step() for _ in range(n_steps)]
    traj_rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(traj_n, traj_t, strict=True))

    return {
        "loss_numba": loss_n,
        "loss_torch": loss_t,
        "loss_rel_diff": loss_rel,
        "grad_rel_diff": grad_rel,
        "traj_losses_numba": traj_n,
        "traj_losses_torch": traj_t,
        "traj_rel_diff": traj_rel,
        "passed": bool(loss_rel <= LOSS_RTOL and grad_rel <= GRAD_RTOL),
        "traj_ok": bool(traj_rel <= TRAJ_RTOL),
    }


# --------------------------------------------------------------------------- timing


class Timings:
    """Per-step wall times (seconds) and minor page faults of one implementation."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.faults = 0

    def stats(self) -> dict[str, float]:
        a = np.asarray(self.times) * 1e3
        return {
            "n": int(a.size),
            "median_ms": float(np.median(a)),
            "p10_ms": float(np.percentile(a, 10)),
            "p90_ms": float(np.percentile(a, 90)),
            "mean_ms": float(a.mean()),
            "min_ms": float(a.min()),
            "faults_per_step": self.faults / a.size,
        }


def timed_block(step: Callable[[], float], n: int, out: Timings, lead_in: int = 0) -> None:
    """Run lead_in untimed steps, then n timed ones, recording each one's wall time and the
    block's minor page faults in out; gc is off inside the block. The lead-in absorbs the
    cost of switching implementations (cold caches, allocator state left by the other),
    which a real training loop, running one implementation only, does not pay."""
    gc.collect()
    gc.disable()
    try:
        for _ in range(lead_in):
            step()
        f0 = minor_faults()
        for _ in range(n):
            t0 = time.perf_counter()
            step()
            out.times.append(time.perf_counter() - t0)
        out.faults += minor_faults() - f0
    finally:
        gc.enable()


# --------------------------------------------------------------------------- context


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=32, help="LSTM hidden size H (default 32)")
    ap.add_argument("--steps", type=int, default=100, help="sequence length T (default 100)")
    ap.add_argument("--batch", type=int, default=64, help="batch size B (default 64)")
    ap.add_argument(
        "--repeats", type=int, default=300, help="timed steps per implementation (default 300)"
    )
    ap.add_argument(
        "--warmup", type=int, default=20, help="untimed steps per implementation first (default 20)"
    )
    ap.add_argument(
        "--block",
        type=int,
        default=20,
        help="timed steps per implementation per round (default 20)",
    )
    ap.add_argument(
        "--block-warmup",
        type=int,
        default=2,
        help="untimed steps at the start of every block, after switching (default 2)",
    )
    ap.add_argument(
        "--alone-steps",
        type=int,
        default=40,
        help="timed Numba steps with the untouched allocator, before torch (default 40; 0: skip)",
    )
    ap.add_argument(
        "--malloc",
        choices=("pinned", "glibc"),
        default="pinned",
        help="allocator for the interleaved rounds: pinned thresholds (default) or glibc as is",
    )
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--clip", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    ap.add_argument(
        "--weight-decay", type=float, default=0.0, help="AdamW decay of the weight matrices"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-torch", action="store_true", help="time the Numba step only")
    ap.add_argument(
        "--no-workspace",
        action="store_true",
        help="numba: let loss_and_grad allocate its buffers per call instead of reusing them",
    )
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the figures to FILE")
    args = ap.parse_args(argv)
    for name in ("hidden", "steps", "batch", "repeats", "block", "warmup"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("block_warmup", "alone_steps"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must be 0 or more")
    return args


def print_table(rows: list[tuple[str, dict[str, float]]]) -> None:
    heads = ("n", "median", "p10", "p90", "mean", "min")
    print(
        f"{'':<24} {heads[0]:>5}"
        + "".join(f" {h:>8}" for h in heads[1:])
        + f" {'faults':>7}   (ms/step; minor page faults/step)"
    )
    for name, s in rows:
        print(
            f"{name:<24} {s['n']:>5} {s['median_ms']:>8.3f} {s['p10_ms']:>8.3f} {s['p90_ms']:>8.3f}"
            f" {s['mean_ms']:>8.3f} {s['min_ms']:>8.3f} {s['faults_per_step']:>7.0f}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    H, T, B = args.hidden, args.steps, args.batch
    label = f"train_step H={H} T={T} B={B}"
    started = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()
    shape = make_shape(n_inputs=1, n_outputs=1, hidden=H, layers=1, residual=False)
    params0 = LSTMParams.init(shape, np.random.default_rng(args.seed), dtype=np.float32)
    x, target = make_batch(T, B, args.seed)

    # 1. Numba warm-up; 2. Numba alone, allocator untouched, torch not imported yet.
    numba_step = NumbaStep(params0.copy(), x, target, args, not args.no_workspace)
    if numba_step.kwargs:
        numba_path = "loss_and_grad with a reusable Workspace (as train.py)"
    elif HAS_WORKSPACE:
        numba_path = "loss_and_grad allocating per call (--no-workspace)"
    else:
        numba_path = "loss_and_grad allocating per call (no network.Workspace in this revision)"
    t0 = time.perf_counter()
    numba_step()
    first_call_s = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        numba_step()
    alone = Timings()
    if args.alone_steps:
        timed_block(numba_step, args.alone_steps, alone)

    torch_error = "--no-torch" if args.no_torch else load_torch()
    use_torch = torch_error is None
    if use_torch:
        torch.set_num_threads(1)
        # Raises if already set or parallel work has started; one thread is what matters.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
    malloc = pin_malloc() if args.malloc == "pinned" else "glibc as is (adaptive thresholds)"

    print(
        f"{label}, float32, 1 thread | numpy {np.__version__}, numba {numba.__version__}, "
        + (f"torch {torch.__version__}" if use_torch else "no torch")
        + f" | git {git_revision()} | {cpu_model()} | load {load_start[0]:.2f}"
        + f" | OpenBLAS core {openblas_core()}"
    )
    if not use_torch:
        print(f"torch not measured ({torch_error}); timing the Numba step alone.")
        if not args.no_torch:
            print("  (to compare, install torch in a separate virtualenv: see bench/README.md)")
    print(f"numba step: {numba_path}; malloc for the timed rounds: {malloc}")

    # 4. Sanity check, torch warm-up.
    check: dict[str, Any] | None = None
    torch_step: TorchStep | None = None
    if use_torch:
        check = sanity_check(params0, x, target, args)
        verdict = "PASS" if check["passed"] else "FAIL"
        print(
            f"sanity (same weights): loss numba {check['loss_numba']:.7f} torch "
            f"{check['loss_torch']:.7f} rel diff {check['loss_rel_diff']:.1e} "
            f"(tol {LOSS_RTOL:.0e}); grad max rel diff {check['grad_rel_diff']:.1e} "
            f"(tol {GRAD_RTOL:.0e}); 5 full steps rel diff {check['traj_rel_diff']:.1e} "
            f"-> {verdict}"
        )
        if not check["passed"]:
            print("sanity check FAILED: numba and torch do not compute the same loss/gradient.")
            return 2
        torch_step = TorchStep(make_torch_model(params0), x, target, args)
        for _ in range(args.warmup):
            torch_step()

    # 5. Timed rounds: alternate blocks, swapping which goes first every round.
    tim_n, tim_t = Timings(), Timings()
    round_ratios: list[float] = []
    n_rounds = -(-args.repeats // args.block)
    for r in range(n_rounds):
        n = min(args.block, args.repeats - r * args.block)
        i_n, i_t = len(tim_n.times), len(tim_t.times)
        order: list[tuple[Callable[[], float] | None, Timings]] = [
            (numba_step, tim_n),
            (torch_step, tim_t),
        ]
        if r % 2:
            order.reverse()
        for step, out in order:
            if step is not None:
                timed_block(step, n, out, args.block_warmup)
        if torch_step is not None:
            round_ratios.append(float(np.median(tim_n.times[i_n:]) / np.median(tim_t.times[i_t:])))
    load_end = os.getloadavg()

    s_n = tim_n.stats()
    s_t = tim_t.stats() if tim_t.times else None
    s_alone = alone.stats() if alone.times else None
    rows = [("numba", s_n)] + ([("torch", s_t)] if s_t else [])
    if s_alone:
        rows.append(("numba, malloc untouched", s_alone))
    print_table(rows)
    print(
        f"numba first call (compile or cache load) {first_call_s:.2f} s; {n_rounds} rounds of "
        f"{args.block_warmup} untimed + {args.block} timed steps each; "
        f"load avg {load_start[0]:.2f} -> {load_end[0]:.2f}"
    )
    if s_alone:
        print(
            f"'numba, malloc untouched': {args.alone_steps} steps before torch was imported or "
            "malloc pinned, as in a Numba-only training process."
        )

    result: dict[str, Any] = {
        "benchmark": "train_step",
        "started_utc": started.isoformat(timespec="seconds"),
        "config": {
            "hidden": H,
            "steps": T,
            "batch": B,
            "n_inputs": 1,
            "n_outputs": 1,
            "dtype": "float32",
            "threads": 1,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "block": args.block,
            "block_warmup": args.block_warmup,
            "alone_steps": args.alone_steps,
            "malloc": malloc,
            "numba_path": numba_path,
            "lr": args.lr,
            "clip": args.clip,
            "weight_decay": args.weight_decay,
            "seed": args.seed,
        },
        "env": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "numba": numba.__version__,
            "torch": torch.__version__ if use_torch else None,
            "torch_error": torch_error,
            "git": git_revision(),
            "cpu": cpu_model(),
            "openblas_core": openblas_core(),
            "cpus": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        },
        "numba": s_n,
        "numba_malloc_untouched": s_alone,
        "numba_first_call_s": first_call_s,
        "torch": s_t,
        "sanity": check,
        "ratio": None,
        "ratio_malloc_untouched": None,
        "goal": GOAL,
    }
    if s_t is not None:
        ratio = s_n["median_ms"] / s_t["median_ms"]
        rr = np.asarray(round_ratios)
        result["ratio"] = ratio
        result["round_ratio"] = {
            "median": float(np.median(rr)),
            "p10": float(np.percentile(rr, 10)),
            "p90": float(np.percentile(rr, 90)),
        }
        print(
            f"per-round ratio numba/torch: median {np.median(rr):.2f}, "
            f"p10-p90 {np.percentile(rr, 10):.2f}-{np.percentile(rr, 90):.2f}"
        )
        tail = ""
        if s_alone:
            result["ratio_malloc_untouched"] = s_alone["median_ms"] / s_t["median_ms"]
            tail = (
                f"; numba with malloc untouched {s_alone['median_ms']:.2f} ms, "
                f"ratio {result['ratio_malloc_untouched']:.2f}"
            )
        met = "met" if ratio <= GOAL else "NOT met"
        print(
            f"{label}: numba {s_n['median_ms']:.2f} ms, torch {s_t['median_ms']:.2f} ms, "
            f"ratio numba/torch {ratio:.2f} (goal <= {GOAL:.1f}: {met}){tail}"
        )
    else:
        tail = f"; with malloc untouched {s_alone['median_ms']:.2f} ms" if s_alone else ""
        print(f"{label}: numba {s_n['median_ms']:.2f} ms (torch not measured){tail}")

    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
