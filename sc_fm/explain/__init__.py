"""What a checkpoint learned about genes: integrated-gradient attributions per group, in-silico
perturbation, and a check against differential-expression markers (``scfm explain``).

``sc_fm.explain.report`` writes the report, ``sc_fm.explain.tracking`` logs it to MLflow.
"""

from sc_fm.explain.explanation import Explanation, explain

__all__ = ["Explanation", "explain"]
