"""Fast checks of the benchmarks/ scripts (they print figures, nothing here times anything): each one
starts (--help), their parsing and feature helpers give what they claim, and (slow) the profile child
builds its graphs. The scripts import their
sibling `harness`, so the helpers are exercised in a subprocess started in benchmarks/."""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

BENCH = os.path.join(REPO, "benchmarks")


@pytest.mark.parametrize("script", ["bench_train.py", "bench_reader.py", "bench_quality.py", "bench_preprocess.py",
                                    "bench_predict.py", "bench_scale.py"])
def test_help(script):
    proc = subprocess.run([sys.executable, os.path.join(BENCH, script), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def run_in_bench(code, tmp_path, env=None):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(tmp_path)], cwd=BENCH,
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_peer_lines_and_interval_rate(tmp_path):
    out = run_in_bench("""
        import os, sys
        import bench_train, harness
        log = os.path.join(sys.argv[1], "peer.log")
        with open(log, "w") as f:
            f.write("Using CPU...\\n"
                    "Finished training it 2/6 of epoch 0, 900.00 ms/it, loss 0.5\\n"
                    "Finished training it 4/6 of epoch 0, 400.00 ms/it, loss 0.5\\n"
                    "Finished training it 6/6 of epoch 0, 100.00 ms/it, loss 0.5\\n")
        recs = bench_train.peer_records(log)
        assert recs == [{"step": 2, "latency_ms": 900.0}, {"step": 4, "latency_ms": 400.0},
                        {"step": 6, "latency_ms": 100.0}], recs
        rate = harness.interval_rate([(r, None) for r in recs], 1000)
        # 4 batches of 1000 in 2 x 0.4 s + 2 x 0.1 s; the first interval (0.9 s a batch) skipped
        assert abs(rate["samples_per_s"] - 4000 / 1.0) < 1e-6, rate
        assert rate["best_interval"] == 10000 and rate["first_interval"] == 1000 / 0.9
        assert bench_train.peer_records(os.path.join(sys.argv[1], "absent.log")) is None
        print("ok")
    """, tmp_path)
    assert "ok" in out


def test_hashed_features(tmp_path):
    out = run_in_bench("""
        import numpy as np
        import bench_quality
        from dlrm.data import Batch
        sparse = np.array([[5] * 26, [5] * 26], dtype=np.int64)
        dense = np.array([[1.0] * 13, [np.e] * 13], dtype=np.float32)  # parquet dense = raw + 1
        X = bench_quality.hashed_features(Batch(np.zeros((2, 1), np.float32), dense, sparse, 2), 22)
        assert X.shape == (2, (1 << 22) + 13)
        row = X[0].toarray().ravel()
        assert (row[:1 << 22] > 0).sum() == 26, "the same id in 26 columns: 26 buckets"
        assert np.allclose(row[1 << 22:], 0) and np.allclose(X[1].toarray().ravel()[1 << 22:], np.log(np.e))
        print("ok")
    """, tmp_path)
    assert "ok" in out


def test_peer_comparison_medians_and_disturbed_marking(tmp_path):
    out = run_in_bench("""
        import bench_train
        runs = [{"samples_per_s": 100.0, "cores": 1.9, "others_cores": 0.05},
                {"samples_per_s": 300.0, "cores": 1.8, "others_cores": 0.3},
                {"samples_per_s": 200.0, "cores": 1.7, "others_cores": 0.1}]
        rec = bench_train.median_record(runs)
        assert rec["samples_per_s"] == 200.0 and rec["rounds"] == [100, 300, 200], rec
        assert rec["max_others_cores"] == 0.3
        assert bench_train.median_record(runs[:2])["samples_per_s"] == 200.0  # even count: the middle two's mean
        quiet = bench_train.median_record([runs[0], runs[2]])
        assert bench_train.ratio_text(quiet, quiet) == "1.00x"
        assert bench_train.ratio_text(rec, quiet) == "1.33x (disturbed)"  # others used 0.3 cores in a round
        # each side at its best configuration: ours at 1 or 2 ranks, the peer at all or 1 thread(s)
        ours = {1: dict(quiet, ranks=1), 2: dict(rec, ranks=2)}
        assert bench_train.best_of(ours)["ranks"] == 2
        print("ok")
    """, tmp_path)
    assert "ok" in out


def test_peer_runs_without_our_thread_settings(tmp_path):
    """The startup hook sets MKL_NUM_THREADS (and records it); the PyTorch peer must not inherit it,
    or torch would run one thread too."""
    out = run_in_bench("""
        import os, bench_train
        hook = os.environ.get("DLRM_HOOK_SET", "").split(",")
        assert "MKL_NUM_THREADS" in hook or os.environ.get("DLRM_BLAS_LIBRARY") is None, hook
        env = bench_train.peer_env({"MKL_NUM_THREADS": "1", "KMP_BLOCKTIME": "0", "OMP_NUM_THREADS": "2",
                                    "PATH": "/bin", "DLRM_HOOK_SET": "MKL_NUM_THREADS,KMP_BLOCKTIME"})
        assert env == {"OMP_NUM_THREADS": "2", "PATH": "/bin"}, env  # the user's own setting stays
        print("ok")
    """, tmp_path)
    assert "ok" in out


@pytest.mark.slow
def test_profile_children_build_their_graphs(tmp_path):
    """bench_train.py --profile's children (one process per variant, as profile_phase runs them)
    build and time each kind of graph it profiles: the one dlrm_train_eval.py builds, the
    frozen-embedding one and the eval graph, and the first with OneFlow's threads left as OneFlow
    runs them, on a tiny dataset."""
    from conftest import write_tiny_dataset

    data = write_tiny_dataset(str(tmp_path / "data"))
    records = []
    variants = ("default", "frozen_embedding", "forward", "oneflow_threads")
    for variant in variants:
        proc = subprocess.run([sys.executable, os.path.join(BENCH, "bench_train.py"), "--_child", "profile",
                               "--variant", variant, "--steps", "2", "--data_dir", data, "--batch_size", "40",
                               "--bottom_mlp", "8,16", "--top_mlp", "16,8", "--embedding_vec_size", "16"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
        records.append(json.loads(line.split(" ", 1)[1]))
    assert [r["variant"] for r in records] == list(variants)
    for r in records:
        assert r["wall_s"] > 0 and len(r["all_wall_s"]) == 2 and r["samples_per_s"] == 40 / r["wall_s"], r
    assert records[0]["gemm_cpu_s"] > 0 and records[0]["loss_readout_s"] > 0, records[0]


# ----------------------------------------------------------------------------- bench_scale.py
def run_scale(*argv, timeout=120):
    return subprocess.run([sys.executable, os.path.join(BENCH, "bench_scale.py"), *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=checkout_env())


def checkout_env():
    """bench_scale.py and its stages import this checkout's dlrm package."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p])}


def test_scale_growth_fit_and_extrapolation(tmp_path):
    out = run_in_bench("""
        import bench_scale
        rows = [1000, 8000, 64000]
        k, c = bench_scale.fit_growth(rows, [3.0 * r ** 1.25 for r in rows])
        assert abs(k - 1.25) < 1e-9 and abs(c - 3.0) < 1e-6, (k, c)
        value, k = bench_scale.extrapolate(rows, [2.0 * r for r in rows], 4_373_472_329)
        assert abs(k - 1) < 1e-9 and abs(value / (2.0 * 4_373_472_329) - 1) < 1e-9, (value, k)
        assert bench_scale.extrapolate([1000], [5.0], 10 ** 9) is None  # one row count: no fit
        assert bench_scale.fit_growth([1000, 1000], [1.0, 2.0]) is None
        r = bench_scale.with_value(bench_scale.RECIPE, "--train_batch_size", 256)
        assert bench_scale.recipe_value(r, "--train_batch_size") == "256"
        assert bench_scale.recipe_value(bench_scale.RECIPE, "--train_batch_size") == "4096"
        print("ok")
    """, tmp_path, env=checkout_env())
    assert "ok" in out


def test_scale_refuses_an_existing_fraction_dir(tmp_path):
    (tmp_path / "f0.002").mkdir()
    (tmp_path / "f0.002" / "mine.txt").write_text("not the benchmark's")
    proc = run_scale("--fractions", "0.002", "--work_dir", str(tmp_path))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'f0.002'} exists; remove it or choose another --work_dir "
        "(the benchmark deletes only what it wrote)"]
    assert (tmp_path / "f0.002" / "mine.txt").read_text() == "not the benchmark's"
    bad = run_scale("--fractions", "0,2", "--work_dir", str(tmp_path))
    assert bad.returncode != 0 and bad.stderr.startswith("error: --fractions '0,2'"), bad.stderr
    twice = run_scale("--fractions", "0.01,0.010", "--work_dir", str(tmp_path))
    assert twice.returncode != 0 and twice.stderr.startswith("error: --fractions '0.01,0.010'"), twice.stderr
    assert sorted(os.listdir(tmp_path)) == ["f0.002"]  # nothing made before the refusals


SCALE_LINE = re.compile(r"^scale (\S+): rows (\d+), end-to-end ([\d.]+) s, peak RSS ([\d.]+) GiB, "
                        r"AUC ([\d.]+) \(planted ([\d.]+)\)$")


@pytest.mark.slow
def test_scale_small_fraction_end_to_end(tmp_path):
    """bench_scale.py at 0.4% of Kaggle (183,362 rows; the mod-id run skipped, a small batch for enough
    steps): its stage table and last line parse, the model's AUC on the whole test split is within
    0.02 of the planted model's, and only the logs are left behind."""
    proc = run_scale("--fractions", "0.004", "--work_dir", str(tmp_path), "--skip_mod", "--train_batch_size", "256",
                     "--learning_rate", "0.02", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    m = SCALE_LINE.match(lines[-1])
    assert m, lines[-1]
    fraction, rows, e2e, rss, auc, planted = m.groups()
    assert fraction == "0.004" and int(rows) == 183362
    stage = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0] == "0.004" and cells[2] in ("generate", "preprocess_vocab", "train", "score"):
            stage[cells[2]] = (int(cells[1].replace(",", "")), float(cells[3]), float(cells[4]))
    assert sorted(stage) == ["generate", "preprocess_vocab", "score", "train"], stage
    assert all(r == 183362 and wall > 0 and gib > 0.1 for r, wall, gib in stage.values()), stage
    assert abs(float(e2e) - sum(stage[s][1] for s in ("preprocess_vocab", "train", "score"))) < 0.2
    assert float(rss) == max(stage[s][2] for s in ("preprocess_vocab", "train", "score"))
    assert abs(float(auc) - float(planted)) < 0.02, (auc, planted)
    assert sorted(os.listdir(tmp_path / "f0.004")) == ["generate.log", "preprocess_vocab.log", "score.log", "train.log"]
