"""LR updaters against hand-computed schedules, driven through the loop's hook order."""

from __future__ import annotations

import pytest
import torch

from hat.engine.callbacks.lr_updater import CosLrUpdater, StepDecayLrUpdater
from hat.registry import marked_name
from tests.engine.loop_sim import LrRecorder, make_state, run_loop


def _optimizer(*base_lrs: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in base_lrs])
    groups = [{"params": layer.parameters(), "lr": lr} for layer, lr in zip(model, base_lrs, strict=True)]
    return model, torch.optim.SGD(groups, lr=base_lrs[0], momentum=0.9)


def _schedule(updater, *, num_epochs: int, steps_per_epoch: int, base_lrs=(0.1,)) -> dict[int, list[float]]:
    model, optimizer = _optimizer(*base_lrs)
    state = make_state(model, optimizer, num_epochs=num_epochs, steps_per_epoch=steps_per_epoch)
    recorder = LrRecorder()
    run_loop(state, [updater, recorder])
    assert len(recorder.lrs) == num_epochs * steps_per_epoch
    return recorder.lrs


def _first(lrs: dict[int, list[float]]) -> dict[int, float]:
    return {step: values[0] for step, values in lrs.items()}


def test_cosine_with_step_warmup_matches_hand_values() -> None:
    # base 0.1, 2 warmup steps from 0, then cosine over the remaining T = 10 - 2 = 8 steps.
    lrs = _first(_schedule(CosLrUpdater(warmup_len=2, warmup_by="step"), num_epochs=1, steps_per_epoch=10))
    expected = {
        0: 0.0,  # warmup start: base * 0
        1: 0.05,  # half way up
        2: 0.1,  # t = 0
        3: 0.1 * 0.9619397662556434,  # (1 + cos(pi/8)) / 2
        4: 0.1 * 0.8535533905932737,  # (1 + cos(pi/4)) / 2
        6: 0.05,  # t = 4 = T/2
        9: 0.1 * 0.038060233744356624,  # (1 + cos(7pi/8)) / 2
    }
    for step, value in expected.items():
        assert lrs[step] == pytest.approx(value, abs=1e-12), step


def test_cosine_epoch_warmup_is_per_step_and_respects_min_ratio() -> None:
    # 3 epochs x 4 steps; warmup 1 epoch = 4 steps from 0.1 * base; min = 0.1 * base = 0.01; T = 8.
    updater = CosLrUpdater(warmup_len=1, warmup_by="epoch", warmup_lr_ratio=0.1, min_lr_ratio=0.1)
    lrs = _first(_schedule(updater, num_epochs=3, steps_per_epoch=4))
    expected = {
        0: 0.01,  # 0.1 * 0.1
        1: 0.0325,  # 0.1 * (0.1 + 0.9 * 1/4)
        2: 0.055,  # 0.1 * (0.1 + 0.9 * 2/4)
        3: 0.0775,  # 0.1 * (0.1 + 0.9 * 3/4)
        4: 0.1,
        8: 0.055,  # 0.01 + 0.09 * 0.5
        11: 0.01 + 0.09 * 0.038060233744356624,
    }
    for step, value in expected.items():
        assert lrs[step] == pytest.approx(value, abs=1e-12), step


def test_cosine_by_epoch_is_constant_within_an_epoch() -> None:
    # 5 epochs x 3 steps, no warmup: lr(epoch e) = 0.1 * (1 + cos(pi * e / 5)) / 2.
    lrs = _first(_schedule(CosLrUpdater(update_by="epoch"), num_epochs=5, steps_per_epoch=3))
    per_epoch = {0: 0.1, 1: 0.09045084971874737, 2: 0.06545084971874737, 4: 0.009549150281252629}
    for epoch, value in per_epoch.items():
        for step in range(epoch * 3, epoch * 3 + 3):
            assert lrs[step] == pytest.approx(value, abs=1e-12), (epoch, step)


def test_two_groups_keep_their_ratio() -> None:
    lrs = _schedule(
        CosLrUpdater(warmup_len=1, warmup_lr_ratio=0.2, min_lr_ratio=0.05),
        num_epochs=3,
        steps_per_epoch=4,
        base_lrs=(0.1, 0.01),
    )
    for step, (high, low) in lrs.items():
        assert high == pytest.approx(10 * low, rel=1e-12), step
    assert lrs[0] == pytest.approx([0.02, 0.002])


def test_step_decay_by_epoch_at_the_boundaries() -> None:
    # Decay at epochs 2 and 4, 2 steps per epoch: epochs 0-1 -> 0.1, 2-3 -> 0.01, 4-5 -> 0.001.
    lrs = _first(_schedule(StepDecayLrUpdater(lr_decay_id=[2, 4]), num_epochs=6, steps_per_epoch=2))
    expected = {0: 0.1, 3: 0.1, 4: 0.01, 7: 0.01, 8: 0.001, 11: 0.001}
    for step, value in expected.items():
        assert lrs[step] == pytest.approx(value, rel=1e-12), step


def test_step_decay_by_step_with_warmup() -> None:
    # Warmup 1 epoch (4 steps) from 0; decay by 0.5 at steps 6 and 9.
    updater = StepDecayLrUpdater(lr_decay_id=[9, 6], lr_decay_factor=0.5, step_by="step", warmup_len=1)
    lrs = _first(_schedule(updater, num_epochs=3, steps_per_epoch=4))
    expected = {0: 0.0, 1: 0.025, 2: 0.05, 3: 0.075, 4: 0.1, 5: 0.1, 6: 0.05, 8: 0.05, 9: 0.025, 11: 0.025}
    for step, value in expected.items():
        assert lrs[step] == pytest.approx(value, rel=1e-12, abs=1e-15), step


def test_resume_from_a_checkpointed_optimizer_is_exact() -> None:
    full = _schedule(CosLrUpdater(warmup_len=3, warmup_by="step"), num_epochs=3, steps_per_epoch=4, base_lrs=(0.1, 0.3))

    # First run stops after 6 steps (mid-epoch 1); its optimizer state carries initial_lr.
    model, optimizer = _optimizer(0.1, 0.3)
    state = make_state(model, optimizer, num_epochs=3, steps_per_epoch=4)
    run_loop(state, [CosLrUpdater(warmup_len=3, warmup_by="step")], stop_after=6)
    saved = optimizer.state_dict()
    assert [g["lr"] for g in saved["param_groups"]] != [0.1, 0.3]  # decayed, must not become the base

    model2, optimizer2 = _optimizer(0.1, 0.3)
    optimizer2.load_state_dict(saved)
    resumed = make_state(model2, optimizer2, num_epochs=3, steps_per_epoch=4)
    resumed.epoch, resumed.global_step, resumed.step_in_epoch = state.epoch, state.global_step, state.step_in_epoch
    recorder = LrRecorder()
    run_loop(resumed, [CosLrUpdater(warmup_len=3, warmup_by="step"), recorder])
    assert sorted(recorder.lrs) == list(range(6, 12))
    for step, values in recorder.lrs.items():
        assert values == pytest.approx(full[step], rel=1e-12), step


def test_group_lr_already_scaled_is_the_base() -> None:
    # A builder that applied a per-group multiplier to "lr" before the loop: that is the group's base.
    model, optimizer = _optimizer(0.1, 0.1)
    optimizer.param_groups[1]["lr"] = 0.1 * 0.5
    state = make_state(model, optimizer, num_epochs=1, steps_per_epoch=4)
    CosLrUpdater().on_loop_begin(state)
    assert [g["initial_lr"] for g in optimizer.param_groups] == [0.1, 0.05]


@pytest.mark.parametrize(
    "build",
    [
        lambda: CosLrUpdater(warmup_by="iter"),
        lambda: CosLrUpdater(update_by="iteration"),
        lambda: CosLrUpdater(min_lr_ratio=1.5),
        lambda: CosLrUpdater(warmup_lr_ratio=-0.1),
        lambda: CosLrUpdater(warmup_len=-1),
        lambda: CosLrUpdater(step_log_interval=0),
        lambda: StepDecayLrUpdater(lr_decay_id=[3, -1]),
        lambda: StepDecayLrUpdater(lr_decay_id="30"),
        lambda: StepDecayLrUpdater(lr_decay_id=[3], lr_decay_factor=0.0),
        lambda: StepDecayLrUpdater(lr_decay_id=[3], step_by="iter"),
    ],
)
def test_bad_arguments_are_value_errors(build) -> None:
    with pytest.raises(ValueError):
        build()


def test_unknown_length_fails_at_loop_begin() -> None:
    model, optimizer = _optimizer(0.1)
    state = make_state(model, optimizer, num_epochs=None, steps_per_epoch=0)
    with pytest.raises(ValueError, match="num_steps"):
        CosLrUpdater().on_loop_begin(state)
    with pytest.raises(ValueError, match="steps per epoch"):
        StepDecayLrUpdater(lr_decay_id=[1], warmup_len=1).on_loop_begin(state)


def test_updaters_are_marked_for_the_registry() -> None:
    assert marked_name(CosLrUpdater) == "CosLrUpdater"
    assert marked_name(StepDecayLrUpdater) == "StepDecayLrUpdater"
