"""OneFlow DLRM for the Criteo datasets: the library behind dlrm_train_eval.py and tools/.

See docs/development.md, "Code map", for what each module holds and who uses it.
"""
