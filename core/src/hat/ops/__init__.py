"""Tensor operations that several tasks share and that stay outside the exported model
(post-processing runs in Python, as on the device): rotated-box IoU and NMS in BEV."""

from hat.ops.rotated_nms import box_corners_bev, rotated_iou_bev, rotated_nms_bev

__all__ = ["box_corners_bev", "rotated_iou_bev", "rotated_nms_bev"]
