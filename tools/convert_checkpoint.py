"""Convert a DLRM checkpoint between its CPU form (the embedding table inside) and its GPU form
(rows in a OneEmbedding store of N ranks), or reshard a store to another number of GPUs.

    # CPU checkpoint -> a store for 8 GPUs (+ a checkpoint naming its snapshot)
    python tools/convert_checkpoint.py --model_load_dir ckpt/step_1000 --output_dir ckpt8/step_1000 \
        --persistent_path /nvme/store8 --world_size 8
    # GPU checkpoint -> self-contained (CPU)
    python tools/convert_checkpoint.py --model_load_dir ckpt8/step_1000 --output_dir cpu/step_1000
    # store of 8 GPUs -> 2 GPUs (also compacts: only the snapshot's rows are copied)
    python tools/convert_checkpoint.py --model_load_dir ckpt8/step_1000 --output_dir ckpt2/step_1000 \
        --persistent_path /nvme/store2 --world_size 2
"""
import argparse
import sys

from dlrm.convert import convert


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_load_dir", required=True, help="the checkpoint to convert")
    p.add_argument("--output_dir", required=True, help="the converted checkpoint (must not exist)")
    p.add_argument("--persistent_path", default=None,
                   help="write the rows to a fresh store here (default: a self-contained checkpoint)")
    p.add_argument("--world_size", type=int, default=None, help="GPUs the store is for (with --persistent_path)")
    p.add_argument("--data_dir", default=None,
                   help="the dataset whose ids map store keys to CPU rows (default: the one the checkpoint records)")
    p.add_argument("--source_persistent_path", default=None,
                   help="where the source checkpoint's store is, if not where it records")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        print(convert(args.model_load_dir, args.output_dir, args.persistent_path, args.world_size, args.data_dir,
                      args.source_persistent_path))
    except ValueError as e:  # ConvertError, StoreError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
