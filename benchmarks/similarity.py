"""Edit similarity as the code-completion literature reports it: 1 - normalised Levenshtein
distance (the distance over the longer length), shared by the benchmarks."""

from __future__ import annotations


def edit_similarity(a: str, b: str) -> float:
    if a == b:
        return 1.0
    try:
        from rapidfuzz.distance import Levenshtein
    except ImportError:  # the same number at Python speed (minutes on whole functions)
        return python_similarity(a, b)
    return float(Levenshtein.normalized_similarity(a, b))


def python_similarity(a: str, b: str) -> float:
    if not a and not b:
        return 1.0
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return 1.0 - previous[-1] / max(len(a), len(b))
