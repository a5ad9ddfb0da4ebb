"""The keypoint network (HeatmapKeypointModel + DeconvDecoder), its loss and its decoder."""

from hat_keypoint.model.decoder_head import DeconvDecoder
from hat_keypoint.model.heatmap_decoder import HeatmapDecoder, KeypointPostProcess, decode_heatmaps
from hat_keypoint.model.heatmap_model import HeatmapKeypointModel
from hat_keypoint.model.loss import HeatmapMSELoss

__all__ = [
    "DeconvDecoder",
    "HeatmapDecoder",
    "HeatmapKeypointModel",
    "HeatmapMSELoss",
    "KeypointPostProcess",
    "decode_heatmaps",
]
