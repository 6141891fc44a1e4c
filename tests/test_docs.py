"""The docs' argument tables are the CLI contract: every flag there exists in argparse with the same
default, and every argparse flag is in the table. Every relative link in README.md and docs/ resolves."""
import importlib.util
import os
import re

import pytest

from conftest import REPO

from dlrm.config import get_parser as train_parser
from dlrm.predict import get_parser as predict_parser
from dlrm.preprocess.cli import build_parser as preprocess_parser
from dlrm.synthetic import build_parser as synthetic_parser

# The original's defaults (its README table, corrected by its code), which ours must keep.
ORIGINAL_TRAIN_DEFAULTS = {
    "--data_dir": "required", "--persistent_path": "None", "--store_type": "cached_host_mem",
    "--cache_memory_budget_mb": "8192", "--embedding_vec_size": "128", "--bottom_mlp": "512,256,128",
    "--top_mlp": "1024,1024,512,256", "--disable_interaction_padding": "False", "--interaction_itself": "False",
    "--disable_fusedmlp": "False", "--train_batch_size": "55296", "--train_batches": "75000",
    "--learning_rate": "24", "--warmup_batches": "2750", "--decay_start": "49315", "--decay_batches": "27772",
    "--loss_print_interval": "1000", "--eval_interval": "10000", "--eval_batches": "1612",
    "--eval_batch_size": "55296", "--model_load_dir": "None", "--model_save_dir": "None",
    "--save_model_after_each_eval": "False", "--save_initial_model": "False", "--amp": "False",
    "--loss_scale_policy": "static", "--one_embedding_key_type": "int64", "--disable_dense_input_padding": "False",
}
ORIGINAL_TOOL_DEFAULTS = {
    "--input_dir": "required", "--output_dir": "required", "--spark_tmp_dir": "None",
    "--spark_driver_memory_gb": "360", "--mod_idx": "40000000", "--num_test_examples": "89137319",
    "--export_dataset_info": "False",
}


def tool_parser(name):
    """get_parser() of a script under tools/ (not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_parser()


def docs_table(doc, heading):
    text = open(os.path.join(REPO, doc)).read()
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(--[a-z0-9_]+)` \| `?([^|`]*?)`? \|", section, flags=re.M)
    assert rows, f"no table under {heading!r}"
    return dict(rows)


def argparse_defaults(parser):
    out = {}
    for action in parser._actions:
        if action.dest == "help":
            continue
        out[action.option_strings[0]] = "required" if action.required else str(action.default)
    return out


@pytest.mark.parametrize("doc,heading,parser,original", [
    ("docs/training.md", "## `dlrm_train_eval.py` arguments", train_parser(), ORIGINAL_TRAIN_DEFAULTS),
    ("docs/preprocessing.md", "## `tools/criteo1t_parquet.py` arguments", preprocess_parser(), ORIGINAL_TOOL_DEFAULTS),
    ("docs/checkpoints.md", "## `tools/convert_checkpoint.py` arguments", tool_parser("convert_checkpoint"), {}),
    ("docs/predictions.md", "## `dlrm_predict.py` arguments", predict_parser(), {}),
    ("docs/synthetic.md", "## `tools/make_synthetic_criteo.py` arguments", synthetic_parser(), {}),
])
def test_docs_table_matches_argparse(doc, heading, parser, original):
    table, real = docs_table(doc, heading), argparse_defaults(parser)
    assert table == real
    for flag, default in original.items():
        assert real[flag] == default, flag


def anchor(heading):
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(path):
    text = re.sub(r"```.*?```", "", open(path).read(), flags=re.S)
    return {anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_relative_links_resolve():
    docs = ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(REPO, "docs")))]
    checked = 0
    for doc in docs:
        text = open(os.path.join(REPO, doc)).read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, frag = target.partition("#")
            full = os.path.normpath(os.path.join(REPO, os.path.dirname(doc), path)) if path else os.path.join(REPO, doc)
            assert os.path.exists(full), f"{doc}: link {target} -> {full} does not exist"
            if frag:
                assert frag in headings(full), f"{doc}: link {target}: no heading #{frag} in {full}"
            checked += 1
    assert checked >= 10
