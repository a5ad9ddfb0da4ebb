"""Tracking a sequence frame by frame as deployed: graph 1, the tracker, graph 2, written once.

On the device MOTR is two int8 graphs with host code between them: graph 1 (image and
the carried track slots -> every slot's score, box, state and query), the tracker (which
slots start, keep or lose an identity), a gather of the surviving slots, and graph 2 (the
QIM: their states -> next frame's track queries). :class:`MotrSequenceRunner` is that
host code. It is handed a ``run_graph(name, feeds) -> outputs`` callable, so the very same
glue drives the torch model in every torch stage (``MotrModel`` in eval), the two ONNX
graphs in onnxruntime (``int_infer``, core's ``OnnxPredictor`` with ``chain``), and both
side by side in `hat validate`: a difference in MOTA between them is the graphs', never
the glue's.

It takes batches of one frame, in order: ``first_frame`` starts a sequence (the tracker
and the carried slots reset), any other frame must follow the previous one of the same
sequence. Validation therefore runs on one process with an unshuffled loader of batch 1
(a sequence split over ranks would lose its tracks at every frame).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from hat.errors import UserError
from hat.registry import register_type
from hat_motr.model.motr import gather_slots
from hat_motr.tracker import MotTracker, normalized_cxcywh_to_xyxy, to_original

#: The graph names the runner calls: core's main deploy graph and the QIM graph.
DETECT_GRAPH = "model"
QIM_GRAPH = "qim"

RunGraph = Callable[[str, dict[str, torch.Tensor]], Mapping[str, torch.Tensor]]


def _first(value: Any) -> Any:
    """Entry 0 of a batch value (a list, a tensor or a scalar)."""
    if isinstance(value, (list, tuple)):
        return value[0]
    if isinstance(value, torch.Tensor):
        return value.reshape(-1)[0].item() if value.numel() else None
    return value


def _pair(value: Any, default: tuple[float, float]) -> tuple[float, float]:
    """A per-sample (x, y) pair as collated (a list of pairs, a pair of tensors) or absent."""
    if value is None:
        return default
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, (list, tuple)):
        return tuple(float(_first(v)) for v in value)  # type: ignore[return-value]
    flat = torch.as_tensor(value).reshape(-1)
    return float(flat[0]), float(flat[1])


@register_type("MotrSequenceRunner")
class MotrSequenceRunner:
    """The host code between MOTR's two graphs; ``runner(run_graph, batch)`` -> the frame's tracks.

    ``num_track_slots`` and ``d_model`` are the graphs' ``T`` and width; ``tracker`` a
    :class:`~hat_motr.tracker.MotTracker` (the recipe's thresholds by default). The
    output, per frame of the batch (one): ``track_ids`` ``(N,)``, ``track_boxes``
    ``(N, 4)`` x1, y1, x2, y2 in original-image pixels, ``track_scores`` ``(N,)`` -- what
    :class:`~hat_motr.metrics.MotMetric` and :class:`~hat_motr.metrics.MotTracksWriter` read.
    Boxes leave the network normalized to its input; the batch's ``scale_factor`` and
    ``pad_offset`` (core's Resize and Pad) and ``ori_shape`` take them to the original image.
    """

    def __init__(self, num_track_slots: int, d_model: int, tracker: MotTracker | None = None) -> None:
        self.num_track_slots = int(num_track_slots)
        self.d_model = int(d_model)
        self.tracker = tracker if tracker is not None else MotTracker(num_track_slots=self.num_track_slots)
        if self.tracker.num_track_slots != self.num_track_slots:
            raise ValueError(
                f"the tracker has {self.tracker.num_track_slots} track slots but the graphs {self.num_track_slots}"
            )
        self.reset()

    def reset(self) -> None:
        """Forget the sequence: no tracks, identities from 1."""
        self.tracker.reset()
        self.tracks: dict[str, torch.Tensor] = self.empty_tracks()
        self.position: tuple[str, int] | None = None

    def empty_tracks(self) -> dict[str, torch.Tensor]:
        t, d = self.num_track_slots, self.d_model
        return {
            "track_query_pos": torch.zeros(1, t, d),
            "track_ref_boxes": torch.full((1, t, 4), 0.5),
            "track_mask": torch.zeros(1, t),
        }

    def _follow(self, batch: Mapping[str, Any]) -> None:
        """Reset at a sequence's first frame; refuse a frame that does not follow the last one."""
        seq, frame = str(_first(batch["seq"])), int(_first(batch["frame"]))
        if bool(_first(batch.get("first_frame", frame == 1))):
            self.reset()
        elif self.position != (seq, frame - 1):
            last = "no frame yet" if self.position is None else f"{self.position[0]} frame {self.position[1]}"
            raise UserError(
                f"MOTR tracks a sequence frame by frame, but got {seq} frame {frame} after {last}",
                hint="validate on one process with an unshuffled loader of batch_size 1 (shuffle: false)",
            )
        self.position = (seq, frame)

    @torch.no_grad()
    def __call__(self, run_graph: RunGraph, batch: Mapping[str, Any]) -> dict[str, list[torch.Tensor]]:
        img = batch["img"]
        if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[0] != 1:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise UserError(
                f"MOTR tracking takes one frame at a time, (1, 3, H, W), got {shape}",
                hint="set batch_size: 1 on the validation loader",
            )
        self._follow(batch)
        outputs = run_graph(DETECT_GRAPH, {"img": img.float().cpu(), **self.tracks})
        t = self.num_track_slots
        logits = torch.as_tensor(outputs["logits"])[0].double()
        boxes = torch.as_tensor(outputs["boxes"])[0].double().numpy()
        scores = torch.sigmoid(logits).amax(dim=-1).numpy()
        height, width = img.shape[-2:]
        pixels = to_original(
            normalized_cxcywh_to_xyxy(boxes, width, height),
            _pair(batch.get("scale_factor"), (1.0, 1.0)),
            _pair(batch.get("pad_offset"), (0.0, 0.0)),
            _pair(batch.get("ori_shape"), (float(height), float(width))),
        )
        step = self.tracker.step(scores[:t], pixels[:t], scores[t:], pixels[t:])
        self.tracks = self.carry(run_graph, outputs, step.source)
        ids, rows, row_scores = step.rows()
        return {
            "track_ids": [torch.as_tensor(ids, dtype=torch.long)],
            "track_boxes": [torch.as_tensor(rows, dtype=torch.float32).reshape(-1, 4)],
            "track_scores": [torch.as_tensor(row_scores, dtype=torch.float32)],
        }

    def carry(
        self, run_graph: RunGraph, outputs: Mapping[str, torch.Tensor], source: np.ndarray
    ) -> dict[str, torch.Tensor]:
        """The next frame's track inputs: the chosen slots gathered, their queries through the QIM graph.

        The same gather as ``MotrModel.carry`` in training, on the host: the QIM runs
        only when some slot holds a track (its output for empty slots is masked anyway).
        """
        src = torch.as_tensor(source, dtype=torch.long).reshape(1, -1)
        mask = (src >= 0).float()
        if not bool(mask.any()):
            return self.empty_tracks()
        index = src.clamp(min=0)

        def gather(name: str) -> torch.Tensor:
            return gather_slots(torch.as_tensor(outputs[name]).float(), index)

        hidden, query = gather("hidden"), gather("query_pos")
        qim = run_graph(QIM_GRAPH, {"track_hidden": hidden, "track_query_pos": query, "track_mask": mask})
        return {
            "track_query_pos": torch.as_tensor(qim["next_query_pos"]).float(),
            "track_ref_boxes": gather("boxes"),
            "track_mask": mask,
        }

    def __repr__(self) -> str:
        return f"MotrSequenceRunner(num_track_slots={self.num_track_slots}, d_model={self.d_model}, {self.tracker!r})"
