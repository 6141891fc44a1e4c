"""Fast tests of dlrm.preprocess.plan, the preprocessing steps that run before Spark starts:
arguments, input files, split bounds and the output directory (real files in tmp_path)."""
import gzip
import os
import subprocess
import sys

import pytest

from conftest import write_tiny_dataset
from dlrm.preprocess.cli import parse_args
from dlrm.preprocess.passes import RowCheck, check_malformed_share
from dlrm.preprocess.plan import (INT32_MAX, PreprocessError, check_args, check_output_outside_input,
                                  driver_memory_gb, max_categorical_id, physical_memory_bytes,
                                  plan_inputs, prepare_output, publish_output, split_bounds)

LINE = "0" + "\t" * 39 + "\n"  # a well-formed line: label 0, every field missing


def args_of(*flags):
    return parse_args(["--input_dir", "i", "--output_dir", "o", *flags])


def plan_error(*a):
    with pytest.raises(PreprocessError) as e:
        plan_inputs(*a)
    assert e.value.code == 2
    return str(e.value)


def make_dir(path, names, text=LINE):
    os.makedirs(path, exist_ok=True)
    for n in names:
        with open(os.path.join(path, n), "w") as f:
            f.write(text)
    return str(path)


# ------------------------------------------------------------------------------------------
# arguments
# ------------------------------------------------------------------------------------------


def test_check_args_accepts_defaults_and_the_largest_int32_modulus():
    check_args(args_of())
    limit = (INT32_MAX - 25) // 26
    assert limit == 82595523
    assert max_categorical_id(limit) == 2147483623 <= INT32_MAX
    assert max_categorical_id(limit + 1) == 2147483649 > INT32_MAX
    check_args(args_of("--key_type", "int32", "--mod_idx", str(limit)))
    check_args(args_of("--mod_idx", str((2**63 - 1 - 25) // 26)))  # the largest int64 one


@pytest.mark.parametrize("flags,message", [
    (["--spark_driver_memory_gb", "0"], "--spark_driver_memory_gb must be > 0"),
    (["--num_test_examples", "-1"], "--num_test_examples must be >= 0"),
    (["--train_files", "0"], "--train_files and --eval_files must be >= 1"),
    (["--eval_files", "0"], "--train_files and --eval_files must be >= 1"),
    (["--shuffle_partitions", "0"], "--shuffle_partitions must be >= 1"),
    (["--key_type", "int32", "--mod_idx", "0"], "--key_type int32 needs mod ids"),
    (["--key_type", "int32", "--mod_idx", "82595524"],
     "--key_type int32: the largest id 2147483649 (mod_idx 82595524) does not fit int32; use "
     "--mod_idx <= 82595523 or --key_type int64"),
    (["--mod_idx", "354745078340568300"],  # ids wrap around in Spark's long arithmetic
     "--mod_idx 354745078340568300: the largest id 9223372036854775825 does not fit int64; use "
     "--mod_idx <= 354745078340568299"),
    (["--max_malformed_fraction", "1.5"], "--max_malformed_fraction must be in [0, 1]"),
    (["--max_malformed_fraction", "nan"], "--max_malformed_fraction must be in [0, 1]"),
])
def test_check_args_errors(flags, message):
    with pytest.raises(PreprocessError) as e:
        check_args(args_of(*flags))
    assert e.value.code == 2 and str(e.value).startswith(message)


def test_driver_memory_capped_in_local_mode_only(capsys):
    total = physical_memory_bytes()
    assert driver_memory_gb(1, "local[2]") == 1
    assert capsys.readouterr().err == ""
    huge = total // 2**30 + 1
    assert driver_memory_gb(huge, "local[*]") == max(1, int(total * 0.8 / 2**30))
    assert "is more than this machine's RAM" in capsys.readouterr().err
    assert driver_memory_gb(huge, "spark://head:7077") == huge


# ------------------------------------------------------------------------------------------
# input files
# ------------------------------------------------------------------------------------------


def test_plan_inputs_days_in_numeric_order_with_gz(tmp_path):
    d = make_dir(tmp_path / "in", ["day_%d" % k for k in range(12) if k != 1])
    with gzip.open(os.path.join(d, "day_1.gz"), "wt") as f:
        f.write(LINE)
    os.mkdir(os.path.join(d, "day_12"))  # a directory is not a day file
    make_dir(d, ["notes.txt", "day_x"])
    fmt, paths = plan_inputs(d)
    assert fmt == "criteo1t"
    assert [os.path.basename(p) for p in paths] == ["day_0", "day_1.gz"] + [
        "day_%d" % k for k in range(2, 12)]
    assert paths[0] == os.path.join(d, "day_0")


def test_plan_inputs_kaggle(tmp_path):
    d = make_dir(tmp_path / "in", ["train.txt", "day_0", "day_1"])
    assert plan_inputs(d) == ("kaggle", [os.path.join(d, "train.txt")])  # train.txt wins
    assert plan_inputs(d, "criteo1t")[0] == "criteo1t"
    make_dir(d, ["train.txt.gz"])
    assert "both train.txt and train.txt.gz exist" in plan_error(d)


def test_plan_inputs_errors(tmp_path):
    assert plan_error(str(tmp_path / "nope")) == "input directory %s does not exist" % (tmp_path / "nope")
    d = make_dir(tmp_path / "in", ["notes.txt"])
    assert plan_error(d).startswith("no Criteo files in")
    assert plan_error(d, "kaggle").startswith("no train.txt in")
    assert plan_error(d, "criteo1t").startswith("no day_N files in")
    make_dir(d, ["day_0"])
    assert "has only day_0; criteo1t needs at least two days" in plan_error(d)
    make_dir(d, ["day_7"])
    assert plan_error(d).endswith("missing day_1, day_2, day_3, day_4, day_5, ...")
    make_dir(d, ["day_%d" % k for k in range(1, 7)])
    make_dir(d, ["day_3"], text="")
    assert plan_error(d) == "input file %s is empty" % os.path.join(d, "day_3")
    make_dir(d, ["day_3", "day_3.gz"])
    msg = plan_error(d)  # names the two in directory-listing order
    assert msg.startswith("%s: both day_3" % d) and "day_3.gz" in msg and msg.endswith("exist; keep one")


def test_plan_inputs_gzip_empty_or_broken(tmp_path):
    d = make_dir(tmp_path / "in", ["day_0"])
    with gzip.open(os.path.join(d, "day_1.gz"), "wb") as f:
        f.write(b"")
    assert os.path.getsize(os.path.join(d, "day_1.gz")) > 0  # only the content is empty
    assert plan_error(d) == "input file %s is empty" % os.path.join(d, "day_1.gz")
    make_dir(d, ["day_1.gz"], text="not gzip at all")
    assert plan_error(d).startswith("cannot read gzip file %s" % os.path.join(d, "day_1.gz"))


# ------------------------------------------------------------------------------------------
# split bounds
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,bounds", [
    (10000, {"train": (0, 8571), "test": (8571, 9285), "val": (9285, 10000)}),
    (7, {"train": (0, 6), "test": (6, 6), "val": (6, 7)}),
    (9, {"train": (0, 7), "test": (7, 8), "val": (8, 9)}),
    (1, {"train": (0, 0), "test": (0, 0), "val": (0, 1)}),
])
def test_kaggle_split_bounds(n, bounds):
    assert split_bounds("kaggle", n, 89137319, "train.txt") == bounds


def test_criteo1t_split_bounds(capsys):
    assert split_bounds("criteo1t", 600, 250, "day_2") == {"test": (0, 250), "val": (250, 600)}
    assert split_bounds("criteo1t", 600, 0, "day_2") == {"test": (0, 0), "val": (0, 600)}
    assert capsys.readouterr().err == ""
    assert split_bounds("criteo1t", 100, 250, "day_2") == {"test": (0, 100), "val": (100, 100)}
    assert capsys.readouterr().err == ("[preprocess] warning: --num_test_examples 250 is more than "
                                       "the 100 lines of day_2: test gets all of them, val none\n")


# ------------------------------------------------------------------------------------------
# output directory
# ------------------------------------------------------------------------------------------


def test_output_must_not_contain_input(tmp_path):
    inp = make_dir(tmp_path / "data" / "in", ["day_0"])
    for out in (inp, str(tmp_path / "data"), str(tmp_path)):
        with pytest.raises(PreprocessError) as e:
            check_output_outside_input(inp, out)
        assert e.value.code == 2 and "contains --input_dir" in str(e.value)
    os.symlink(str(tmp_path / "data"), str(tmp_path / "link"))
    with pytest.raises(PreprocessError):
        check_output_outside_input(inp, str(tmp_path / "link"))
    check_output_outside_input(inp, os.path.join(inp, "out"))  # below the input: harmless
    check_output_outside_input(inp, inp + "2")  # a sibling sharing the name's prefix


def test_prepare_output_checks_and_names_the_temp_dir(tmp_path):
    out = tmp_path / "new" / "out"
    tmp = prepare_output(str(out), False)
    assert tmp == str(tmp_path / "new" / (".out.incomplete-%d" % os.getpid()))
    assert os.path.isdir(str(tmp_path / "new")) and not os.path.exists(tmp)
    out.mkdir()
    assert prepare_output(str(out), False) == tmp  # an empty output_dir is fine
    (out / "keep.txt").write_text("precious")
    with pytest.raises(PreprocessError) as e:
        prepare_output(str(out), False)
    assert e.value.code == 2 and "pass --overwrite" in str(e.value)
    with pytest.raises(PreprocessError) as e:  # not the tool's output: --overwrite refused too
        prepare_output(str(out), True)
    assert e.value.code == 2 and "is not an output of tools/criteo1t_parquet.py" in str(e.value)
    (out / "keep.txt").unlink()
    write_tiny_dataset(str(out))
    assert prepare_output(str(out), True) == tmp
    assert sorted(os.listdir(str(out))) == ["dataset_info.json", "test", "train", "val"]  # kept
    (tmp_path / "file").write_text("x")
    with pytest.raises(PreprocessError) as e:
        prepare_output(str(tmp_path / "file"), True)
    assert "exists and is not a directory" in str(e.value)


def test_prepare_output_removes_only_stale_temp_dirs(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = os.getppid()
    names = [".out.incomplete-%d" % dead.pid, ".out.incomplete-%d" % live,
             ".out.incomplete-%d" % os.getpid(), ".out.incomplete-junk", ".other.incomplete-%d" % dead.pid]
    for n in names:
        make_dir(tmp_path / n / "train", ["part-0.parquet"])
    prepare_output(str(tmp_path / "out"), False)
    assert sorted(os.listdir(str(tmp_path))) == sorted([".out.incomplete-%d" % live,
                                                        ".other.incomplete-%d" % dead.pid])
    out, err = capsys.readouterr()
    assert out.count("[preprocess] removing stale temporary directory") == 3
    assert "belongs to a running process (pid %d); left alone" % live in err


def test_publish_output_into_missing_or_empty_dir(tmp_path):
    for existing in (False, True):
        out = tmp_path / ("out%d" % existing)
        if existing:
            out.mkdir()
        tmp = prepare_output(str(out), False)
        make_dir(os.path.join(tmp, "train"), ["part-0.parquet"], text="new")
        publish_output(tmp, str(out), False)
        assert (out / "train" / "part-0.parquet").read_text() == "new"
        assert not os.path.exists(tmp)


def test_publish_output_replaces_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    write_tiny_dataset(str(out))  # a previous output of the tool
    tmp = prepare_output(str(out), True)
    make_dir(tmp, ["dataset_info.json"], text="{}")
    with pytest.raises(PreprocessError) as e:  # appeared during a run without --overwrite
        publish_output(tmp, str(out), False)
    assert e.value.code == 1 and "appeared during the run" in str(e.value)
    assert str(e.value).endswith("the new dataset is complete in %s" % tmp)
    assert "train" in os.listdir(str(out)) and os.path.isdir(tmp)
    (out / "notes.txt").write_text("mine")  # added during the run: no longer only the tool's
    with pytest.raises(PreprocessError) as e:
        publish_output(tmp, str(out), True)
    assert "(it holds notes.txt)" in str(e.value) and tmp in str(e.value)
    assert (out / "notes.txt").read_text() == "mine" and os.path.isdir(tmp)
    (out / "notes.txt").unlink()
    publish_output(tmp, str(out), True)
    assert sorted(os.listdir(str(out))) == ["dataset_info.json"]
    assert sorted(os.listdir(str(tmp_path))) == ["out"]  # no temp or old dir left
    assert "[preprocess] replaced the previous %s" % out in capsys.readouterr().out


def test_overwrite_replaces_only_the_tools_own_output(tmp_path):
    """--overwrite's rule (dlrm.outputs): a directory holding dataset_info.json and only what the
    tool writes may be replaced; one foreign entry anywhere, or no dataset_info.json, refuses
    it, naming the entry, and nothing is touched."""
    out = tmp_path / "out"
    write_tiny_dataset(str(out))
    make_dir(out / "train", [".part-00000.parquet.crc", "_SUCCESS", "._SUCCESS.crc"])
    make_dir(out / "vocabulary" / "column=3", ["part-00000-x.c000.snappy.parquet"])
    make_dir(out / "vocabulary", ["_SUCCESS"])
    make_dir(out, ["README.md"])
    before = sorted(os.walk(str(out)))
    assert prepare_output(str(out), True)  # all of it is the tool's

    def refused():
        with pytest.raises(PreprocessError) as e:
            prepare_output(str(out), True)
        assert e.value.code == 2
        return str(e.value)

    for foreign, named in [("notes.txt", "notes.txt"), ("train/notes.txt", "train/notes.txt"),
                           ("vocabulary/column=3/x/y.parquet", "vocabulary/column=3/x/y.parquet"),
                           ("Documents/a", "Documents")]:
        make_dir(os.path.dirname(str(out / foreign)), [os.path.basename(foreign)], text="mine")
        msg = refused()
        assert msg == ("--output_dir %s is not an output of tools/criteo1t_parquet.py (it holds %s), "
                       "so --overwrite will not replace it; remove it yourself or choose another "
                       "--output_dir" % (out, named)), msg
        assert (out / foreign).read_text() == "mine"
        os.remove(str(out / foreign))
        if foreign.count("/") > 1 or foreign.startswith("Documents"):
            os.rmdir(os.path.dirname(str(out / foreign)))
    os.symlink(str(tmp_path), str(out / "train" / "link.parquet"))  # a link is never the tool's
    assert "(it holds train/link.parquet)" in refused()
    os.remove(str(out / "train" / "link.parquet"))
    os.rename(str(out / "dataset_info.json"), str(out / "info.json"))  # no marker
    assert "(it holds dataset_info.json (missing), info.json)" in refused()
    os.rename(str(out / "info.json"), str(out / "dataset_info.json"))
    assert sorted(os.walk(str(out))) == before


def test_home_like_output_dir_is_refused_with_overwrite(tmp_path):
    """The typo `--output_dir ~ --overwrite`: a home-like directory, even one holding train/ and
    a dataset_info.json, is refused before anything is renamed or removed."""
    home = tmp_path / "home"
    write_tiny_dataset(str(home))
    make_dir(home, [".bashrc", "notes.txt", "photo.jpg", "todo.md"])
    with pytest.raises(PreprocessError) as e:
        prepare_output(str(home), True)
    assert "(it holds .bashrc, notes.txt, photo.jpg, ... (4 in all))" in str(e.value)
    assert sorted(os.listdir(str(home)))[:2] == [".bashrc", "dataset_info.json"]
    assert sorted(os.listdir(str(tmp_path))) == ["home"]


def test_malformed_share_above_the_limit_stops_the_run():
    """check_rows' counts -> check_malformed_share: all lines malformed always stops, any share
    above --max_malformed_fraction too, naming the file with the most."""
    def check(bad_per_file, lines):
        by_file = {n: {"field_count": b, "total": b} for n, b in bad_per_file.items() if b}
        total = sum(bad_per_file.values())
        return RowCheck({"train": lines, "test": 0, "val": 0},
                        {"field_count": total, "label": 0, "dense": 0, "categorical": 0},
                        {"train": total, "test": 0, "val": 0}, by_file)

    paths = ["/in/day_0", "/in/day_1.gz", "/in/day_2"]
    check_malformed_share(check({}, 1000), paths, 0.0)  # none malformed
    check_malformed_share(check({"day_0": 10}, 1000), paths, 0.01)  # 1%: at the limit
    with pytest.raises(PreprocessError) as e:
        check_malformed_share(check({"day_0": 3, "day_1.gz": 8}, 1000), paths, 0.01)
    assert e.value.code == 1 and str(e.value) == (
        "11 of 1000 lines malformed (1.1%: field_count 11), 8 of them in /in/day_1.gz: more than "
        "--max_malformed_fraction 0.01; is it Criteo text (40 tab-separated fields)? nothing written")
    with pytest.raises(PreprocessError) as e:  # all of them: whatever the limit
        check_malformed_share(check({"train.txt": 8123}, 8123), ["/in/train.txt"], 1.0)
    assert str(e.value).startswith("8123 of 8123 lines malformed (100.0%: field_count 8123), 8123 "
                                   "of them in /in/train.txt: every line;")


def test_split_of_part_follows_the_write_plan():
    from dlrm.preprocess.passes import split_of_part

    # a write's partitions: 4 train, then 3 runs of test, then 3 of val
    assert [split_of_part(p, 4, 3, ["test", "val"]) for p in range(10)] == ["train"] * 4 + ["test"] * 3 + ["val"] * 3
    assert [split_of_part(p, 0, 2, ["test", "val"]) for p in range(4)] == ["test", "test", "val", "val"]
    assert [split_of_part(p, 3, 2, []) for p in range(3)] == ["train"] * 3
    with pytest.raises(PreprocessError, match="partition 10 beyond the 10 planned"):
        split_of_part(10, 4, 3, ["test", "val"])
