"""Calibration observers: they watch activations and propose a clipping range.

``min_max`` takes the extremes seen; ``percentile`` clips at a percentile of |x| (robust
to a few outliers, e.g. 99.975); ``mse`` picks the clipping threshold that minimizes the
expected quantization error (rounding inside, clipping outside). The last two work on
a histogram of |x| kept in fixed-size buffers. Observer buffers are not persistent:
what calibration leaves behind is the quantizer's scale, so checkpoints of models
calibrated with different observers have the same keys.

Symmetric activations (range [-t, t]) and those right after a ReLU ([0, t]) need only a
threshold t (:meth:`Observer.threshold`). Asymmetric ones (``activation_symmetry:
asymmetric``, see :mod:`hat.quant.qconfig`) need both ends, [lo, hi] with lo <= 0 <= hi
(:meth:`Observer.range`): the histograms keep the negative side apart from the positive
one for that, so every observer can clip each end on its own.
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

    def range(self, levels: float = 255.0) -> tuple[float, float]:
        """The clipping range [lo, hi] of an asymmetric grid; it always holds 0.0.

        0.0 must be a code (ONNX pads with the zero point, and a ReLU's zeros must stay
        exact), so a range seen only on one side of 0 is stretched to reach it.
        ``levels``: grid steps from lo to hi (255 at 8 bits).
        """
        if not self.has_data:
            return 0.0, 0.0
        return min(float(self.min_val), 0.0), max(float(self.max_val), 0.0)


class MinMaxObserver(Observer):
    """The extremes seen over all calibration batches."""


class _HistogramObserver(Observer):
    """A histogram of |x| (or of x > 0 for unsigned ranges) over [0, hist_max], and one of
    -x for x < 0 (the negative side, for asymmetric ranges).

    When a batch exceeds the current upper edge, the histogram is re-binned into a
    range twice as wide as needed, so re-binning happens a few times, not per batch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("hist_abs", torch.zeros(NUM_BINS, dtype=torch.float64), persistent=False)
        self.register_buffer("hist_pos", torch.zeros(NUM_BINS, dtype=torch.float64), persistent=False)
        self.register_buffer("hist_neg", torch.zeros(NUM_BINS, dtype=torch.float64), persistent=False)
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
        negative = x[x < 0]
        if negative.numel():
            self.hist_neg += torch.histc(-negative, bins=NUM_BINS, min=0.0, max=edge).double()

    def _rebin(self, new_max: float) -> None:
        old_max = float(self.hist_max)
        if old_max > 0:
            # Move each old bin's count to the new bin that holds its centre.
            centres = (torch.arange(NUM_BINS, dtype=torch.float64, device=self.hist_abs.device) + 0.5) * (
                old_max / NUM_BINS
            )
            index = (centres / new_max * NUM_BINS).long().clamp(max=NUM_BINS - 1)
            for name in ("hist_abs", "hist_pos", "hist_neg"):
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

    def _sides(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(negative-side histogram of -x, positive-side histogram of x, count of exact zeros), on the CPU."""
        neg, pos = self.hist_neg.cpu(), self.hist_pos.cpu()
        zeros = max(float(self.hist_abs.sum()) - float(neg.sum()) - float(pos.sum()), 0.0)
        return neg, pos, zeros


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

    def range(self, levels: float = 255.0) -> tuple[float, float]:
        """Each end clipped at half the tail the symmetric threshold clips: (100 - p) / 2 percent
        of all values lie below lo and as many above hi (onnxruntime's asymmetric percentile)."""
        lo, hi = super().range(levels)
        neg, pos, zeros = self._sides()
        total = float(neg.sum()) + float(pos.sum()) + zeros
        if total == 0:
            return lo, hi
        allowed = total * (100.0 - self.percentile) / 200.0
        edges = self._edges().cpu()
        return -min(_tail_cut(neg, edges, allowed), -lo), min(_tail_cut(pos, edges, allowed), hi)


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

    def range(self, levels: float = 255.0) -> tuple[float, float]:
        """The [lo, hi] minimizing the same expected error, each end searched on its own grid.

        With step s = (hi - lo) / levels, values inside cost s^2 / 12 and values beyond an end
        cost their squared distance to it. Candidates: ``num_candidates`` evenly spaced
        ends on each side (only 0 on a side that saw nothing), every pair tried at once.
        """
        lo, hi = super().range(levels)
        neg, pos, zeros = self._sides()
        if float(neg.sum()) + float(pos.sum()) == 0 or hi - lo <= 0:
            return lo, hi
        width = float(self.hist_max) / NUM_BINS
        centres = (torch.arange(NUM_BINS, dtype=torch.float64) + 0.5) * width
        total = float(neg.sum()) + float(pos.sum()) + zeros
        ends, errors = [], []
        for hist, extreme in ((neg, -lo), (pos, hi)):
            if extreme <= 0:
                cand = torch.zeros(1, dtype=torch.float64)
            else:
                cand = torch.linspace(extreme / self.num_candidates, extreme, self.num_candidates, dtype=torch.float64)
            beyond = centres[None, :] > cand[:, None]  # [candidates, bins]
            clipped = (hist[None, :] * beyond).sum(1)
            cost = (hist[None, :] * beyond * (centres[None, :] - cand[:, None]) ** 2).sum(1)
            ends.append(cand)
            errors.append((clipped, cost))
        (neg_end, pos_end), ((neg_out, neg_cost), (pos_out, pos_cost)) = ends, errors
        step = (neg_end[:, None] + pos_end[None, :]) / levels
        inside = total - neg_out[:, None] - pos_out[None, :]
        error = inside * step**2 / 12.0 + neg_cost[:, None] + pos_cost[None, :]
        i, j = divmod(int(torch.argmin(error)), error.shape[1])
        return -float(neg_end[i]), float(pos_end[j])


def _tail_cut(hist: torch.Tensor, edges: torch.Tensor, allowed: float) -> float:
    """The smallest bin edge with at most ``allowed`` counts of ``hist`` beyond it (0.0 for an empty side)."""
    if float(hist.sum()) == 0:
        return 0.0
    beyond = hist.flip(0).cumsum(0).flip(0) - hist  # counts in the bins above each bin
    index = int(torch.nonzero(beyond <= allowed)[0])
    return float(edges[index])


OBSERVERS = {"min_max": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver}


def make_observer(name: str, **kwargs: float) -> Observer:
    """``activation_calibration_observer`` (+ its qkwargs) -> an observer."""
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; choose one of {', '.join(OBSERVERS)}")
    return OBSERVERS[name](**kwargs)
