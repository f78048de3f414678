"""An `evaluate` module folder; load it with `naturelm.evaluation.load_metric` or `evaluate.load(<this folder>)`."""
