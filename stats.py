"""Statistics over seeds, shared by test.py and compare.py: a method's mean with its spread, and the
paired difference of two methods trained from the same seeds, with its verdict."""
import math

import numpy as np


def summarize(values):
    """Mean, sample std and standard error of the finite values (std and standard error None for fewer
    than two); non-finite values (diverged runs) are counted apart."""
    values = np.asarray(list(values), dtype=float)
    finite = values[np.isfinite(values)]
    n = len(finite)
    std = float(finite.std(ddof=1)) if n > 1 else None
    return {"mean": float(finite.mean()) if n else None, "std": std,
            "sem": std / math.sqrt(n) if std is not None else None, "runs": n, "diverged": int(len(values) - n)}


def paired_difference(a, b):
    """Mean and standard error of a - b over the positions (seeds) where both are finite; None under 2."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    diff = diff[np.isfinite(diff)]
    if len(diff) < 2:
        return None
    return {"mean": float(diff.mean()), "sem": float(diff.std(ddof=1) / math.sqrt(len(diff))), "runs": len(diff)}


def verdict(diff):
    """better or worse by more than two standard errors (a negative difference: the first is better)."""
    return "better" if diff["mean"] < -2 * diff["sem"] else "worse" if diff["mean"] > 2 * diff["sem"] else "within 2 SE"
