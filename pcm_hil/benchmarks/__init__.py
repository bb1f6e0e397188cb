"""Benchmarks behind ``pcm-hil bench ...`` (scripts and recorded figures live in ``bench/``)."""

# ``bench budgets``: 50 %, not the store job's 75 %. Pruned 75 % the compressed LeNet-5 already sits 0.44 pp under
# the reference on validation, which leaves storage 0.06 pp of the 0.5 pp band and makes the bench ask which side
# stores nearly losslessly; pruned 50 % it sits above the reference, so the band is storage's (docs/storage.md,
# "The pulse budget"). Here, not in budgets.py, so that the CLI's parser reads it without importing torch.
BUDGETS_SPARSITY = 0.5
