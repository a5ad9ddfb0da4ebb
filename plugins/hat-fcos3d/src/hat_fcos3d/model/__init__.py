"""The FCOS3D network (head), its targets, loss, box coder and post-process."""

from hat_fcos3d.model.coder import FCOS3DBBoxCoder, boxes_2d_from_3d, decode_yaw, direction_target
from hat_fcos3d.model.fcos3d import FCOS3D
from hat_fcos3d.model.head import FCOS3DHead, flatten_outputs, unflatten_outputs
from hat_fcos3d.model.loss import FCOS3DLoss
from hat_fcos3d.model.postprocess import FCOS3DPostProcess
from hat_fcos3d.model.target import FCOS3DTarget

__all__ = [
    "FCOS3D",
    "FCOS3DBBoxCoder",
    "FCOS3DHead",
    "FCOS3DLoss",
    "FCOS3DPostProcess",
    "FCOS3DTarget",
    "boxes_2d_from_3d",
    "decode_yaw",
    "direction_target",
    "flatten_outputs",
    "unflatten_outputs",
]
