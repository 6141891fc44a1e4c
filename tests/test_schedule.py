"""The LR schedule (dlrm/schedule.py): warmup, flat, polynomial decay, as a function and as the
OneFlow schedulers the graph compiles; the original's default schedule."""
import oneflow as flow
import pytest

from dlrm.config import ScheduleConfig, get_parser
from dlrm.schedule import lr_at, make_lr_scheduler


def test_lr_schedule_matches_oneflow_schedulers():
    args = ScheduleConfig(learning_rate=24.0, warmup_batches=10, decay_start=30, decay_batches=15, train_batches=60)
    assert lr_at(1, args) == 0.0
    assert lr_at(6, args) == pytest.approx(12.0)
    assert lr_at(11, args) == 24.0 and lr_at(30, args) == 24.0
    assert lr_at(31, args) == 24.0 and lr_at(32, args) == pytest.approx(24 * (1 - 1 / 15) ** 2)
    assert lr_at(45, args) == pytest.approx(24 * (1 / 15) ** 2)
    assert lr_at(46, args) == 0.0 and lr_at(100, args) == 0.0
    # The graph compiles OneFlow's schedulers; they must give the same value at every step.
    param = flow.nn.Parameter(flow.zeros(1))
    opt = flow.optim.SGD([param], lr=args.learning_rate)
    sched = make_lr_scheduler(opt, args)
    for step in range(1, 60):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(step, args), abs=1e-9), step
        opt.step()
        sched.step()


def test_original_default_schedule_values():
    a = get_parser().parse_args(["--data_dir", "x"])
    args = ScheduleConfig(a.learning_rate, a.warmup_batches, a.decay_start, a.decay_batches, a.train_batches)
    assert lr_at(2751, args) == 24.0
    assert lr_at(75000, args) == pytest.approx(24 * (1 - 25684 / 27772) ** 2)
