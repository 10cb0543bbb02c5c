"""Image fidelity metrics (numpy only): PSNR, SSIM, max-abs error."""

from __future__ import annotations

import numpy as np

PSNR_CAP_DB = 200.0  # reported for identical outputs, so reports stay finite JSON numbers


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute element difference."""
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB for values spanning data_range; capped at PSNR_CAP_DB."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse <= (data_range * 10 ** (-PSNR_CAP_DB / 20)) ** 2:
        return PSNR_CAP_DB
    return float(10 * np.log10(data_range ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float, win: int = 7) -> float:
    """Mean structural similarity over NCHW (or CHW) images with a uniform window, as Wang et al. 2004
    and scikit-image's defaults (K1=0.01, K2=0.03, sample covariance)."""
    a = a.astype(np.float64).reshape(-1, *a.shape[-2:])
    b = b.astype(np.float64).reshape(-1, *b.shape[-2:])
    win = min(win, *a.shape[-2:])
    win -= 1 - win % 2
    if win < 1:
        return 1.0 if np.array_equal(a, b) else 0.0

    def mean(x):
        return np.lib.stride_tricks.sliding_window_view(x, (win, win), axis=(1, 2)).mean(axis=(-1, -2))

    n = win * win
    cov = n / (n - 1) if n > 1 else 1.0
    ma, mb = mean(a), mean(b)
    va = (mean(a * a) - ma * ma) * cov
    vb = (mean(b * b) - mb * mb) * cov
    vab = (mean(a * b) - ma * mb) * cov
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ma * mb + c1) * (2 * vab + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return float(s.mean())


def value_range(declared: list[float] | None, reference: np.ndarray) -> float:
    """The span PSNR and SSIM measure against: the tensor's declared range, widened to what the
    reference actually spans (an unbounded output whose range was only assumed)."""
    spread = float(np.ptp(reference)) if reference.size else 0.0
    width = declared[1] - declared[0] if declared else 0.0
    return max(width, spread) or 1.0


def compare(reference: np.ndarray, actual: np.ndarray, data_range: float) -> dict[str, float]:
    """PSNR, SSIM (for image-shaped tensors) and max-abs of actual against reference."""
    report = {"psnr_db": round(psnr(reference, actual, data_range), 3), "max_abs": max_abs(reference, actual)}
    if reference.ndim >= 3:
        report["ssim"] = round(ssim(reference, actual, data_range), 6)
    return report


def quality_outputs(outputs: list) -> list:
    """The outputs PSNR and SSIM are measured on: the image outputs, or every output of a model that has
    none. A score or feature output beside an image has no pixel range; over its own spread on a few
    held-out inputs (a sigmoid score varies by 1e-4) its PSNR says nothing about the images. Its max-abs
    is still reported."""
    images = [s for s in outputs if s.role == "image"]
    return images or list(outputs)
