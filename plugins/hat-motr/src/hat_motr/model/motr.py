"""MOTR: end-to-end multi-object tracking with track queries (Zeng et al., ECCV 2022), written to run int8.

``QuantStub -> EfficientNet (stride-32 map) -> 1x1 projection -> encoder -> decoder`` over a
fixed set of query slots: ``T`` *track* slots (the queries of the objects tracked so far,
carried from the previous frame by the QIM, padded to ``T`` with a validity mask) followed
by ``D`` *detect* slots (learned queries with learned reference boxes that look for new
objects). Fixed shapes and no data-dependent control flow in the deployed graphs: which
slots survive a frame is the tracker's decision, on the host, between two graphs.

Two deploy graphs (forward modes of this one module, so one checkpoint serves both):

* ``deploy="detect"`` (or ``True``), graph 1: inputs :data:`DETECT_INPUTS` --
  ``img`` ``(1, 3, H, W)``, ``track_query_pos`` ``(1, T, d)`` (the track slots' queries, the
  QIM's outputs), ``track_ref_boxes`` ``(1, T, 4)`` (their reference boxes: last frame's
  boxes, normalized ``cx, cy, w, h``), ``track_mask`` ``(1, T)`` (1 = the slot holds a
  track); outputs :data:`DETECT_OUTPUTS` for the ``T + D`` slots, tracks first -- ``logits``
  ``(1, T+D, C)``, ``boxes`` ``(1, T+D, 4)`` (sigmoid ``cx, cy, w, h``), ``hidden``
  ``(1, T+D, d)`` (the last decoder layer's states) and ``query_pos`` ``(1, T+D, d)`` (the
  slots' queries as the decoder read them: what the QIM takes for a slot that becomes a
  track, the learned query for a detect slot).
* ``deploy="qim"``, graph 2: inputs :data:`QIM_INPUTS` -- ``track_hidden``,
  ``track_query_pos`` ``(1, T, d)`` and ``track_mask`` ``(1, T)`` of the next frame's
  slots (gathered from graph 1's outputs by the tracker's ``source``); output
  ``next_query_pos`` ``(1, T, d)``: the next frame's ``track_query_pos``.

The training model (``deploy=False``) returns, in training, the clip losses (see
:meth:`MotrModel.forward_clip`). In eval it returns, for a batch of a sequence's frames (a
``first_frame`` key, one frame per batch, in order: the validation loader), the frame's
tracks, graph 1, the tracker and graph 2 run by the same host glue int_infer runs between
the two ONNX graphs (:mod:`hat_motr.sequence`); for clips (calibration), the clips tracked
through (:meth:`MotrModel.track_clip`, so the QIM sees carried queries); otherwise the raw
outputs of graph 1 (track inputs as batch keys, empty tracks when absent), as exported.
Everything between the stubs is int8 except LayerNorm, softmax (with the score scale and mask bias before it),
the sine embeddings of the boxes and the sigmoids (see :mod:`hat_motr.model.blocks`).
The criterion has no parameters and is kept out of the module tree (core's
``keep_outside``), so the state dict is the network's alone in every mode.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hat.models.layers import ConvBNAct
from hat.postprocess import keep_outside
from hat.quant import DeQuantStub, QuantStub
from hat.registry import register_type
from hat_motr.model.blocks import inverse_sigmoid, mask_bias, moved
from hat_motr.model.boxes import cxcywh_to_xyxy
from hat_motr.model.criterion import SUM_KEYS, FrameMatch, MotrCriterion
from hat_motr.model.qim import QueryInteractionModule
from hat_motr.model.transformer import Decoder, Encoder

#: Graph 1's inputs and outputs, in export order.
DETECT_INPUTS = ("img", "track_query_pos", "track_ref_boxes", "track_mask")
DETECT_OUTPUTS = ("logits", "boxes", "hidden", "query_pos")
#: Graph 2 (the QIM).
QIM_INPUTS = ("track_hidden", "track_query_pos", "track_mask")
QIM_OUTPUTS = ("next_query_pos",)
#: The batch keys of a training clip (the layout of hat_motr's ``Mot17ClipDataset``).
CLIP_KEYS = ("img", "target_boxes", "target_ids")
DEPLOY_MODES = (False, True, "detect", "qim")


def add_sums(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Per-layer loss sums added key by key (a key only one side has, the token loss's, kept)."""
    return [{k: x.get(k, 0) + y.get(k, 0) for k in {**x, **y}} for x, y in zip(a, b, strict=True)]


#: Token logits are clamped to +-PEAK_RANGE and a peak is raised by 4 * PEAK_RANGE
#: (:func:`peak_scores`): small enough that float32 keeps 1e-5 between keys, so the
#: order (and a TopK's choice) is the same in torch and onnxruntime.
PEAK_RANGE = 30.0


def peak_scores(scores: torch.Tensor, height: int, width: int, kernel: int = 3) -> torch.Tensor:
    """Ranking keys of ``(B, h*w)`` token logits: every token that is the maximum of its
    ``kernel x kernel`` neighbourhood first (CenterNet's peak picking, as a max-pool), by
    score, then the others by score; a TopK takes local peaks first and neighbours only
    when peaks run out."""
    grid = scores.clamp(-PEAK_RANGE, PEAK_RANGE).reshape(-1, 1, height, width)
    pooled = torch.nn.functional.max_pool2d(grid, kernel, stride=1, padding=kernel // 2)
    peaks = (grid >= pooled).to(scores.dtype)
    return (grid + peaks * (4 * PEAK_RANGE)).reshape(scores.shape)


def gather_slots(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[b, index[b, k]]``: ``(B, Q, ...)`` and ``(B, T)`` long -> ``(B, T, ...)``."""
    expand = index.reshape(*index.shape, *([1] * (values.dim() - 2))).expand(*index.shape, *values.shape[2:])
    return torch.gather(values, 1, expand)


@register_type("MotrModel")
class MotrModel(nn.Module):
    """EfficientNet + transformer + QIM, with the clip criterion around them.

    Args:
        backbone: image -> list of feature maps whose last is the stride-32 map
            (``efficientnet`` with ``out_indices: [4]``; 384 channels for b3).
        in_channels: channels of that map (default: ``backbone.out_channels[-1]``).
        d_model, num_heads, ffn_channels: transformer width, heads, FFN width (256, 8, 1024).
        num_encoder_layers, num_decoder_layers: 6 and 6 in the recipe.
        num_queries: detect slots ``D`` (256); num_track_slots: track slots ``T`` (256).
        num_classes: 1 (pedestrian).
        dropout: in attention, FFN and residuals (MOTR 0.1; 0 keeps a tiny run deterministic).
        feature_size: ``(h, w)`` of the stride-32 map of the deploy input (25x45 for 800x1422).
        criterion: :class:`MotrCriterion` (defaults built when None); training only.
        track_drop_prob: training: each track is dropped before the next frame with this
            probability (0.1), so detect queries learn to pick up objects again.
        fp_insert_prob: training: for each track, with this probability (0.3) an unmatched
            detect query of the highest score becomes a false-positive track, whose target is
            "no object", so track queries learn to let go.
        deploy: ``False`` (training model), ``"detect"``/``True`` (graph 1 in every mode) or
            ``"qim"`` (graph 2); see the module docstring.
        bn_kwargs: BatchNorm overrides of the input projection.
        tracker: the ``hat_motr.tracker.MotTracker`` that eval on a sequence's frames uses
            (the recipe's thresholds when None); see :meth:`forward`.
        query_selection: not the recipe's (False): the detect slots' reference boxes are
            centred on the ``D`` encoder tokens a token head scores highest (the two-stage
            query selection of Deformable DETR and DINO), with learned sizes, instead of
            learned positions. The token head is trained by the criterion's token loss
            (``token_weight`` > 0). What a MOTR trained from scratch needs on a CPU budget:
            measured on the tiny config, dense cross-attention from learned references
            barely localizes in a few thousand steps while the tokens do (see the
            tiny config). Deployed as a TopK and a Gather (float ops) on the token scores.
    """

    def __init__(
        self,
        backbone: nn.Module,
        in_channels: int | None = None,
        d_model: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        ffn_channels: int = 1024,
        num_queries: int = 256,
        num_track_slots: int = 256,
        num_classes: int = 1,
        dropout: float = 0.0,
        feature_size: Sequence[int] = (25, 45),
        criterion: MotrCriterion | None = None,
        track_drop_prob: float = 0.1,
        fp_insert_prob: float = 0.3,
        deploy: bool | str = False,
        bn_kwargs: Mapping[str, Any] | None = None,
        tracker: Any = None,
        query_selection: bool = False,
    ) -> None:
        super().__init__()
        if deploy not in DEPLOY_MODES:
            raise ValueError(f"deploy must be one of {DEPLOY_MODES}, got {deploy!r}")
        if in_channels is None:
            channels = getattr(backbone, "out_channels", None)
            if not channels:
                raise ValueError("give in_channels: the backbone has no out_channels list")
            in_channels = int(channels[-1])
        for name, value in (("num_queries", num_queries), ("num_track_slots", num_track_slots)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, value in (("track_drop_prob", track_drop_prob), ("fp_insert_prob", fp_insert_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.d_model = d_model
        self.num_queries = int(num_queries)
        self.num_track_slots = int(num_track_slots)
        self.num_classes = int(num_classes)
        self.track_drop_prob = float(track_drop_prob)
        self.fp_insert_prob = float(fp_insert_prob)
        self.deploy = "detect" if deploy is True else deploy

        self.quant = QuantStub()
        self.backbone = backbone
        self.input_proj = ConvBNAct(in_channels, d_model, 1, act=None, bn_kwargs=bn_kwargs)
        self.encoder = Encoder(
            d_model, num_heads, num_encoder_layers, ffn_channels, dropout, tuple(int(s) for s in feature_size)
        )
        self.query_quant = QuantStub()
        self.ref_quant = QuantStub()
        self.decoder = Decoder(d_model, num_heads, num_decoder_layers, ffn_channels, num_classes, dropout)
        self.dequant = nn.ModuleDict({name: DeQuantStub() for name in ("logits", "boxes", "hidden")})
        self.qim = QueryInteractionModule(d_model, num_heads, ffn_channels, dropout)
        #: The detect slots' learned queries and reference boxes (inverse-sigmoid space).
        self.detect_query = nn.Parameter(torch.randn(1, self.num_queries, d_model))
        ref = torch.empty(1, self.num_queries, 4)
        ref[..., :2].uniform_(0.0, 1.0)
        ref[..., 2:] = 0.1
        self.detect_ref = nn.Parameter(inverse_sigmoid(ref))
        self.query_selection = bool(query_selection)
        if self.query_selection:
            h, w = (int(v) for v in feature_size)
            if self.num_queries > h * w:
                raise ValueError(f"query_selection picks {self.num_queries} of the {h}x{w} tokens: too few tokens")
            self.token_head = nn.Linear(d_model, num_classes)
            self.token_dequant = DeQuantStub()
        if criterion is None and not self.deploy:
            criterion = MotrCriterion()
        keep_outside(self, "criterion", criterion, deploy=bool(self.deploy))
        self.tracker = tracker
        self._runner: Any = None

    # -- the network ---------------------------------------------------------------------
    def encode(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3, H, W)`` images -> ``(memory, memory + pos)``, each ``(N, h*w, d)`` (int8 once quantized)."""
        memory, memory_key, _ = self.encode_grid(img)
        return memory, memory_key

    def encode_grid(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """:meth:`encode` and the ``(h, w)`` of the token grid."""
        feature = self.backbone(self.quant(img))[-1]
        memory, memory_key = self.encoder(self.input_proj(feature))
        return memory, memory_key, (int(feature.shape[-2]), int(feature.shape[-1]))

    def empty_tracks(self, batch_size: int, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Track inputs with every slot empty (the first frame of a sequence)."""
        t, d = self.num_track_slots, self.d_model
        return {
            "track_query_pos": torch.zeros(batch_size, t, d, device=device),
            "track_ref_boxes": torch.full((batch_size, t, 4), 0.5, device=device),
            "track_mask": torch.zeros(batch_size, t, device=device),
        }

    def decode(
        self,
        memory: torch.Tensor,
        memory_key: torch.Tensor,
        track_query_pos: torch.Tensor,
        track_ref_boxes: torch.Tensor,
        track_mask: torch.Tensor,
        all_layers: bool = False,
        grid: tuple[int, int] | None = None,
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """The slots of one frame: graph 1's outputs, and per layer the class logits and sigmoid boxes.

        The track inputs are concatenated with the detect slots' constants in float and
        quantized once (so graph inputs need no int8 concat); an empty slot's query and
        reference logit are zeroed, so padding never reaches a quantizer's range.
        """
        b = memory.shape[0]
        self._check_tracks(b, track_query_pos, track_ref_boxes, track_mask)
        mask = track_mask.to(memory.dtype)
        queries = torch.cat([track_query_pos * mask[..., None], self.detect_query.expand(b, -1, -1)], dim=1)
        detect_ref = self.selected_refs(memory, grid) if self.query_selection else self.detect_ref.expand(b, -1, -1)
        ref_in = torch.cat([inverse_sigmoid(track_ref_boxes) * mask[..., None], detect_ref], dim=1)
        valid = torch.cat([mask, torch.ones(b, self.num_queries, dtype=mask.dtype, device=mask.device)], dim=1)
        hidden, class_logits, box_logits = self.decoder(
            self.query_quant(queries),
            self.ref_quant(ref_in),
            torch.sigmoid(ref_in),
            memory,
            memory_key,
            mask_bias(valid),
            all_layers=all_layers,
        )
        outputs = {
            "logits": self.dequant["logits"](class_logits[-1]),
            "boxes": torch.sigmoid(self.dequant["boxes"](box_logits[-1])),
            "hidden": self.dequant["hidden"](hidden),
            "query_pos": queries,
        }
        boxes = [torch.sigmoid(x) for x in box_logits[:-1]] + [outputs["boxes"]]
        logits = class_logits[:-1] + [outputs["logits"]]
        return outputs, logits, boxes

    def token_scores(self, memory: torch.Tensor) -> torch.Tensor:
        """``(N, h*w, C)`` class logits of every encoder token (the query-selection head)."""
        return self.token_dequant(self.token_head(memory))

    def selected_refs(self, memory: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
        """Query selection: ``(B, D, 4)`` reference logits centred on the ``D`` best-scoring tokens.

        The ranks are the tokens' best class scores, peaks first (:func:`peak_scores`: a
        pedestrian covers several tokens, and slots started on one object's neighbouring
        tokens would be duplicates the set loss must teach apart); a slot's width and height
        are its own learned ``detect_ref`` size (rank order). The selection carries no gradient (a
        token's centre is a constant of the grid); the token head learns from the token loss.
        """
        if grid is None:
            raise ValueError("query_selection needs the token grid (h, w) of the memory")
        h, w = grid
        b, tokens = memory.shape[:2]
        if tokens != h * w or tokens < self.num_queries:
            raise ValueError(f"query_selection needs at least {self.num_queries} tokens, got a {h}x{w} grid")
        scores = self.token_scores(memory).amax(dim=-1).detach()
        top = peak_scores(scores, h, w).topk(self.num_queries, dim=1).indices  # (B, D)
        ys = (torch.arange(h, device=memory.device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=memory.device, dtype=torch.float32) + 0.5) / w
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=-1).expand(b, -1, -1)
        xy = torch.gather(centres, 1, top[..., None].expand(-1, -1, 2))
        wh = torch.sigmoid(self.detect_ref[..., 2:]).expand(b, -1, -1)
        return inverse_sigmoid(torch.cat([xy, wh], dim=-1))

    def _check_tracks(self, batch: int, query: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> None:
        t, d = self.num_track_slots, self.d_model
        for name, value, shape in (
            ("track_query_pos", query, (batch, t, d)),
            ("track_ref_boxes", ref, (batch, t, 4)),
            ("track_mask", mask, (batch, t)),
        ):
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} must be {shape} (batch, track slots, ...), got {tuple(value.shape)}")

    def forward_frame(
        self,
        img: torch.Tensor,
        track_query_pos: torch.Tensor | None = None,
        track_ref_boxes: torch.Tensor | None = None,
        track_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Graph 1 on ``(B, 3, H, W)`` frames: :data:`DETECT_OUTPUTS` (missing track inputs: no tracks)."""
        if img.dim() != 4:
            raise ValueError(f"forward_frame takes (B, 3, H, W) images, got {tuple(img.shape)}")
        tracks = self.empty_tracks(img.shape[0], img.device)
        for key, value in zip(DETECT_INPUTS[1:], (track_query_pos, track_ref_boxes, track_mask), strict=True):
            if value is not None:
                tracks[key] = value.to(img.device, img.dtype)
        memory, memory_key, grid = self.encode_grid(img)
        outputs, _, _ = self.decode(memory, memory_key, **tracks, grid=grid)
        return outputs

    def forward_qim(
        self, track_hidden: torch.Tensor, track_query_pos: torch.Tensor, track_mask: torch.Tensor
    ) -> torch.Tensor:
        """Graph 2: the next frame's ``track_query_pos`` ``(B, T, d)``."""
        return self.qim(track_hidden, track_query_pos, track_mask.to(track_hidden.dtype))

    def carry(self, outputs: Mapping[str, torch.Tensor], source: torch.Tensor) -> dict[str, torch.Tensor]:
        """The next frame's track inputs from this frame's graph-1 outputs and the tracker's choice.

        ``source`` ``(B, T)`` long: next-frame track slot ``k`` takes slot ``source[b, k]``
        of this frame's ``T + D`` slots (-1: empty), as ``MotTracker.step().source``. The
        slots' states and queries go through the QIM; the reference boxes are this frame's
        boxes (detached: the reference carries no gradient, as in MOTR).
        """
        source = source.to(device=outputs["hidden"].device, dtype=torch.long)
        mask = (source >= 0).to(outputs["hidden"].dtype)
        index = source.clamp(min=0)
        hidden = gather_slots(outputs["hidden"], index)
        query = gather_slots(outputs["query_pos"], index)
        return {
            "track_query_pos": self.forward_qim(hidden, query, mask),
            "track_ref_boxes": gather_slots(outputs["boxes"], index).detach(),
            "track_mask": mask,
        }

    # -- training --------------------------------------------------------------------------
    def forward_clip(
        self,
        img: torch.Tensor | Sequence[torch.Tensor],
        target_boxes: Sequence[Sequence[torch.Tensor]],
        target_ids: Sequence[Sequence[torch.Tensor]],
        target_labels: Sequence[Sequence[torch.Tensor]] | None = None,
        return_matches: bool = False,
    ) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], list[list[dict[str, Any]]]]:
        """The clip losses: the model runs frame by frame, carrying track slots through the QIM.

        ``img``: ``(B, L, 3, H, W)``, or a list of ``(L_b, 3, H, W)`` clips (which may differ
        in size and length: each is then run on its own). ``target_boxes[b][t]`` ``(N, 4)``
        normalized ``cx, cy, w, h`` and ``target_ids[b][t]`` ``(N,)`` identities of clip
        ``b``'s frame ``t`` (``target_labels`` likewise, default class 0).

        Returns ``{"loss_cls", "loss_bbox", "loss_giou"}`` (the last decoder layer's) and,
        with the criterion's ``aux_loss``, ``"loss_aux"`` (the other layers' together): each
        summed over the frames and divided by the clip's number of ground-truth boxes.
        With ``return_matches`` also, per clip and frame, ``{"slot_ids": (T,) identities the
        track slots carried into the frame, "track_targets": FrameMatch.track_targets,
        "det_queries", "det_targets", "next_ids": identities carried out (-1: none, or a false
        positive), "next_valid": which next-frame slots hold a track}``.
        """
        if self.criterion is None:
            raise RuntimeError("training MotrModel needs a criterion (deploy models have none)")
        clips = list(img) if not isinstance(img, torch.Tensor) else list(img.unbind(0))
        if len(clips) != len(target_boxes) or len(clips) != len(target_ids):
            raise ValueError(f"{len(clips)} clips but {len(target_boxes)} target_boxes / {len(target_ids)} target_ids")
        labels = target_labels if target_labels is not None else [None] * len(clips)
        groups: list[list[int]] = []
        if all(c.shape == clips[0].shape for c in clips):
            groups.append(list(range(len(clips))))
        else:
            groups = [[i] for i in range(len(clips))]
        totals: list[dict[str, torch.Tensor]] | None = None
        records: list[list[dict[str, Any]]] = [[] for _ in clips]
        num_targets = 0
        for group in groups:
            for i in group:
                if len(target_boxes[i]) != clips[i].shape[0] or len(target_ids[i]) != clips[i].shape[0]:
                    raise ValueError(f"clip {i} has {clips[i].shape[0]} frames but targets for {len(target_boxes[i])}")
                num_targets += sum(int(torch.as_tensor(ids).numel()) for ids in target_ids[i])
            sums = self._clip_sums(
                torch.stack([clips[i] for i in group]),
                [target_boxes[i] for i in group],
                [target_ids[i] for i in group],
                [labels[i] for i in group],
                [records[i] for i in group],
            )
            totals = sums if totals is None else add_sums(totals, sums)
        assert totals is not None
        n = max(num_targets, 1)
        weights = self.criterion.weights
        losses = {f"loss_{k}": weights[k] * totals[-1][k] / n for k in SUM_KEYS}
        if "token" in totals[-1]:
            losses["loss_token"] = self.criterion.token_weight * totals[-1]["token"] / n
        if len(totals) > 1:
            losses["loss_aux"] = sum(self.criterion.weighted(s, n) for s in totals[:-1])
        return (losses, records) if return_matches else losses

    def _clip_sums(
        self,
        imgs: torch.Tensor,
        target_boxes: Sequence[Sequence[torch.Tensor]],
        target_ids: Sequence[Sequence[torch.Tensor]],
        target_labels: Sequence[Sequence[torch.Tensor] | None],
        records: Sequence[list[dict[str, Any]]],
    ) -> list[dict[str, torch.Tensor]]:
        """Per-layer loss sums of ``(B, L, 3, H, W)`` equal-sized clips; appends each frame's match to ``records``."""
        b, length = imgs.shape[:2]
        device = imgs.device
        memory_all, key_all, grid = self.encode_grid(imgs.flatten(0, 1))
        token_sum = None
        if self.query_selection and self.criterion.token_weight <= 0:
            raise ValueError(
                "query_selection trains its token head by the token loss: give the criterion token_weight > 0"
            )
        if self.criterion.token_weight > 0:
            boxes = [torch.as_tensor(target_boxes[i][t]) for i in range(b) for t in range(length)]
            head = self.token_scores if self.query_selection else self.decoder.class_head
            token_sum = self.criterion.token_loss(head(memory_all), grid, boxes)
        memory_all = moved(memory_all.reshape(b, length, *memory_all.shape[1:]), memory_all)
        key_all = moved(key_all.reshape(b, length, *key_all.shape[1:]), key_all)
        tracks = self.empty_tracks(b, device)
        slot_ids = torch.full((b, self.num_track_slots), -1, dtype=torch.long, device=device)
        totals: list[dict[str, torch.Tensor]] | None = None
        aux = self.criterion.aux_loss
        for t in range(length):
            memory, memory_key = moved(memory_all[:, t], memory_all), moved(key_all[:, t], key_all)
            outputs, class_logits, boxes = self.decode(memory, memory_key, **tracks, all_layers=aux, grid=grid)
            valid = torch.cat([tracks["track_mask"], torch.ones(b, self.num_queries, device=device)], dim=1) > 0
            source = torch.full((b, self.num_track_slots), -1, dtype=torch.long, device=device)
            next_ids = torch.full_like(source, -1)
            scores = torch.sigmoid(outputs["logits"].detach()).amax(dim=-1)
            for i in range(b):
                gt_ids = torch.as_tensor(target_ids[i][t]).to(device).reshape(-1)
                labels = target_labels[i][t] if target_labels[i] is not None else None
                sums, match = self.criterion.frame_sums(
                    [x[i] for x in class_logits],
                    [x[i] for x in boxes],
                    valid[i],
                    self.num_track_slots,
                    slot_ids[i],
                    torch.as_tensor(target_boxes[i][t]),
                    gt_ids,
                    None if labels is None else torch.as_tensor(labels),
                )
                totals = sums if totals is None else add_sums(totals, sums)
                src, ids = self._next_slots(match, slot_ids[i], gt_ids, scores[i])
                source[i, : len(src)], next_ids[i, : len(ids)] = src, ids
                records[i].append(
                    {
                        "slot_ids": slot_ids[i].clone(),
                        "track_targets": match.track_targets,
                        "det_queries": match.det_queries,
                        "det_targets": match.det_targets,
                        "next_ids": next_ids[i].clone(),
                        "next_valid": source[i] >= 0,
                    }
                )
            if t + 1 < length:
                tracks = self.carry(outputs, source)
                slot_ids = next_ids
        assert totals is not None
        if token_sum is not None:
            totals[-1] = {**totals[-1], "token": token_sum}
        return totals

    def _next_slots(
        self, match: FrameMatch, slot_ids: torch.Tensor, gt_ids: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training's choice of next-frame tracks: ``(source slots, identities)``, at most ``T``.

        Tracks whose identity is still in the frame keep it, matched detect queries become
        tracks of their ground truth's identity (MOTR drops a track whose object left at
        once in training); each is then dropped with ``track_drop_prob``, and for each
        remaining one, with ``fp_insert_prob``, the best-scoring unmatched detect query joins
        as a false positive (identity -1).
        """
        t = self.num_track_slots
        device = slot_ids.device
        kept = torch.nonzero(match.track_targets >= 0).flatten()
        src = torch.cat([kept, t + match.det_queries])
        ids = torch.cat([slot_ids[kept], gt_ids[match.det_targets].to(torch.long)])
        if self.training and self.track_drop_prob > 0 and len(src):
            keep = torch.rand(len(src), device=device) >= self.track_drop_prob
            src, ids = src[keep], ids[keep]
        if self.training and self.fp_insert_prob > 0 and len(src):
            count = int((torch.rand(len(src), device=device) < self.fp_insert_prob).sum())
            if count:
                free = torch.ones(self.num_queries, dtype=torch.bool, device=device)
                free[match.det_queries] = False
                candidates = torch.nonzero(free).flatten()
                order = torch.argsort(scores[t + candidates], descending=True)[:count]
                fp = t + candidates[order]
                src = torch.cat([src, fp])
                ids = torch.cat([ids, torch.full((len(fp),), -1, dtype=torch.long, device=device)])
        return src[:t], ids[:t]

    # -- inference over a clip ---------------------------------------------------------------
    @torch.no_grad()
    def track_clip(self, img: torch.Tensor, trackers: Sequence[Any] | None = None) -> list[dict[str, torch.Tensor]]:
        """Run ``(B, L, 3, H, W)`` clips frame by frame as deployed: graph 1, the tracker, graph 2.

        ``trackers``: one ``hat_motr.tracker.MotTracker`` per clip (fresh ones by default),
        whose ``step`` picks the next frame's slots; returns graph 1's outputs per frame.
        Used in eval for clip batches, so that calibration also sees carried track queries
        and calibrates the QIM.
        """
        from hat_motr.tracker import MotTracker

        b, length, _, height, width = img.shape
        if trackers is None:
            trackers = [MotTracker(num_track_slots=self.num_track_slots) for _ in range(b)]
        scale = img.new_tensor([width, height, width, height])
        t = self.num_track_slots
        tracks = self.empty_tracks(b, img.device)
        frames = []
        for step in range(length):
            outputs = self.forward_frame(img[:, step], **tracks)
            frames.append(outputs)
            scores = torch.sigmoid(outputs["logits"]).amax(dim=-1).cpu().double().numpy()
            corners = (cxcywh_to_xyxy(outputs["boxes"]) * scale).cpu().double().numpy()  # the tracker's pixels
            sources = [
                torch.as_tensor(tracker.step(scores[i, :t], corners[i, :t], scores[i, t:], corners[i, t:]).source)
                for i, tracker in enumerate(trackers)
            ]
            if step + 1 < length:
                tracks = self.carry(outputs, torch.stack(sources).to(img.device))
        return frames

    def run_graph(self, name: str, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One deploy graph in torch by its name (``model``: graph 1, ``qim``: graph 2), as the runner calls it."""
        device = self.detect_query.device
        feeds = {k: torch.as_tensor(v).to(device) for k, v in feeds.items()}
        if name == "qim":
            return {"next_query_pos": self.forward_qim(*(feeds[k] for k in QIM_INPUTS))}
        return self.forward_frame(*(feeds[k] for k in DETECT_INPUTS))

    @torch.no_grad()
    def track_frame(self, batch: Mapping[str, Any]) -> dict[str, list[torch.Tensor]]:
        """Eval on a sequence's frames, one per batch in order: the frame's tracks (see hat_motr.sequence).

        The state between frames (the tracker, the carried slots) lives in a
        :class:`~hat_motr.sequence.MotrSequenceRunner` on this module, reset at every
        ``first_frame``: the same glue that int_infer runs between the two ONNX graphs.
        """
        from hat_motr.sequence import MotrSequenceRunner

        if self._runner is None:
            tracker = copy.deepcopy(self.tracker) if self.tracker is not None else None
            self._runner = MotrSequenceRunner(self.num_track_slots, self.d_model, tracker)
        return self._runner(self.run_graph, batch)

    # -- the task-model contract --------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any] | torch.Tensor) -> dict[str, torch.Tensor]:
        if self.deploy == "qim":
            missing = [k for k in QIM_INPUTS if k not in batch]
            if missing:
                raise KeyError(f"the QIM graph needs {list(QIM_INPUTS)}; missing {missing}")
            return {"next_query_pos": self.forward_qim(*(torch.as_tensor(batch[k]) for k in QIM_INPUTS))}
        if isinstance(batch, torch.Tensor):
            return self.forward_frame(batch)
        if self.training and not self.deploy:
            missing = [k for k in CLIP_KEYS if k not in batch]
            if missing:
                raise KeyError(f"a training batch needs {list(CLIP_KEYS)} (a batch of clips); missing {missing}")
            return self.forward_clip(
                batch["img"], batch["target_boxes"], batch["target_ids"], batch.get("target_labels")
            )
        img = batch["img"]
        if "first_frame" in batch and not self.deploy and isinstance(img, torch.Tensor) and img.dim() == 4:
            return self.track_frame(batch)
        if not isinstance(img, torch.Tensor) or img.dim() == 5:  # clips: tracked through; the last frames' outputs
            clips = list(img) if not isinstance(img, torch.Tensor) else list(img.unbind(0))
            last = [self.track_clip(clip[None])[-1] for clip in clips]
            return {k: torch.cat([o[k] for o in last]) for k in DETECT_OUTPUTS}
        return self.forward_frame(img, *(batch.get(k) for k in DETECT_INPUTS[1:]))

    def extra_repr(self) -> str:
        return (
            f"deploy={self.deploy}, d_model={self.d_model}, num_queries={self.num_queries}, "
            f"num_track_slots={self.num_track_slots}, criterion={self.criterion!r}"
        )
