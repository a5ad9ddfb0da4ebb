"""Calibration observers: they watch activations and propose a clipping range.

``min_max`` takes the extremes seen; ``percentile`` clips at a percentile of |x| (robust
to a few outliers, e.g. 99.975); ``mse`` picks the clipping threshold that minimizes the
expected quantization error (rounding inside, clipping outside). The last two work on
a histogram of |x| kept in fixed-size buffers. Observer buffers are not persistent:
what calibration leaves behind is the quantizer's scale, so checkpoints of models
calibrated with different observers have the same keys.

Only magnitudes matter: activations are quantized symmetrically (range [-t, t]) or,
right after a ReLU, over [0, t]; either way the observer's job is the threshold t.
"""

from __future__ import annotations

import torch

#: Histogram resolution; 2048 bins resolve a 1/255 step of the final range 8x over.
NUM_BINS = 2048


class Observer(torch.nn.Module):
    """Accumulates statistics of what it sees; ``threshold()`` proposes the range."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("min_val", torch.tensor(float("inf")), persistent=False)
        self.register_buffer("max_val", torch.tensor(float("-inf")), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float()
        if x.numel():
            self.min_val.copy_(torch.minimum(self.min_val, x.min()))
            self.max_val.copy_(torch.maximum(self.max_val, x.max()))
            self._observe(x)
        return x

    def _observe(self, x: torch.Tensor) -> None:
        """Subclasses keep more than the extremes."""

    @property
    def has_data(self) -> bool:
        return bool(torch.isfinite(self.max_val))

    def threshold(self, unsigned: bool, levels: float | None = None) -> float:
        """The clipping threshold t: range [-t, t], or [0, t] when ``unsigned``.

        ``levels``: grid steps from 0 to t (127 / 255 at 8 bits, 32767 / 65535 at 16); only
        observers that weigh rounding against clipping use it.
        """
        if not self.has_data:
            return 0.0
        if unsigned:
            return max(float(self.max_val), 0.0)
        return max(abs(float(self.min_val)), abs(float(self.max_val)))


class MinMaxObserver(Observer):
    """The extremes seen over all calibration batches."""


class _HistogramObserver(Observer):
    """A histogram of |x| (or of x > 0 for unsigned ranges) over [0, hist_max].

    When a batch exceeds the current upper edge, the histogram is re-binned into a
    range twice as wide as needed, so re-binning happens a few times, not per batch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("hist_abs", torch.zeros(NUM_BINS, dtype=torch.float64), persistent=False)
        self.register_buffer("hist_pos", torch.zeros(NUM_BINS, dtype=torch.float64), persistent=False)
        self.register_buffer("hist_max", torch.tensor(0.0), persistent=False)

    def _observe(self, x: torch.Tensor) -> None:
        top = float(x.abs().max())
        if top > float(self.hist_max):
            self._rebin(max(top * 2.0, 1e-8))
        edge = float(self.hist_max)
        self.hist_abs += torch.histc(x.abs(), bins=NUM_BINS, min=0.0, max=edge).double()
        positive = x[x > 0]
        if positive.numel():
            self.hist_pos += torch.histc(positive, bins=NUM_BINS, min=0.0, max=edge).double()

    def _rebin(self, new_max: float) -> None:
        old_max = float(self.hist_max)
        if old_max > 0:
            # Move each old bin's count to the new bin that holds its centre.
            centres = (torch.arange(NUM_BINS, dtype=torch.float64, device=self.hist_abs.device) + 0.5) * (
                old_max / NUM_BINS
            )
            index = (centres / new_max * NUM_BINS).long().clamp(max=NUM_BINS - 1)
            for name in ("hist_abs", "hist_pos"):
                old = getattr(self, name)
                fresh = torch.zeros_like(old)
                fresh.index_add_(0, index, old)
                old.copy_(fresh)
        self.hist_max.fill_(new_max)

    def _hist(self, unsigned: bool) -> torch.Tensor:
        return self.hist_pos if unsigned else self.hist_abs

    def _edges(self) -> torch.Tensor:
        """Upper edge of every bin."""
        return (torch.arange(1, NUM_BINS + 1, dtype=torch.float64, device=self.hist_abs.device)) * (
            float(self.hist_max) / NUM_BINS
        )


class PercentileObserver(_HistogramObserver):
    """Clip at the given percentile of |x| (of x > 0 for unsigned ranges)."""

    def __init__(self, percentile: float = 99.99) -> None:
        super().__init__()
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        self.percentile = float(percentile)

    def threshold(self, unsigned: bool, levels: float | None = None) -> float:
        hist = self._hist(unsigned)
        total = float(hist.sum())
        if total == 0:
            return super().threshold(unsigned)
        cdf = torch.cumsum(hist, 0) / total
        target = torch.tensor([self.percentile / 100.0], dtype=torch.float64, device=cdf.device)
        index = int(torch.searchsorted(cdf, target))
        index = min(index, NUM_BINS - 1)
        exact = super().threshold(unsigned)
        return min(float(self._edges()[index]), exact)


class MSEObserver(_HistogramObserver):
    """The threshold minimizing expected squared quantization error over the histogram.

    For a candidate t with step s = t / levels: values below t cost s^2 / 12 (uniform
    rounding error), values above cost (x - t)^2 (clipping). Candidates are 200 evenly
    spaced thresholds up to the largest value seen.
    """

    def __init__(self, num_candidates: int = 200) -> None:
        super().__init__()
        self.num_candidates = num_candidates

    def threshold(self, unsigned: bool, levels: float | None = None) -> float:
        hist = self._hist(unsigned)
        exact = super().threshold(unsigned)
        if float(hist.sum()) == 0 or exact <= 0:
            return exact
        width = float(self.hist_max) / NUM_BINS
        hist = hist.cpu()  # 2048 bins x 200 candidates: cheap on the CPU, and one device for all
        centres = (torch.arange(NUM_BINS, dtype=torch.float64) + 0.5) * width
        levels = levels or (255.0 if unsigned else 127.0)
        candidates = torch.linspace(exact / self.num_candidates, exact, self.num_candidates, dtype=torch.float64)
        best, best_error = exact, float("inf")
        for t in candidates.tolist():
            step = t / levels
            inside = centres <= t
            error = float(
                (hist[inside]).sum() * step * step / 12.0 + (hist[~inside] * (centres[~inside] - t) ** 2).sum()
            )
            if error < best_error:
                best, best_error = t, error
        return best


OBSERVERS = {"min_max": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver}


def make_observer(name: str, **kwargs: float) -> Observer:
    """``activation_calibration_observer`` (+ its qkwargs) -> an observer."""
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; choose one of {', '.join(OBSERVERS)}")
    return OBSERVERS[name](**kwargs)
