"""dlrm_train_eval.py with one fault injected into one rank, for tests/test_faults.py:

    python -m oneflow.distributed.launch --nproc_per_node 2 -m tests.fail_one_rank RANK POINT <training flags>

POINT: `load` (restoring the checkpoint), `step` (reading the 3rd training batch) or `save` (writing
the first checkpoint). The rank raises OSError there, as a failed disk or file read would; the
training code itself runs unchanged.
"""
import os
import sys

import dlrm_train_eval as train

RANK, POINT = int(sys.argv[1]), sys.argv[2]
HERE = int(os.environ.get("RANK", "0")) == RANK


def fault():
    raise OSError(f"injected fault: rank {RANK} at {POINT}")


if HERE and POINT == "load":
    train.restore = lambda *a, **k: fault()
elif HERE and POINT == "save":
    train.save_checkpoint = lambda *a, **k: fault()
elif HERE and POINT == "step":
    class FailingReader(train.BatchReader):
        def __next__(self):
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 3:
                fault()
            return super().__next__()

    train.BatchReader = FailingReader

if __name__ == "__main__":
    sys.exit(train.failfast.run(train.main, sys.argv[3:]))
