"""nuScenes detection score (NDS) and mAP, computed by the devkit's own ``DetectionEval``.

Predictions arrive per image (a monocular model sees one camera at a time) already in
the global frame; they are merged per sample (highest scores first, capped at the
devkit's ``max_boxes_per_sample``), written as the devkit's results JSON with every
sample token of the evaluation split present (empty lists where nothing was detected),
and evaluated with the named config (``detection_cvpr_2019``: centre-distance matching
at 0.5/1/2/4 m, class ranges 30-50 m). Nothing is re-implemented: the figures are the
devkit's, so they compare with published ones.

A detection's attribute is its predicted one when the devkit scores that attribute for
its class, else the class's usual one (:data:`hat.nuscenes.constants.DEFAULT_ATTRIBUTE`);
-1 or 8 (the "none" class of a 9-way attribute head) mean "not predicted".
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hat import console, distributed
from hat.metrics import Metric
from hat.nuscenes.constants import ATTRIBUTES, CLASS_ATTRIBUTES, DEFAULT_ATTRIBUTE, DETECTION_CLASSES, SPLIT_NAMES
from hat.nuscenes.devkit import load_nuscenes, require_devkit
from hat.registry import register_type

#: The devkit's true-positive errors and the names of their class means.
_ERRORS = (
    ("trans_err", "mATE"),
    ("scale_err", "mASE"),
    ("orient_err", "mAOE"),
    ("vel_err", "mAVE"),
    ("attr_err", "mAAE"),
)
_FIELDS = ("center", "size", "rotation", "velocity", "label", "score", "attribute")


def as_numpy(value: Any, dtype: Any = None) -> np.ndarray:
    """A tensor (on any device) or array-like as a numpy array, of ``dtype`` if given."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu").numpy()
    return np.asarray(value, dtype=dtype)


def attribute_name(label: int, attribute: int) -> str:
    """The devkit attribute name of a detection of class ``label`` with predicted ``attribute``."""
    cls = DETECTION_CLASSES[label]
    if 0 <= attribute < len(ATTRIBUTES) and ATTRIBUTES[attribute] in CLASS_ATTRIBUTES[cls]:
        return ATTRIBUTES[attribute]
    return DEFAULT_ATTRIBUTE[cls]


@register_type("NuscenesMetric")
class NuscenesMetric(Metric):
    """NDS, mAP, the five true-positive errors and per-class AP, by nuscenes-devkit.

    Args:
        data_root: the nuScenes dataroot (holding ``<version>/``) the predictions are of.
        version: ``v1.0-mini``, ``v1.0-trainval`` or ``v1.0-test``.
        eval_set: the devkit split to evaluate (default ``mini_val`` for mini, ``val`` for
            trainval); every one of its samples is scored, detected or not.
        config: the devkit's detection config name.
        output_dir: where the results JSON and the devkit's metrics files are kept (a
            temporary directory, removed after each computation, when not given).
        max_boxes_per_sample: how many detections of a sample are kept (the devkit refuses more than 500).

    ``update(batch, outputs)`` reads ``outputs["detections"]``: one dict per image,
    ``{"sample_token", "center" (K, 3), "size" (K, 3), "rotation" (K, 4), "velocity" (K, 2),
    "label" (K,), "score" (K,), "attribute" (K,)}`` in the global frame.
    """

    name = "NDS"
    higher_is_better = True

    def __init__(
        self,
        data_root: str,
        version: str = "v1.0-mini",
        eval_set: str | None = None,
        config: str = "detection_cvpr_2019",
        output_dir: str | None = None,
        max_boxes_per_sample: int = 500,
    ) -> None:
        super().__init__()
        require_devkit("NuscenesMetric")
        if version not in SPLIT_NAMES:
            raise ValueError(f"unknown nuScenes version {version!r}; use one of {', '.join(SPLIT_NAMES)}")
        self.data_root = str(data_root)
        self.version = version
        self.eval_set = eval_set or SPLIT_NAMES[version].get("val", "test")
        self.config = config
        self.output_dir = output_dir
        if not 1 <= max_boxes_per_sample <= 500:
            raise ValueError(f"max_boxes_per_sample must be in 1..500, got {max_boxes_per_sample}")
        self.max_boxes_per_sample = max_boxes_per_sample
        self.add_state("detections", [], reduce="cat")

    def update(self, batch: Any, outputs: Any) -> None:
        for det in outputs["detections"]:
            arrays = {
                "center": as_numpy(det["center"], np.float64).reshape(-1, 3),
                "size": as_numpy(det["size"], np.float64).reshape(-1, 3),
                "rotation": as_numpy(det["rotation"], np.float64).reshape(-1, 4),
                "velocity": as_numpy(det["velocity"], np.float64).reshape(-1, 2),
                "label": as_numpy(det["label"], np.int64).reshape(-1),
                "score": as_numpy(det["score"], np.float64).reshape(-1),
                "attribute": as_numpy(det["attribute"], np.int64).reshape(-1),
            }
            k = len(arrays["label"])
            bad = [f for f in _FIELDS if len(arrays[f]) != k]
            if bad:
                raise ValueError(f"detections of sample {det['sample_token']}: {', '.join(bad)} do not have {k} rows")
            self.detections.append((str(det["sample_token"]), arrays))

    # -- computing ------------------------------------------------------------------------
    def results(self, sample_tokens: Sequence[str]) -> dict[str, list[dict]]:
        """The devkit's ``results`` map: every token of ``sample_tokens``, merged detections, best first."""
        merged: dict[str, list[dict[str, np.ndarray]]] = {token: [] for token in sample_tokens}
        dropped = 0
        for token, arrays in self.detections:
            if token in merged:
                merged[token].append(arrays)
            else:
                dropped += 1
        if dropped:
            console.info(f"NuscenesMetric: ignored detections of {dropped} image(s) outside {self.eval_set}")
        results: dict[str, list[dict]] = {}
        for token, parts in merged.items():
            boxes: list[dict] = []
            if parts:
                cat = self.merge(parts)
                order = np.argsort(-cat["score"], kind="stable")[: self.max_boxes_per_sample]
                for i in order:
                    label = int(cat["label"][i])
                    boxes.append(
                        {
                            "sample_token": token,
                            "translation": [float(v) for v in cat["center"][i]],
                            "size": [float(v) for v in cat["size"][i]],
                            "rotation": [float(v) for v in cat["rotation"][i]],
                            "velocity": [float(v) for v in cat["velocity"][i]],
                            "detection_name": DETECTION_CLASSES[label],
                            "detection_score": float(cat["score"][i]),
                            "attribute_name": attribute_name(label, int(cat["attribute"][i])),
                        }
                    )
            results[token] = boxes
        return results

    def merge(self, parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """One sample's detections from its images (e.g. one per camera), as one set.

        Here they are joined; a monocular model whose cameras overlap overrides this to
        remove the boxes that two cameras both found.
        """
        return {f: np.concatenate([p[f] for p in parts]) for f in _FIELDS}

    def _compute(self) -> dict[str, float]:
        from nuscenes.eval.common.config import config_factory
        from nuscenes.eval.detection.evaluate import DetectionEval
        from nuscenes.utils.splits import create_splits_scenes

        nusc = load_nuscenes(self.data_root, self.version)
        scenes = set(create_splits_scenes()[self.eval_set])
        tokens = [s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in scenes]
        if not tokens:
            raise ValueError(f"{self.data_root} ({self.version}) has no sample of the split {self.eval_set}")
        cfg = config_factory(self.config)
        results = self.results(tokens)
        with tempfile.TemporaryDirectory(prefix="hat-nuscenes-") as tmp:
            out = Path(self.output_dir) if self.output_dir else Path(tmp)
            out.mkdir(parents=True, exist_ok=True)
            result_path = out / "results_nusc.json"
            meta = {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False, "use_external": False}
            result_path.write_text(json.dumps({"meta": meta, "results": results}))
            if not any(results.values()):  # the devkit cannot evaluate zero boxes: nothing found scores 0
                summary = _empty_summary(cfg)
            else:
                # verbose=False still shows the devkit's tqdm bar for loading ground truth: keep it quiet
                with contextlib.redirect_stderr(io.StringIO()):
                    evaluator = DetectionEval(nusc, cfg, str(result_path), self.eval_set, str(out), verbose=False)
                    metrics, _ = evaluator.evaluate()
                summary = metrics.serialize()
            (out / "metrics_summary.json").write_text(json.dumps(summary, indent=2))
        if distributed.is_main():
            _print_table(summary)
        values = {"NDS": summary["nd_score"], "mAP": summary["mean_ap"]}
        for key, name in _ERRORS:
            values[name] = summary["tp_errors"][key]
        for cls in DETECTION_CLASSES:
            values[f"AP/{cls}"] = summary["mean_dist_aps"][cls]
        return values


def _empty_summary(cfg: Any) -> dict[str, Any]:
    """What the devkit reports for no detections at all: zero AP, every error at its cap of 1."""
    nan_errors = {"traffic_cone": ("attr_err", "vel_err", "orient_err"), "barrier": ("attr_err", "vel_err")}
    label_tp = {
        cls: {key: math.nan if key in nan_errors.get(cls, ()) else 1.0 for key, _ in _ERRORS} for cls in cfg.class_names
    }
    return {
        "mean_dist_aps": {cls: 0.0 for cls in cfg.class_names},
        "mean_ap": 0.0,
        "label_tp_errors": label_tp,
        "tp_errors": {key: 1.0 for key, _ in _ERRORS},
        "nd_score": 0.0,
    }


def _print_table(summary: Mapping[str, Any]) -> None:
    """The devkit's per-class table (AP and the five errors), then NDS and mAP, on the message console."""
    if console.is_quiet():
        return
    from rich.table import Table

    table = Table(title=f"nuScenes detection: NDS {summary['nd_score']:.4f}, mAP {summary['mean_ap']:.4f}")
    for column in ("class", "AP", "ATE", "ASE", "AOE", "AVE", "AAE"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for cls, ap in summary["mean_dist_aps"].items():
        errors = summary["label_tp_errors"][cls]
        table.add_row(cls, f"{ap:.3f}", *(_fmt(errors[key]) for key, _ in _ERRORS))
    table.add_row(
        "mean", f"{summary['mean_ap']:.3f}", *(_fmt(summary["tp_errors"][key]) for key, _ in _ERRORS), style="bold"
    )
    console.err.print(table)


def _fmt(value: float) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
