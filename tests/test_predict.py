"""dlrm_predict.py: predictions from a checkpoint, on parquet splits and raw Criteo text (real OneFlow,
real Spark, real checkpoints, real subprocess launches).

Fast: the planning and ordering helpers, and whole in-process runs on a tiny parquet dataset with a
checkpoint written by dlrm.checkpoint (every refusal is one line). Slow: raw text in each id mode
(mod, hash, vocabulary) through the preprocessing tool and dlrm_predict.py in one process (one JVM),
and a model trained by dlrm_train_eval.py on real Kaggle rows scored as its parquet test split, as
raw text with and without labels, on the real unlabeled test rows, and by two processes.
"""
import gzip
import os
import shutil

import numpy as np
import oneflow as flow
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import KAGGLE_HEAD, REPO, SYNTH_TOOL, TRAIN_SCRIPT, error_lines, read_metrics, requires_java, \
    run_tool, write_tiny_dataset
from dlrm import quickstart, schema
from dlrm.checkpoint import save_checkpoint, train_state
from dlrm.config import get_parser, resolve
from dlrm.data import BatchReader, eval_batches_per_rank, list_row_groups
from dlrm.distributed import cpu_placement
from dlrm.launch import free_port
from dlrm.model import DLRM
from dlrm.predict import PredictError, order_by_slices, output_format, plan_input
from dlrm.preprocess.rows import RowsError, has_labels
import dlrm_predict

PREDICT_SCRIPT = os.path.join(REPO, "dlrm_predict.py")
KAGGLE_TEST_UNLABELED = os.path.join(REPO, "..", "shared", "criteo", "kaggle_sample_test18k_unlabeled.tsv")
TINY_MODEL = ["--bottom_mlp", "16,8", "--embedding_vec_size", "8", "--top_mlp", "16"]


def read_output(path):
    """{column: values}; probabilities as float32 (what the model gives; CSV holds their shortest text)."""
    table = pacsv.read_csv(path) if path.endswith(".csv") else pq.read_table(path)
    out = {c: table.column(c).to_pylist() for c in table.column_names}
    out["probability"] = table.column("probability").cast(pa.float32()).to_pylist()
    return out


def write_checkpoint(data_dir, save_dir, seed=0):
    """A weights checkpoint of a freshly initialised tiny model for data_dir, as dlrm_train_eval.py
    writes them (train_state.json with the run's configuration)."""
    args = get_parser().parse_args(["--data_dir", str(data_dir), "--device", "cpu", *TINY_MODEL,
                                                    "--train_batch_size", "20", "--eval_batch_size", "30"])
    cfg = resolve(args, 1, cuda_available=False)
    np.random.seed(seed)
    flow.manual_seed(seed)
    module = DLRM(cfg.model, cfg.store, "cpu")
    module.to_global(cpu_placement(), flow.sbp.broadcast)
    return save_checkpoint(module, str(save_dir), "step_0", train_state(0, cfg))


def predict(capsys, *argv):
    """dlrm_predict.main in this process: (exit code, stdout, stderr)."""
    code = dlrm_predict.main(["--device", "cpu", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- fast: helpers
def test_plan_input_kinds_and_order(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("b.tsv", "a.txt.gz", ".hidden", "_SUCCESS"):
        (raw / name).write_text("")
    assert plan_input(str(raw)).files == [str(raw / "a.txt.gz"), str(raw / "b.tsv")]
    assert plan_input(str(raw / "b.tsv")).kind == "raw"
    assert plan_input(str(raw / "*.tsv")).files == [str(raw / "b.tsv")]
    data = write_tiny_dataset(str(tmp_path / "d"))
    split = plan_input(os.path.join(data, "test"))
    assert split.kind == "parquet" and len(split.files) == 1
    (tmp_path / "empty").mkdir()
    for bad, needle in ((tmp_path / "nope", "no such file"), (tmp_path / "empty", "empty directory"),
                        (os.path.join(data, "test", "*.parquet"), "as its directory")):
        with pytest.raises(PredictError, match=needle):
            plan_input(str(bad))


def test_output_format(tmp_path):
    assert output_format(str(tmp_path / "p.CSV")) == "csv" and output_format(str(tmp_path / "p.parquet")) == "parquet"
    with pytest.raises(PredictError, match="must end in .csv or .parquet"):
        output_format(str(tmp_path / "p.txt"))
    with pytest.raises(PredictError, match="no such directory"):
        output_format(str(tmp_path / "no" / "p.csv"))
    (tmp_path / "old.csv").write_text("x\n")
    (tmp_path / "dir.csv").mkdir()
    os.symlink(tmp_path / "old.csv", tmp_path / "link.csv")
    with pytest.raises(PredictError, match=r"old.csv exists: pass --overwrite to replace it"):
        output_format(str(tmp_path / "old.csv"))
    assert output_format(str(tmp_path / "old.csv"), overwrite=True) == "csv"
    for name in ("dir.csv", "link.csv"):  # nothing this tool writes: never replaced
        with pytest.raises(PredictError, match=f"{name} exists and is not a regular file"):
            output_format(str(tmp_path / name), overwrite=True)


def test_has_labels_per_file(tmp_path):
    line40 = "1" + "\t5" * 13 + "\tab" * 26 + "\n"
    line39 = line40.split("\t", 1)[1]
    (tmp_path / "a.tsv").write_text(line40 * 3 + "broken\n")
    with gzip.open(tmp_path / "b.gz", "wt") as f:
        f.write(line39 * 2)
    (tmp_path / "c.tsv").write_text("x\ty\n" * 3)
    assert has_labels(str(tmp_path / "a.tsv")) is True
    assert has_labels(str(tmp_path / "b.gz")) is False
    with pytest.raises(RowsError, match="c.tsv: its first lines have 2 tab-separated fields"):
        has_labels(str(tmp_path / "c.tsv"))


def test_order_by_slices_restores_input_order(tmp_path):
    """The gathered batches of 3 ranks (BatchReader slices, last batches padded) back in row order: I1 is
    the row number of the tiny dataset."""
    groups = list_row_groups([os.path.join(write_tiny_dataset(str(tmp_path / "d")), "test", "part-00000.parquet")])
    world, per_rank = 3, 8
    nb = eval_batches_per_rank(groups, per_rank * world, world)
    readers = [list(BatchReader(groups, per_rank, r, world, train=False, max_batches=nb)) for r in range(world)]
    gathered = np.concatenate([readers[r][i].dense[:, 0] for i in range(nb) for r in range(world)])
    rows = order_by_slices(gathered, groups, per_rank, world)
    first = pq.read_table(groups[0][0]).column("I1").to_numpy()
    np.testing.assert_array_equal(rows, first)
    assert len(rows) == 100


# ----------------------------------------------------------------------------- fast: whole runs on parquet
@pytest.fixture
def tiny_run(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "data"))
    return data, write_checkpoint(data, tmp_path / "run")


def test_parquet_split_scores_every_row_in_order(tiny_run, tmp_path, capsys):
    data, ckpt = tiny_run
    code, out, err = predict(capsys, "--model_load_dir", ckpt, "--input", os.path.join(data, "test"),
                             "--output", tmp_path / "p.csv", "--batch_size", "7")
    assert code == 0, err
    got = read_output(str(tmp_path / "p.csv"))
    assert got["row"] == list(range(100)) and got["label"] == [r % 2 for r in range(200, 300)]
    assert all(0 < p < 1 for p in got["probability"])
    last = out.strip().splitlines()[-1]
    assert "done: 100 rows" in last and "0 malformed" in last and "AUC" in last and "log loss" in last
    # the same rows at another batch size, to parquet: the same probabilities (to float32 rounding:
    # MKL, the CPU default, picks its GEMM kernel by the batch's row count, so bits may differ)
    code, _, err = predict(capsys, "--model_load_dir", ckpt, "--input", os.path.join(data, "test"),
                           "--output", tmp_path / "p.parquet")
    assert code == 0, err
    again = pq.read_table(tmp_path / "p.parquet")
    np.testing.assert_allclose(again.column("probability").to_numpy(),
                               np.asarray(got["probability"], np.float32), rtol=1e-5)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")], "temporary files left behind"


def test_an_existing_output_needs_overwrite(tiny_run, tmp_path, capsys):
    """The preprocessing tool's rule: an existing output stops the run in one line before any work,
    unless --overwrite, which replaces a regular file only."""
    data, ckpt = tiny_run
    common = ["--model_load_dir", ckpt, "--input", os.path.join(data, "test")]
    (tmp_path / "p.csv").write_text("keep me\n")
    code, out, err = predict(capsys, *common, "--output", tmp_path / "p.csv")
    assert code == 2 and error_lines(err) == [f"error: --output {tmp_path / 'p.csv'} exists: pass --overwrite to "
                                              f"replace it (or choose another name)"], err
    assert (tmp_path / "p.csv").read_text() == "keep me\n" and "scoring" not in out
    code, _, err = predict(capsys, *common, "--output", tmp_path / "p.csv", "--overwrite")
    assert code == 0, err
    assert read_output(str(tmp_path / "p.csv"))["row"] == list(range(100))
    (tmp_path / "d.csv").mkdir()
    code, _, err = predict(capsys, *common, "--output", tmp_path / "d.csv", "--overwrite")
    assert code == 2 and error_lines(err) == [f"error: --output {tmp_path / 'd.csv'} exists and is not a regular "
                                              f"file: choose another name"], err
    assert os.path.isdir(tmp_path / "d.csv") and not os.listdir(tmp_path / "d.csv")


def dead_pid():
    """The pid of a process that has ended (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_later_run_removes_what_a_killed_one_left(tiny_run, tmp_path, capsys):
    """.OUT.tmp-<pid> and .OUT.rows-<pid>/ of a dead process are a killed run's: the next run on the
    same output removes them (one note each); a live process's, another output's and other files
    stay."""
    import subprocess
    import sys

    data, ckpt = tiny_run
    out = tmp_path / "out"
    out.mkdir()
    dead = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / f".p.csv.tmp-{dead}").write_text("partial")
        (out / f".p.csv.rows-{dead}").mkdir()
        (out / f".p.csv.rows-{dead}" / "part-0.parquet").write_text("rows")
        kept = [f".p.csv.tmp-{live.pid}", f".q.csv.tmp-{dead}", f".p.csv.tmp-{dead}x", "notes.txt"]
        for name in kept:
            (out / name).write_text("not ours to remove")
        code, _, err = predict(capsys, "--model_load_dir", ckpt, "--input", os.path.join(data, "test"),
                               "--output", out / "p.csv")
        assert code == 0, err
        assert sorted(os.listdir(out)) == sorted(kept + ["p.csv"])
        assert f"note: removed {out / f'.p.csv.rows-{dead}'}, left by a run of this tool that was killed" in err
    finally:
        live.kill()
        live.wait()


def test_several_checkpoints_give_the_mean_of_their_probabilities(tiny_run, tmp_path, capsys):
    data, ckpt = tiny_run
    other = write_checkpoint(data, tmp_path / "run2", seed=1)
    test = os.path.join(data, "test")
    single = []
    for i, c in enumerate((ckpt, other)):
        code, _, err = predict(capsys, "--model_load_dir", c, "--input", test, "--output", tmp_path / f"{i}.parquet")
        assert code == 0, err
        single.append(pq.read_table(tmp_path / f"{i}.parquet").column("probability").to_numpy())
    assert np.abs(single[0] - single[1]).max() > 1e-3  # two different models
    code, out, err = predict(capsys, "--model_load_dir", ckpt, other, "--input", test,
                             "--output", tmp_path / "e.parquet")
    assert code == 0, err
    both = pq.read_table(tmp_path / "e.parquet")
    assert both.column("row").to_pylist() == list(range(100))
    np.testing.assert_allclose(both.column("probability").to_numpy(), (single[0] + single[1]) / 2, rtol=1e-6)
    assert "the mean of 2 models' probabilities" in out and "done: 100 rows" in out
    # a model of another dataset, or one store path for several models: one line, nothing written
    elsewhere = write_checkpoint(write_tiny_dataset(str(tmp_path / "d9"), table_sizes=(9,) * 26), tmp_path / "run9")
    for extra, needle in (([elsewhere], f"the checkpoint {elsewhere} [9, 9"),
                          ([other, "--persistent_path", tmp_path / "s"], "--persistent_path names one")):
        code, out, err = predict(capsys, "--model_load_dir", ckpt, *extra, "--input", test,
                                 "--output", tmp_path / "x.csv")
        lines = error_lines(err)
        assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not os.path.exists(tmp_path / "x.csv")


def test_refusals_are_one_line(tiny_run, tmp_path, capsys):
    data, ckpt = tiny_run
    test = os.path.join(data, "test")
    other = write_tiny_dataset(str(tmp_path / "other"), table_sizes=(9,) * 26)
    int32 = write_tiny_dataset(str(tmp_path / "int32"), key_type="int32")
    no_state = tmp_path / "no_state"
    shutil.copytree(ckpt, no_state)
    os.remove(no_state / "train_state.json")  # and its manifest: an original-script checkpoint has neither
    os.remove(no_state / "MANIFEST.json")
    moved = tmp_path / "moved"
    (tmp_path / "raw.tsv").write_text("1" + "\t" * 39 + "\n")
    cases = [
        (["--model_load_dir", tmp_path / "nope", "--input", test, "--output", tmp_path / "o.csv"],
         "no such checkpoint directory"),
        (["--model_load_dir", no_state, "--input", test, "--output", tmp_path / "o.csv"], "no train_state.json"),
        (["--model_load_dir", ckpt, "--input", test, "--output", tmp_path / "o.txt"], "must end in .csv or .parquet"),
        (["--model_load_dir", ckpt, "--input", tmp_path / "nope", "--output", tmp_path / "o.csv"], "no such file"),
        (["--model_load_dir", ckpt, "--input", test, "--output", tmp_path / "o.csv", "--data_dir", other],
         "table sizes"),
        (["--model_load_dir", ckpt, "--input", os.path.join(int32, "test"), "--output", tmp_path / "o.csv"],
         "holds int32 ids, the checkpoint's model int64"),
        (["--model_load_dir", ckpt, "--input", test, "--output", tmp_path / "o.csv", "--data_dir", moved],
         "--data_dir"),
        (["--model_load_dir", ckpt, "--input", test, "--output", tmp_path / "o.csv", "--batch_size", "0"],
         "--batch_size 0"),
        # the tiny dataset records no id mode: raw rows cannot be given its ids
        (["--model_load_dir", ckpt, "--input", tmp_path / "raw.tsv", "--output", tmp_path / "o.csv"],
         "records no id mode"),
    ]
    for argv, needle in cases:
        code, out, err = predict(capsys, *argv)
        assert code == 2, (argv, out, err)
        lines = error_lines(err)
        assert len(lines) == 1 and needle in lines[0], (needle, err)
        assert "done:" not in out
    assert not os.path.exists(tmp_path / "o.csv")


def test_dataset_of_another_id_mode_is_refused(tmp_path, capsys):
    data = write_tiny_dataset(str(tmp_path / "data"))
    info = dict(schema.read_dataset_info(data), id_mode="mod", mod_idx=7, min_frequency=0)
    schema.write_dataset_info(data, info)
    ckpt = write_checkpoint(data, tmp_path / "run")
    other = write_tiny_dataset(str(tmp_path / "other"))
    schema.write_dataset_info(other, dict(info, id_mode="hash", mod_idx=0))
    code, _, err = predict(capsys, "--model_load_dir", ckpt, "--input", os.path.join(other, "test"),
                           "--output", tmp_path / "o.csv", "--data_dir", other)
    assert code == 2 and "differs from the dataset" in err and "id_mode, mod_idx" in err, err


# ----------------------------------------------------------------------------- slow: raw text, each id mode
def split_lines(path, first, end):
    with open(path) as f:
        return [ln for i, ln in enumerate(f) if first <= i < end]


@pytest.mark.slow
@requires_java
def test_raw_text_gets_the_preprocessing_ids_in_every_mode(tmp_path, capsys):
    """Synthetic Kaggle-layout rows preprocessed with hash and vocabulary ids (the real tool, in
    this process: one JVM); the test split's raw lines, with labels, without (gzip) and with malformed
    lines between them, score exactly as the parquet test split (bit for bit), in order."""
    from dlrm.preprocess import cli

    run_tool(SYNTH_TOOL, "--output_dir", tmp_path / "raw", "--days", "1", "--rows_per_day", "1400", "--kaggle",
             "--seed", "3")
    raw = str(tmp_path / "raw" / "train.txt")
    test = split_lines(raw, 1200, 1300)  # the kaggle rule: lines [6n/7, 6n/7 + (n - 6n/7) // 2)
    bad = ["0\t1\tbroken\n", "2" + "\t" * 39 + "\n"]  # field_count, label
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "a.tsv").write_text("".join(test[:10] + bad + test[10:]))
    with gzip.open(inp / "b.tsv.gz", "wt") as f:
        f.write("".join(ln.split("\t", 1)[1] for ln in test))
    spark = ["--spark_master", "local[2]", "--spark_driver_memory_gb", "2"]
    # (mod ids: test_trained_model_on_real_rows, on the Kaggle rows preprocessed with --mod_idx's default)
    for mode, flags in (("hash", ["--mod_idx", "0"]), ("vocab", ["--min_frequency", "2"])):
        data = tmp_path / mode
        assert cli.main(["--input_dir", str(tmp_path / "raw"), "--output_dir", str(data), "--train_files", "2",
                         "--eval_files", "1", "--shuffle_partitions", "2", *spark[:2], *flags]) == 0
        assert schema.read_dataset_info(str(data))["id_mode"] == mode
        # scripts/quickstart.sh's step: the dataset's test split as raw lines
        assert quickstart.main(["test-rows", str(tmp_path / "raw"), str(data), str(tmp_path / "rows.tsv")]) == 0
        assert (tmp_path / "rows.tsv").read_text() == "".join(test)
        ckpt = write_checkpoint(data, tmp_path / f"run_{mode}")
        code, _, err = predict(capsys, "--model_load_dir", ckpt, "--input", data / "test", "--output",
                               tmp_path / f"{mode}_split.csv")
        assert code == 0, err
        split = read_output(str(tmp_path / f"{mode}_split.csv"))
        code, out, err = predict(capsys, "--model_load_dir", ckpt, "--input", inp, "--output",
                                 tmp_path / f"{mode}_raw.parquet", *spark)
        assert code == 0, err
        got = read_output(str(tmp_path / f"{mode}_raw.parquet"))
        assert got["row"] == list(range(202))
        probs, labels = got["probability"], got["label"]
        assert probs[10:12] == [None, None] and labels[10:12] == [None, None]  # malformed: empty, not shifted
        labeled = probs[:10] + probs[12:102]
        assert labeled == split["probability"] and labels[:10] + labels[12:102] == split["label"]
        assert probs[102:] == split["probability"] and labels[102:] == [None] * 100
        last = out.strip().splitlines()[-1]
        assert "done: 202 rows" in last and "2 malformed row(s) skipped" in last and "over 100 labeled rows" in last
    # --bad_rows fail: one line naming the file, its line and the reason; no output
    code, out, err = predict(capsys, "--model_load_dir", ckpt, "--input", inp, "--output", tmp_path / "fail.csv",
                             "--bad_rows", "fail", *spark)
    assert code == 2 and not os.path.exists(tmp_path / "fail.csv")
    assert error_lines(err) == [f"error: malformed row in {inp / 'a.tsv'} line 11: field_count (2 malformed row(s) "
                                f"in total; --bad_rows fail, nothing scored)"], err


# ----------------------------------------------------------------------------- slow: a trained model, real rows
@pytest.fixture(scope="module")
def trained_kaggle(kaggle_head_parquet, tmp_path_factory):
    """A tiny model trained by dlrm_train_eval.py on the 10,000 real Kaggle rows; (checkpoint, final AUC)."""
    run = tmp_path_factory.mktemp("trained")
    run_tool(TRAIN_SCRIPT, "--data_dir", kaggle_head_parquet, "--device", "cpu", *TINY_MODEL,
             "--train_batch_size", "128", "--eval_batch_size", "256", "--train_batches", "60", "--eval_interval", "0",
             "--eval_batches", "100", "--loss_print_interval", "20", "--optimizer", "adam", "--learning_rate", "0.003",
             "--model_save_dir", run, "--metrics_file", run / "metrics.jsonl")
    auc = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "eval"][-1]["auc"]
    ckpt = [d for d in os.listdir(run) if d.startswith("step_60")][0]
    return str(run / ckpt), auc


@pytest.mark.slow
@requires_java
def test_trained_model_on_real_rows(trained_kaggle, kaggle_head_parquet, tmp_path):
    """The parquet test split and its raw lines (with labels; without, gzip) give the training run's final
    test AUC and the same probabilities; the 18,181 real unlabeled test.txt rows all get one in (0, 1)."""
    from dlrm.evaluation import roc_auc

    ckpt, auc = trained_kaggle
    run_tool(PREDICT_SCRIPT, "--model_load_dir", ckpt, "--input", kaggle_head_parquet / "test",
             "--output", tmp_path / "split.csv", "--device", "cpu")
    split = read_output(str(tmp_path / "split.csv"))
    assert len(split["row"]) == 714
    assert roc_auc(flow.tensor(np.float32(split["label"])), flow.tensor(np.float32(split["probability"]))) == auc
    inp = tmp_path / "input"
    inp.mkdir()
    test = split_lines(KAGGLE_HEAD, 8571, 9285)
    (inp / "a_labeled.tsv").write_text("".join(test))
    with gzip.open(inp / "b_unlabeled.tsv.gz", "wt") as f:
        f.write("".join(ln.split("\t", 1)[1] for ln in test))
    os.symlink(os.path.abspath(KAGGLE_TEST_UNLABELED), inp / "c_kaggle_test.tsv")
    proc = run_tool(PREDICT_SCRIPT, "--model_load_dir", ckpt, "--input", inp, "--output", tmp_path / "raw.csv",
                    "--device", "cpu", "--spark_master", "local[2]", "--spark_driver_memory_gb", "2")
    got = read_output(str(tmp_path / "raw.csv"))
    n = 2 * 714 + 18181
    assert got["row"] == list(range(n))
    assert got["probability"][:714] == split["probability"] == got["probability"][714:1428]
    assert got["label"][:714] == split["label"] and set(got["label"][714:]) == {None}
    real = np.asarray(got["probability"][1428:], dtype=np.float64)
    assert len(real) == 18181 and ((real > 0) & (real < 1)).all()
    last = proc.stdout.strip().splitlines()[-1]
    assert f"done: {n} rows" in last and f"AUC {auc:.5f}" in last and "over 714 labeled rows" in last


@pytest.mark.slow
def test_two_processes_write_what_one_does(trained_kaggle, kaggle_head_parquet, tmp_path):
    ckpt, _ = trained_kaggle
    common = ["--model_load_dir", ckpt, "--input", kaggle_head_parquet / "test", "--device", "cpu",
              "--batch_size", "100"]
    run_tool(PREDICT_SCRIPT, *common, "--output", tmp_path / "one.parquet")
    run_tool("-m", "oneflow.distributed.launch", "--nproc_per_node", "2", "--master_port", free_port(),
             PREDICT_SCRIPT, *common, "--output", tmp_path / "two.parquet")
    one, two = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "two.parquet")
    assert one.num_rows == 714 and one.equals(two)
    # several models on two processes: the same checkpoint twice averages to its own probabilities
    twice = ["--model_load_dir", ckpt, ckpt, *common[2:]]
    run_tool("-m", "oneflow.distributed.launch", "--nproc_per_node", "2", "--master_port", free_port(),
             PREDICT_SCRIPT, *twice, "--output", tmp_path / "twice.parquet")
    np.testing.assert_allclose(pq.read_table(tmp_path / "twice.parquet").column("probability").to_numpy(),
                               one.column("probability").to_numpy(), rtol=1e-6)
    # a refusal stops both ranks, printed once
    proc = run_tool("-m", "oneflow.distributed.launch", "--nproc_per_node", "2", "--master_port", free_port(),
                    PREDICT_SCRIPT, *common[:4], "--data_dir", tmp_path / "moved", "--device", "cpu",
                    "--output", tmp_path / "three.parquet", check=False)
    assert proc.returncode != 0 and not os.path.exists(tmp_path / "three.parquet")
    assert error_lines(proc.stderr) == [f"error: --data_dir {tmp_path / 'moved'}: no such directory"], proc.stderr


@pytest.mark.slow
@requires_java
def test_a_killed_run_leaves_nothing_after_the_next(trained_kaggle, tmp_path):
    """dlrm_predict.py killed (SIGKILL to its process group: Spark's JVM too) while its raw rows are
    being written beside the output; the next run on the same output removes them and writes it:
    nothing else is left beside it."""
    import signal
    import subprocess
    import sys
    import time

    ckpt, _ = trained_kaggle
    (tmp_path / "in.tsv").write_text("".join(split_lines(KAGGLE_HEAD, 8571, 9285)))
    out = tmp_path / "out"
    out.mkdir()
    argv = [PREDICT_SCRIPT, "--model_load_dir", ckpt, "--input", tmp_path / "in.tsv", "--output", out / "p.csv",
            "--device", "cpu", "--spark_master", "local[2]", "--spark_driver_memory_gb", "2"]
    proc = subprocess.Popen([sys.executable, *map(str, argv)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    rows = out / f".p.csv.rows-{proc.pid}"
    try:
        deadline = time.time() + 300
        while not rows.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert rows.exists(), "the run never wrote its rows"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert os.listdir(out) == [rows.name]  # what the kill left
    done = run_tool(*argv)
    assert f"note: removed {rows}, left by a run of this tool that was killed" in done.stderr
    assert os.listdir(out) == ["p.csv"]
    assert read_output(str(out / "p.csv"))["row"] == list(range(714))
