"""Quantization: the backend protocol and the default torch-native backend.

Model authors import the boundary markers from here::

    from hat.quant import QuantStub, DeQuantStub, FloatFunctional
"""

from hat.quant.stubs import DeQuantStub, FloatFunctional, QuantStub

__all__ = ["DeQuantStub", "FloatFunctional", "QuantStub"]
