"""Building blocks shared by several tasks (backbones, necks, layers).

Plugins build their task models from these; core registers the configurable ones
(``type: efficientnet``) so every plugin's configs can name them.
"""

from hat.models.efficientnet import EfficientNet
from hat.models.layers import ConvBNAct, make_activation

__all__ = ["ConvBNAct", "EfficientNet", "make_activation"]
