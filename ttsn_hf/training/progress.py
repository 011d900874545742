"""How long the rest of the schedule will take, said once after the first steps (a busy machine can be 10x slower
than the README's figure)."""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class ScheduleEstimateCallback(TrainerCallback):
    """After ``after_steps`` steps of a stage, logs the time the run's remaining steps will take at the speed so
    far: this stage's steps, and each later stage's epochs at this stage's steps per epoch (or its --max_steps)."""

    def __init__(self, later_epochs: list[int], after_steps: int = 5):
        self.later_epochs, self.after_steps = later_epochs, after_steps
        self.started: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.started is None:
            self.started, self.first_step = time.monotonic(), state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        done = state.global_step - self.first_step
        if self.started is None or done != self.after_steps or not state.is_world_process_zero:
            return
        per_step = (time.monotonic() - self.started) / done
        if args.max_steps > 0:
            later = args.max_steps * len(self.later_epochs)
        else:
            later = sum(self.later_epochs) * state.max_steps / max(args.num_train_epochs, 1)
        left = state.max_steps - state.global_step + later
        logger.info(
            "%.1f s per step over the first %d: about %.0f min of training left (%d steps; validation and "
            "mining come on top)",
            per_step,
            done,
            left * per_step / 60,
            left,
        )
