"""What a checkpoint learned about genes: integrated-gradient attributions per group, in-silico
perturbation, and a check against differential-expression markers (``scfm explain``).

``sc_fm.explain.report`` writes the report and the figures that ``sc_fm.tracking.log_report`` logs.
"""

from sc_fm.explain.explanation import Explanation, explain

__all__ = ["Explanation", "explain"]
