"""OneFlow DLRM for the Criteo datasets: the library behind dlrm_train_eval.py and tools/.

See the README's "Code map" for what each module holds and who uses it.
"""
