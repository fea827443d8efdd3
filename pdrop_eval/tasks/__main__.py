"""Prints the folder of pdrop-eval's lmms-eval tasks: ``lmms-eval --include_path "$(python -m pdrop_eval.tasks)"``."""

from pdrop_eval.package_data import TASKS_DIR

print(TASKS_DIR)
