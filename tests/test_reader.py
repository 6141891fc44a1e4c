"""Fast unit tests of the sharded, resumable parquet reader on a tiny real dataset.

In write_tiny_dataset every row's I1 is its global row number, so a batch says where it came from."""
import numpy as np
import pytest

from dlrm.data import BatchReader, list_row_groups, split_files


def groups(root, split="train"):
    return list_row_groups(split_files(root, split))


def take(reader, n):
    try:
        return [next(reader) for _ in range(n)]
    finally:
        reader.close()


def rows_of(batches):
    return [int(x) for _, dense, _ in batches for x in dense[:, 0]]


def test_batches_have_the_model_layout(tiny_dataset):
    (label, dense, sparse), = take(BatchReader(groups(tiny_dataset), 8, 0, 1, train=True), 1)
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


@pytest.mark.parametrize("consumed", [0, 1, 7, 13, 30])
def test_resume_position_gives_the_same_batches(tiny_dataset, consumed):
    g = groups(tiny_dataset)
    straight = rows_of(take(BatchReader(g, 9, 1, 2, train=True, seed=3), consumed + 4))
    resumed = rows_of(take(BatchReader(g, 9, 1, 2, train=True, seed=3, start_batch=consumed), 4))
    assert resumed == straight[consumed * 9:]
    reader = BatchReader(g, 9, 1, 2, train=True, seed=3)
    epoch, segment, row = reader.position(consumed)
    reader.close()
    assert (epoch, segment, row) == divmod(consumed * 9, 120)[:1] + divmod(consumed * 9 % 120, 20)


def test_eval_slices_are_equal_contiguous_and_bounded(tiny_dataset):
    g = groups(tiny_dataset, "test")  # 100 rows, numbered 240..339
    slices = [rows_of(list(BatchReader(g, 10, r, 3, train=False))) for r in range(3)]
    assert [len(s) for s in slices] == [30, 30, 30]  # 33 rows each, full batches only
    assert slices[0] == list(range(240, 270)) and slices[1][0] == 273 and slices[2][0] == 306
    assert len(list(BatchReader(g, 10, 0, 1, train=False, max_batches=4))) == 4
