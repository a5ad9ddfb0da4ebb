"""The training loop, the same code in one process and under torchrun (DDP).

Under torchrun every rank builds the same model (same seed), wraps it in
DistributedDataParallel (gradients averaged over ranks), and reads its own share of each
epoch through :class:`hat.engine.loader.EpochSampler`. Only rank 0 logs and writes
files. A resumed run restores weights, optimizer, scheduler, callbacks, RNG and the
sampler position from ``<stage>-checkpoint-last`` and ends where the uninterrupted run
would have.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hat import distributed
from hat.engine.callbacks.base import Callback
from hat.engine.checkpoint_io import load_checkpoint, restore_rng
from hat.engine.context import RunContext
from hat.engine.converters import ModelConvertPipeline, load_state
from hat.engine.loader import set_loader_epoch
from hat.engine.optim import build_optimizer
from hat.engine.processors import MultiBatchProcessor, NonFiniteLoss
from hat.engine.runner import LoopRunner
from hat.engine.state import LoopState
from hat.errors import UserError
from hat.metrics import Metric
from hat.postprocess import PostProcessFn
from hat.registry import register_type
from hat.workdir import command_for


@register_type(
    "distributed_data_parallel_trainer",
    lazy_args=("data_loader", "optimizer", "lr_scheduler"),
)
class Trainer(LoopRunner):
    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        num_epochs: int | None = None,
        num_steps: int | None = None,
        batch_processor: MultiBatchProcessor | None = None,
        model_convert_pipeline: ModelConvertPipeline | None = None,
        callbacks: Sequence[Callback] = (),
        train_metrics: Sequence[Any] = (),
        val_metrics: Sequence[Metric] = (),
        lr_scheduler: Mapping[str, Any] | None = None,
        sync_bn: bool = False,
        find_unused_parameters: bool = False,
        device: str | None = None,
        post_process: PostProcessFn | None = None,
    ) -> None:
        super().__init__(model, model_convert_pipeline, callbacks, val_metrics, device, post_process)
        if num_epochs is None and num_steps is None:
            raise ValueError("set num_epochs or num_steps")
        for name, value in (("num_epochs", num_epochs), ("num_steps", num_steps)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.data_loader_cfg = data_loader
        self.optimizer_cfg = optimizer
        self.lr_scheduler_cfg = lr_scheduler
        self.num_epochs = num_epochs
        self.num_steps = num_steps
        self.batch_processor = batch_processor or MultiBatchProcessor(need_grad_update=True)
        self.train_metrics = list(train_metrics)  # accepted for reference configs; losses are always logged
        self.sync_bn = sync_bn
        self.find_unused_parameters = find_unused_parameters

    # -- setup ------------------------------------------------------------------------------
    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not distributed.is_distributed():
            return model
        device = self.device()
        if self.sync_bn and device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif self.sync_bn:  # torch's SyncBatchNorm has no CPU kernel; say so instead of failing
            self.print("sync_bn: SyncBatchNorm needs CUDA; on CPU each rank keeps its own BatchNorm statistics")
        return torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=self.find_unused_parameters,
        )

    def _setup(self, ctx: RunContext) -> tuple[LoopState, torch.utils.data.DataLoader]:
        model = self._wrap(self.convert_model(ctx))
        loader = self.build_data_loader(ctx, train=True)
        if len(loader) == 0:
            raise UserError(
                f"the training data loader of {ctx.path} yields no batch",
                where=ctx.locate(f"{ctx.path}.data_loader") if ctx.locate else None,
                hint="check the dataset path and that batch_size is not larger than the dataset with drop_last",
            )
        plain = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        optimizer = build_optimizer(
            self.optimizer_cfg, plain, ctx.registry, path=f"{ctx.path}.optimizer", locate=ctx.locate
        )
        scheduler = None
        if self.lr_scheduler_cfg is not None:
            scheduler = ctx.registry.build(
                self.lr_scheduler_cfg, path=f"{ctx.path}.lr_scheduler", locate=ctx.locate, optimizer=optimizer
            )
        state = LoopState(
            stage=ctx.stage,
            work_dir=ctx.work_dir,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            num_epochs=self.num_epochs,
            num_steps=self.num_steps,
            steps_per_epoch=len(loader),
            global_batch_size=(loader.batch_size or 1) * distributed.world_size(),
            config=ctx.config,
            runner=self,
        )
        if self.num_epochs is None:  # run by steps: enough epochs to cover them
            state.num_epochs = -(-self.num_steps // len(loader))
        return state, loader

    def _resume(self, ctx: RunContext, state: LoopState) -> None:
        """Restore everything from ``-last``; a checkpoint of another model is a UserError.

        The weights go through the same shape/key check as LoadCheckpoint
        (:func:`hat.engine.converters.load_state`), strictly: a resume must restore
        every tensor.
        """
        path = ctx.checkpoint_path("last")
        payload = load_checkpoint(path)
        if "optimizer" not in payload:
            raise UserError(f"{path} cannot be resumed from: it holds no training state")
        if payload.get("stage") != ctx.stage:
            raise UserError(f"{path} was written by stage {payload.get('stage')!r}, not {ctx.stage!r}")
        try:
            load_state(state.plain_model, payload["model"], path, allow_miss=False, ignore_extra=False)
        except UserError as exc:
            raise UserError(
                f"cannot resume: {exc.message}",
                where=str(path),
                hint="resume with the model config that wrote it, or train without --resume "
                "(in another --work-dir to keep it)",
            ) from None
        state.optimizer.load_state_dict(payload["optimizer"])
        if state.scheduler is not None and payload.get("scheduler") is not None:
            state.scheduler.load_state_dict(payload["scheduler"])
        state.epoch = int(payload["epoch"])
        state.step_in_epoch = int(payload["step_in_epoch"])
        state.global_step = int(payload["global_step"])
        state.metrics = dict(payload.get("metrics", {}))
        saved = payload.get("callbacks", {})
        for callback in self.callbacks:
            if callback.state_key() in saved:
                callback.load_state_dict(saved[callback.state_key()])
        restore_rng(payload["rng"])
        self.print(f"resumed from {path}: epoch {state.epoch}, step {state.global_step}")

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, ctx: RunContext) -> LoopState:
        """Train; returns the final loop state (metrics of the last validation included)."""
        self.begin(ctx)
        state, loader = self._setup(ctx)
        if ctx.resume:
            if not ctx.checkpoint_path("last").is_file():
                again = command_for(ctx.task, f"train --stage {ctx.stage}", ctx.work_dir, ctx.config_name)
                raise UserError(
                    f"nothing to resume: {ctx.checkpoint_path('last')} does not exist",
                    hint=f"run `{again}` without --resume",
                )
            self._resume(ctx, state)
        total = state.total_steps
        with self.progress(f"{ctx.stage} training", total):
            self.set_progress(state.global_step)
            self.emit("on_loop_begin", state)
            try:
                self._run_epochs(state, loader)
            except NonFiniteLoss as exc:
                last = ctx.checkpoint_path("last")
                self.log.write({"event": "non_finite_loss", "step": exc.step, **exc.terms})
                raise NonFiniteLoss(exc.step, exc.terms, str(last) if last.is_file() else None) from None
            self.emit("on_loop_end", state)
        return state

    def _done(self, state: LoopState) -> bool:
        return state.stop or (self.num_steps is not None and state.global_step >= self.num_steps)

    def _run_epochs(self, state: LoopState, loader: torch.utils.data.DataLoader) -> None:
        device = self.device()
        while state.epoch < state.num_epochs and not self._done(state):
            set_loader_epoch(loader, state.epoch, skip_batches=state.step_in_epoch)
            state.model.train()
            self.emit("on_epoch_begin", state)
            tic = time.perf_counter()
            for batch in loader:
                self.emit("on_step_begin", state)
                outputs, losses = self.batch_processor(
                    state.model, batch, device, optimizer=state.optimizer, step=state.global_step
                )
                if state.scheduler is not None:
                    state.scheduler.step()
                state.losses = losses
                state.global_step += 1
                state.step_in_epoch += 1
                self.advance()
                self.emit("on_step_end", state, batch=batch, outputs=outputs)
                if self._done(state):
                    break
            finished_epoch = state.step_in_epoch >= state.steps_per_epoch
            if finished_epoch:
                self.emit("on_epoch_end", state)
                self.log.write(
                    {
                        "event": "epoch",
                        "epoch": state.epoch,
                        "step": state.global_step,
                        "seconds": round(time.perf_counter() - tic, 3),
                    }
                )
                state.epoch += 1
                state.step_in_epoch = 0
