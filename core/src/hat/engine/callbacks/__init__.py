"""Training callbacks; each module holds one kind."""

from hat.engine.callbacks.base import Callback

__all__ = ["Callback"]
