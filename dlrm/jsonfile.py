"""JSON files the package writes beside its outputs (dataset_info.json, train_state.json,
planted_model.json, summary.json): read as a dict, None when absent; written atomically (a temp
file beside it, then renamed), so a reader never sees half a file."""
import json
import os


def read_json(path):
    """The file's object, or None when there is no such file."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json(path, obj, indent=2):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
    os.replace(tmp, path)
    return path
