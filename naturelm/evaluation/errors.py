"""The error the evaluation commands stop with (the CLI prints it without a traceback)."""


class EvaluationError(RuntimeError):
    """An evaluation cannot start or go on: a missing dataset or file, an output that would be overwritten, ..."""


__all__ = ["EvaluationError"]
