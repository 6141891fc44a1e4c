"""Fast unit tests of the sharded, resumable parquet reader on a tiny real dataset.

In write_tiny_dataset every row's I1 is its global row number, so a batch says where it came from."""
import numpy as np
import pytest

from dlrm.data import BatchReader, eval_batches_per_rank, fresh_plan, list_row_groups, resume_plan, split_files


def groups(root, split="train"):
    return list_row_groups(split_files(root, split))


def take(reader, n):
    try:
        return [next(reader) for _ in range(n)]
    finally:
        reader.close()


def rows_of(batches):
    """The global row numbers of the real (not padding) rows."""
    return [int(x) for b in batches for x in b.dense[:b.rows, 0]]


def test_batches_have_the_model_layout(tiny_dataset):
    (label, dense, sparse, rows), = take(BatchReader(groups(tiny_dataset), 8, 0, 1, train=True), 1)
    assert rows == 8
    assert label.shape == (8, 1) and label.dtype == np.float32
    assert dense.shape == (8, 13) and dense.dtype == np.float32
    assert sparse.shape == (8, 26) and sparse.dtype == np.int64
    np.testing.assert_array_equal(label[:, 0], dense[:, 0] % 2)


def test_ranks_read_disjoint_row_groups_covering_the_epoch(tiny_dataset):
    g = groups(tiny_dataset)  # 12 row groups of 20 rows: 6 per rank, 120 rows = 12 batches of 10
    per_rank = [rows_of(take(BatchReader(g, 10, r, 2, train=True, seed=5), 12)) for r in (0, 1)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(240))


def test_epochs_reshuffle_and_repeat_every_row(tiny_dataset):
    rows = rows_of(take(BatchReader(groups(tiny_dataset), 30, 0, 1, train=True, seed=1), 16))  # 2 epochs
    first, second = rows[:240], rows[240:]
    assert sorted(first) == sorted(second) == list(range(240)) and first != second


@pytest.mark.parametrize("consumed,workers", [(0, 1), (1, 3), (7, 1), (13, 2), (30, 4)])
def test_resume_position_gives_the_same_batches(tiny_dataset, consumed, workers):
    g = groups(tiny_dataset)
    straight = rows_of(take(BatchReader(g, 9, 1, 2, train=True, seed=3), consumed + 4))
    resumed = rows_of(take(BatchReader(g, 9, 1, 2, train=True, seed=3, start_batch=consumed, workers=workers), 4))
    assert resumed == straight[consumed * 9:]
    reader = BatchReader(g, 9, 1, 2, train=True, seed=3)
    epoch, segment, row = reader.position(consumed)
    reader.close()
    assert (epoch, segment, row) == divmod(consumed * 9, 120)[:1] + divmod(consumed * 9 % 120, 20)


@pytest.mark.parametrize("workers", [1, 3])
def test_batches_do_not_depend_on_the_number_of_decode_threads(tiny_dataset, workers):
    g = groups(tiny_dataset)
    one = take(BatchReader(g, 7, 0, 1, train=True, seed=2), 70)
    many = take(BatchReader(g, 7, 0, 1, train=True, seed=2, workers=workers), 70)
    for a, b in zip(one, many):
        for x, y in zip(a[:3], b[:3]):
            np.testing.assert_array_equal(x, y)


def test_eval_covers_every_row_with_a_padded_tail(tiny_dataset):
    g = groups(tiny_dataset, "test")  # 100 rows, numbered 240..339
    assert eval_batches_per_rank(g, 30, 3) == 4  # slices of 33, 33, 34 rows in batches of 10
    slices = [list(BatchReader(g, 10, r, 3, train=False, max_batches=4)) for r in range(3)]
    assert [len(s) for s in slices] == [4, 4, 4]
    assert [[b.rows for b in s] for s in slices] == [[10, 10, 10, 3], [10, 10, 10, 3], [10, 10, 10, 4]]
    assert sorted(x for s in slices for x in rows_of(s)) == list(range(240, 340))
    last = slices[0][-1]
    assert last.dense.shape == (10, 13) and (last.dense[3:] == 0).all()
    assert (last.sparse[3:] == 240 % 7 + 7 * np.arange(26)).all()  # the split's first row's ids, real ones
    # Ranks with less data run empty batches, so that every rank takes the same number of steps.
    padded_out = list(BatchReader(g, 10, 0, 3, train=False, max_batches=6))
    assert [b.rows for b in padded_out] == [10, 10, 10, 3, 0, 0] and padded_out[-1].sparse.dtype == np.int64
    assert [b.rows for b in BatchReader(g, 10, 0, 1, train=False, max_batches=4)] == [10] * 4
    assert [b.rows for b in BatchReader(g, 40, 0, 1, train=False)] == [40, 40, 20]


@pytest.mark.parametrize("old_world,old_batch,step,new_world,new_batch", [
    (2, 10, 5, 1, 20), (1, 20, 5, 2, 10),  # 2 -> 1 and 1 -> 2 processes, same global batch
    (5, 10, 5, 2, 8),  # uneven shares: ranks 2-4 are 10 rows into epoch 1, ranks 0-1 not yet
    (2, 10, 17, 3, 7)])  # another global batch too
def test_a_run_resumed_on_other_processes_reads_every_row_once(tiny_dataset, old_world, old_batch, step,
                                                               new_world, new_batch):
    g = groups(tiny_dataset)  # 240 rows
    old = [rows_of(take(BatchReader(g, old_batch, r, old_world, train=True, seed=2), step))
           for r in range(old_world)]
    plan = resume_plan(g, 2, fresh_plan(old_world), old_batch, step, new_world)
    epochs = plan["first_epoch"]
    prefix = [sum(b - a for _, a, b in part) for part in plan["prefix"]]
    assert sum(prefix) == 240 * epochs - old_world * old_batch * step and max(prefix) - min(prefix) <= 1
    new = []
    for r in range(new_world):
        reader = BatchReader(g, new_batch, r, new_world, train=True, seed=2, start_batch=step, plan=plan)
        rows = rows_of(take(reader, -(-prefix[r] // new_batch) + 30 // new_batch + 1))
        new.append(rows)
        assert BatchReader(g, new_batch, r, new_world, True, seed=2, plan=plan).position(step)[0] == epochs - 1
    # The interrupted run's rows and the new ranks' prefixes: every row once in each started epoch;
    # then the new ranks go on with whole epochs of their own sharding.
    read = np.bincount(sum(old, []) + sum((rows[:n] for rows, n in zip(new, prefix)), []), minlength=240)
    assert (read == epochs).all(), read
    after = sum((rows[n:] for rows, n in zip(new, prefix)), [])
    assert len(set(after)) == len(after)  # the first rows of the next epoch, no repeats
