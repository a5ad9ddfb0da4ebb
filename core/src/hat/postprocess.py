"""The task-model and post-process contract: one decoding path for every kind of model.

A task's model is judged four ways: as a float torch model, as its calibration and QAT
fake-quant simulations, and as the exported int8 ONNX graph run by onnxruntime. If the
torch model decoded its own outputs while the ONNX path decoded them with a second
object, the metrics of the two would come from two pieces of code that can drift apart
(and an int8 number would not say what the float number says). So the contract is:

**Task model** (an ``nn.Module`` taking the batch dict)

* training mode: ``forward(batch)`` returns the losses, ``{name: scalar tensor}``, every
  name matching the batch processor's loss collector (``"loss"`` by default);
* eval mode: ``forward(batch)`` returns the *raw outputs*, ``{name: tensor}``: exactly the
  tensors export writes, under the same names (export names its graph outputs after
  these keys). No decoding, no NMS, no loss.

**Post-process** (:class:`PostProcess`, built from the config's top-level ``post_process``)

``post_process(outputs, batch) -> predictions`` turns raw outputs (torch tensors from the
float or fake-quant model, or onnxruntime's outputs as tensors) into what the metrics
and the inferer read: a dict, by convention the raw outputs plus the decoded keys. The
*same object* decodes for the torch predictors (float, calibration, qat), for validation
during training and calibration, for ``int_infer`` (the ONNX predictor), for
``hat validate`` and for ``hat infer``.

A post-process may be stateful (a tracker carrying queries from frame to frame): it
keeps its state between calls and forgets it in :meth:`PostProcess.reset`. Core calls
``reset()``:

* at the start of every pass over a data loader (each predict run, each validation
  during training or calibration, each of ``hat validate``'s two passes, which use two
  copies so their states stay apart);
* at the start of every ``hat infer`` call (the files given are one sequence).

A pass over a loader of several sequences is one call to ``reset()``; a tracker sees
the next sequence start from the batch itself (a sequence id or frame index) and resets
itself then.

Configs write the post-process once, as the top-level ``post_process``; core's stage
config (``hat_stages``) hands it to every trainer, calibrator and predictor as
``post_process: ${post_process}``, and a task's ``infer`` section does the same. Each
reference builds its own object, so a stateful post-process's state belongs to one run.
A runner without a post-process passes the raw outputs to its metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

#: The raw outputs of a task model in eval mode, or of the exported ONNX graph.
Outputs = Mapping[str, Any]
#: What a post-process returns: the dict the metrics and the inferer read.
Predictions = dict[str, Any]
#: Anything with the post-process call signature (a :class:`PostProcess` or a function).
PostProcessFn = Callable[[Outputs, Any], Predictions]


class PostProcess:
    """Base of a task's post-process: ``post_process(outputs, batch) -> predictions``.

    Subclasses implement :meth:`__call__`; a stateful one also overrides :meth:`reset`,
    and one that must agree with the model it decodes (strides, box coding) overrides
    :meth:`check_model`, which core calls before the first batch.
    """

    def __call__(self, outputs: Outputs, batch: Any = None) -> Predictions:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(outputs, batch)")

    def reset(self) -> None:
        """Forget the state carried between calls (see the module docstring for when)."""

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise ``ValueError`` if this post-process cannot decode ``model``'s outputs."""


def reset_post_process(post_process: PostProcessFn | None) -> None:
    """Call ``post_process.reset()`` if it has one (plain functions hold no state)."""
    reset = getattr(post_process, "reset", None)
    if callable(reset):
        reset()


def check_post_process(post_process: PostProcessFn | None, model: torch.nn.Module) -> None:
    """Call ``post_process.check_model(model)`` if it has one."""
    check = getattr(post_process, "check_model", None)
    if callable(check):
        check(model)


def apply_post_process(post_process: PostProcessFn | None, outputs: Outputs, batch: Any) -> Any:
    """``post_process(outputs, batch)``, or the outputs unchanged without a post-process."""
    return outputs if post_process is None else post_process(outputs, batch)


#: ``writer(predictions, batch, out_dir)``: a predictor's optional hook that writes each
#: batch's predictions in a task's own file format (e.g. CULane ``.lines.txt``) under
#: ``<work-dir>/predict/<stage>/``, for evaluators outside HAT. Core calls it after the
#: post-process, on every rank's batches, the same for the torch and ONNX predictors.
PredictionWriter = Callable[[Predictions, Any, Any], None]


def keep_outside(model: torch.nn.Module, name: str, part: Any, *, deploy: bool) -> None:
    """Set ``model.<name> = part`` (a loss, a target builder) as a plain attribute, not a
    submodule, and ``None`` in the deploy model.

    The task-model contract keeps losses out of the module tree: the quantizer never sees
    them (no "left float" entries), and the state_dict is the network's alone, identical
    with ``deploy`` on or off, so a training checkpoint loads into the export model. A
    part with parameters would then silently never be saved, hence the error.
    """
    if isinstance(part, torch.nn.Module) and any(True for _ in part.parameters()):
        raise ValueError(f"the {name} must not have parameters: it is kept outside the network's state")
    object.__setattr__(model, name, None if deploy else part)
