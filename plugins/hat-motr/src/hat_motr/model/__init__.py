"""The MOTR network (EfficientNet + transformer + QIM), its clip criterion and its two deploy graphs."""

from hat_motr.model.criterion import FrameMatch, MotrCriterion
from hat_motr.model.motr import (
    DETECT_INPUTS,
    DETECT_OUTPUTS,
    QIM_INPUTS,
    QIM_OUTPUTS,
    MotrModel,
    gather_slots,
)
from hat_motr.model.qim import QueryInteractionModule

__all__ = [
    "DETECT_INPUTS",
    "DETECT_OUTPUTS",
    "QIM_INPUTS",
    "QIM_OUTPUTS",
    "FrameMatch",
    "MotrCriterion",
    "MotrModel",
    "QueryInteractionModule",
    "gather_slots",
]
