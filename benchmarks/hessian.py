"""Top-5 Hessian eigenvalues: calibscope's Lanczos vs PyHessian-style power iteration, side by side in one run.

Model: a CIFAR-style ResNet-18 (BatchNorm in eval mode), random weights, random CIFAR-size images; the loss is
the mean cross-entropy over one batch of ``--n`` examples. Prints

* time per Hessian-vector product / time per forward+backward on the same batch (target ≤ 4);
* calibscope (Lanczos with full reorthogonalisation, ``tol`` 1e-4 on every Ritz residual): HVPs, time, and the
  largest relative error of λ1..λ5 against a long, tight reference run (Lanczos, tol 1e-9);
* PyHessian's published algorithm (Yao et al. 2020, ``hessian.eigenvalues``: power iteration per eigenvalue,
  deflated by orthogonalising against the ones found, stop when the Rayleigh quotient changes by less than
  ``tol`` 1e-3 relative, at most 100 iterations each): HVPs, time, largest relative error;
* the ratios power iteration / calibscope;
* the real packages on the same model and batch (each skipped with a line when not installed): PyHessian 0.1's
  time per HVP and its total time to top-5 at its default tol 1e-3 vs calibscope's at 1e-4, each with its
  largest relative error against the reference; hessian-eigenthings' Lanczos likewise.

Runs on CUDA when present (ResNet-18 at full width, 32×32, batch 256) and always on CPU (small sizes).

    python benchmarks/hessian.py                  # CPU, and CUDA if available
    python benchmarks/hessian.py --device cuda --n 256 --width 64 --image 32
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from _shared import ResNet18
from _shared import best_time as _timed
from _shared import sync as _sync

from calibscope.diagnostics.hessian import (
    HessianOperator,
    lanczos_top_eigenvalues,
    select_parameters,
    top_hessian_eigenvalues,
)


def power_iteration_top(op: HessianOperator, k: int, *, tol: float = 1e-3, max_iter: int = 100, seed: int = 0):
    """PyHessian's ``hessian.eigenvalues(maxIter=100, tol=1e-3, top_n=k)``, on flat vectors."""
    gen = torch.Generator().manual_seed(seed)
    eigenvalues, eigenvectors, n_hvp = [], [], 0
    for _ in range(k):
        v = torch.randn(op.dim, generator=gen).to(op.device, op.dtype)
        v /= v.norm()
        eigenvalue = None
        for _ in range(max_iter):
            for u in eigenvectors:  # orthnormal(v, eigenvectors)
                v -= torch.dot(v, u) * u
            v /= v.norm()
            hv = op.hvp(v)
            n_hvp += 1
            tmp = float(torch.dot(hv, v))
            v = hv / (hv.norm() + 1e-6)
            if eigenvalue is not None and abs(eigenvalue - tmp) / (abs(eigenvalue) + 1e-6) < tol:
                eigenvalue = tmp
                break
            eigenvalue = tmp
        eigenvalues.append(eigenvalue)
        eigenvectors.append(v)
    return eigenvalues, n_hvp


def run(device: torch.device, *, n: int, batch_size: int, width: int, image: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = ResNet18(width=width).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, image, image), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=gen)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    matmul_tf32, cudnn_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # as calibscope does
    try:
        op = HessianOperator(model, images, labels, parameters=select_parameters(model), batch_size=batch_size,
                             mean=mean, std=std)
        name = f"ResNet-18 width {width}, {image}×{image}, {n} examples, batch {batch_size}"
        print(f"[{device}] {name}: {op.dim:,} parameters, HVP by {op.method}")

        x = ((images.to(device).float() / 255 - torch.tensor(mean, device=device).view(1, 3, 1, 1))
             / torch.tensor(std, device=device).view(1, 3, 1, 1))
        y = labels.to(device)
        params = [p for _, p in select_parameters(model)]

        def forward_backward():
            for s in range(0, n, batch_size):
                loss = F.cross_entropy(model(x[s:s + batch_size]), y[s:s + batch_size], reduction="sum") / n
                torch.autograd.grad(loss, params)

        v = torch.randn(op.dim, generator=gen).to(device)
        t_fb = _timed(forward_backward, device, repeats)
        t_hvp = _timed(lambda: op.hvp(v), device, repeats)
        print(f"[{device}] time per HVP / time per forward+backward: {t_hvp / t_fb:.2f} "
              f"(best of {repeats}: HVP {1e3 * t_hvp:.1f} ms, forward+backward {1e3 * t_fb:.1f} ms; target ≤ 4)")

        reference = lanczos_top_eigenvalues(op, op.dim, k=5, tol=1e-9, max_matvec=400, seed=123, device=device,
                                            dtype=op.dtype)
        ref = reference.eigenvalues
        print(f"[{device}] reference (Lanczos tol 1e-9, seed 123): λ1..λ5 = "
              f"{', '.join(f'{e:.6g}' for e in ref)} in {reference.n_matvec} HVPs "
              f"(converged: {reference.converged})")

        spectrum = top_hessian_eigenvalues(model, images, labels, top=5, tol=1e-4, examples=n,
                                           batch_size=batch_size, mean=mean, std=std)
        err_l = max(abs(a - b) / abs(b) for a, b in zip(spectrum.eigenvalues, ref, strict=True))
        print(f"[{device}] calibscope Lanczos, tol 1e-4:      {spectrum.n_hvp:4d} HVPs, {spectrum.seconds:8.2f} s, "
              f"max relative error of λ1..λ5 {err_l:.1e}")

        _sync(device)
        t0 = time.perf_counter()
        power, n_power = power_iteration_top(op, 5)
        _sync(device)
        t_power = time.perf_counter() - t0
        err_p = max(abs(a - b) / abs(b) for a, b in zip(power, ref, strict=True))
        print(f"[{device}] PyHessian power iteration, tol 1e-3: {n_power:4d} HVPs, {t_power:8.2f} s, "
              f"max relative error of λ1..λ5 {err_p:.1e} (λ = {', '.join(f'{e:.6g}' for e in power)})")
        print(f"[{device}] power iteration / calibscope: {n_power / spectrum.n_hvp:.1f}× the HVPs, "
              f"{t_power / spectrum.seconds:.1f}× the time")
        anchors(model, x, y, ref, device, repeats, lambda: op.hvp(v), spectrum)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32


def _interleaved(first, second, device, repeats) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of two functions timed alternately (after one warm-up call of each)."""
    first(), second()
    best = [math.inf, math.inf]
    for _ in range(repeats):
        for i, fn in enumerate((first, second)):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best[i] = min(best[i], time.perf_counter() - t0)
    return best[0], best[1]


def anchors(model, x, y, ref, device, repeats, ours, spectrum) -> None:
    """The real packages on the same model and batch: PyHessian (single-batch mode, power iteration, tol 1e-3)
    and hessian-eigenthings (Lanczos, tol 1e-4); each skipped with a line when not installed."""
    def rel_err(values):
        return max(abs(a - b) / abs(b) for a, b in zip(sorted(values, reverse=True), ref, strict=True))

    try:
        from pyhessian import hessian as pyhessian_hessian
        from pyhessian.utils import hessian_vector_product
    except ImportError:
        print(f"[{device}] PyHessian not installed (pip install --no-deps pyhessian==0.1): skipped")
    else:
        h = pyhessian_hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=device.type == "cuda")
        vs = [torch.randn_like(p) for p in h.params]
        # interleaved (ours, theirs, ours, …), best of each: both see the same machine state
        t_hvp, t_py = _interleaved(ours, lambda: hessian_vector_product(h.gradsH, h.params, vs), device, repeats)
        _sync(device)
        t0 = time.perf_counter()
        values, _ = h.eigenvalues(maxIter=100, tol=1e-3, top_n=5)
        _sync(device)
        t_top = time.perf_counter() - t0
        print(f"[{device}] PyHessian 0.1 (the package): {1e3 * t_py:.1f} ms per HVP, top-5 at tol 1e-3 in "
              f"{t_top:.2f} s, max relative error {rel_err(values):.1e}")
        print(f"[{device}] ratios: calibscope/PyHessian time per HVP {t_hvp / t_py:.2f}× (goal ≤ 1.1; interleaved, "
              f"best of {repeats}: {1e3 * t_hvp:.1f} vs {1e3 * t_py:.1f} ms), "
              f"time to top-5 calibscope (1e-4) / PyHessian (1e-3) {spectrum.seconds / t_top:.2f}× (goal < 1)")
        del h
    try:
        import hessian_eigenthings as he
    except ImportError:
        print(f"[{device}] hessian-eigenthings not installed (pip install hessian-eigenthings): skipped")
    else:
        op = he.HessianOperator(model, [(x, y)], he.supervised_loss(F.cross_entropy))
        v = torch.randn(op.size, device=device)
        t_hvp, t_he = _interleaved(ours, lambda: op.matvec(v), device, repeats)
        _sync(device)
        t0 = time.perf_counter()
        result = he.lanczos(op, k=5, tol=1e-4, which="LA", seed=0)
        _sync(device)
        t_top = time.perf_counter() - t0
        print(f"[{device}] hessian-eigenthings {he.__version__}: {1e3 * t_he:.1f} ms per HVP, top-5 Lanczos at "
              f"tol 1e-4 in {t_top:.2f} s, max relative error {rel_err(result.eigenvalues.tolist()):.1e}; "
              f"calibscope/eigenthings per HVP {t_hvp / t_he:.2f}×")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    ap.add_argument("--n", type=int, default=None, help="examples (default: 32 on CPU, 256 on CUDA)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: --n")
    ap.add_argument("--width", type=int, nargs="+", default=None,
                    help="ResNet width(s), one run each (default: 8 and 16 on CPU — the size of the sample model and "
                         "a larger one —, 64 on CUDA)")
    ap.add_argument("--image", type=int, default=None, help="image side (default: 16 on CPU, 32 on CUDA)")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats for the HVP / forward+backward ratio")
    args = ap.parse_args()
    devices = []
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if not devices:
        raise SystemExit("CUDA is not available here; use --device cpu")
    for device in devices:
        cuda = device.type == "cuda"
        n = args.n or (256 if cuda else 32)
        for width in args.width or ([64] if cuda else [8, 16]):
            run(device, n=n, batch_size=args.batch_size or n, width=width, image=args.image or (32 if cuda else 16),
                repeats=args.repeats)


if __name__ == "__main__":
    main()
