"""Building blocks shared by several tasks (backbones, necks, layers).

Plugins build their task models from these; core registers the configurable ones
(``type: efficientnet``) so every plugin's configs can name them.
"""

from hat.models.efficientnet import EfficientNet
from hat.models.layers import ConvBNAct, make_activation
from hat.models.mixvargenet import MixVarGENet

__all__ = ["ConvBNAct", "EfficientNet", "MixVarGENet", "make_activation"]
