"""The learning-rate schedule: linear warmup from 0, flat, then polynomial (power 2) decay to 0.

`lr_at` is the plain-Python value (logs, checkpoints, tests); `make_lr_scheduler` builds the same
schedule from OneFlow schedulers, which the train graph compiles in.
"""
import oneflow as flow


def lr_at(step, schedule):
    """LR used by training step `step` (1-based) under a ScheduleConfig."""
    t = step - 1  # the schedulers count steps already taken
    if t < schedule.decay_start:
        if schedule.warmup_batches > 0 and t < schedule.warmup_batches:
            return schedule.learning_rate * t / schedule.warmup_batches
        return schedule.learning_rate
    t = min(t - schedule.decay_start, schedule.decay_batches)
    return schedule.learning_rate * (1.0 - t / schedule.decay_batches) ** 2


def make_lr_scheduler(optimizer, schedule):
    sched = flow.optim.lr_scheduler
    warmup = sched.LinearLR(optimizer, start_factor=0.0 if schedule.warmup_batches > 0 else 1.0,
                            total_iters=max(schedule.warmup_batches, 1))
    decay = sched.PolynomialLR(optimizer, decay_batch=schedule.decay_batches, end_learning_rate=0.0, power=2.0,
                               cycle=False)
    return sched.SequentialLR(optimizer, schedulers=[warmup, decay], milestones=[schedule.decay_start],
                              interval_rescaling=True)
