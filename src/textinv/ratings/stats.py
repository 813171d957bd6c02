"""The statistics of a rating study, in numpy and scipy only (the GPL-3.0 `krippendorff`/`pingouin` are not used).

Ratings are clustered twice: by rater (a lenient rater rates everything higher) and by item (an image is good or
bad for everyone), so every interval here respects the clustering:

    mos_t            MOS with a t interval over per-rater means (each rater's mean over the items they rated in the
                     condition, then mean and t over raters: items fixed, raters random)
    mos_bootstrap    MOS with a percentile bootstrap over raters AND items (both resampled with replacement,
                     independently: Owen's "pigeonhole" bootstrap for crossed random effects; raters and items random)
    znorm            per-rater z-normalised scores (each rater's own mean 0 and SD 1 over all their ratings of a question)
    krippendorff_alpha  nominal / ordinal / interval alpha from the coincidence matrix (Krippendorff 2011), any number
                     of raters per unit, missing values allowed; alpha_bootstrap resamples units
    wilson           Wilson score interval of a win rate (ties kept apart: counted, never split)
    screen_raters    the P.808 toolkit's rater screening (trap exact, gold within 1, variance, correlation with the MOS)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


# --- MOS ----------------------------------------------------------------------------------------------------------
@dataclass
class Interval:
    estimate: float
    low: float
    high: float
    method: str

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "method": self.method}


def rater_means(raters: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rater ids, each rater's mean) of one condition's ratings."""
    ids, inverse = np.unique(raters, return_inverse=True)
    sums = np.bincount(inverse, weights=values.astype(float))
    counts = np.bincount(inverse)
    return ids, sums / counts


def mos_t(raters: np.ndarray, values: np.ndarray, level: float = 0.95) -> Interval:
    """Mean of the per-rater means with a t interval over raters (n - 1 degrees of freedom); NaN bounds with one
    rater. The estimate weights raters equally (a rater who saw more items does not count more)."""
    _, means = rater_means(np.asarray(raters), np.asarray(values))
    n = len(means)
    est = float(means.mean()) if n else math.nan
    if n < 2:
        return Interval(est, math.nan, math.nan, "t over per-rater means")
    half = sps.t.ppf(0.5 + level / 2, n - 1) * means.std(ddof=1) / math.sqrt(n)
    return Interval(est, est - half, est + half, "t over per-rater means")


def pigeonhole_means(matrix: np.ndarray, mask: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """`n_boot` bootstrap means of a rater x item matrix (mask: rated cells), raters and items each resampled with
    replacement: mean = sum_ri w_r v_i x_ri / sum_ri w_r v_i m_ri with multinomial counts w (raters), v (items)."""
    n_r, n_i = matrix.shape
    w = rng.multinomial(n_r, np.full(n_r, 1.0 / n_r), size=n_boot).astype(float)
    v = rng.multinomial(n_i, np.full(n_i, 1.0 / n_i), size=n_boot).astype(float)
    x = np.where(mask, matrix, 0.0)
    num = np.einsum("br,ri,bi->b", w, x, v)
    den = np.einsum("br,ri,bi->b", w, mask.astype(float), v)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def mos_bootstrap(raters: np.ndarray, items: np.ndarray, values: np.ndarray, level: float = 0.95,
                  n_boot: int = 2000, seed: int = 0) -> Interval:
    """The plain mean of all ratings with a percentile interval from resampling raters and items together (a
    resample where no chosen rater rated a chosen item is dropped)."""
    raters, items, values = np.asarray(raters), np.asarray(items), np.asarray(values, dtype=float)
    r_ids, r_idx = np.unique(raters, return_inverse=True)
    i_ids, i_idx = np.unique(items, return_inverse=True)
    matrix = np.zeros((len(r_ids), len(i_ids)))
    mask = np.zeros_like(matrix, dtype=bool)
    matrix[r_idx, i_idx] = values
    mask[r_idx, i_idx] = True
    est = float(values.mean()) if len(values) else math.nan
    if len(r_ids) < 2:
        return Interval(est, math.nan, math.nan, "bootstrap over raters and items")
    boots = pigeonhole_means(matrix, mask, np.random.default_rng(seed), n_boot)
    boots = boots[np.isfinite(boots)]
    lo, hi = np.quantile(boots, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(est, float(lo), float(hi), "bootstrap over raters and items")


def znorm(raters: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each rating as a z-score within its rater (mean 0, SD 1 over that rater's ratings; 0 where a rater gave one
    value only)."""
    raters, values = np.asarray(raters), np.asarray(values, dtype=float)
    ids, inv = np.unique(raters, return_inverse=True)
    count = np.bincount(inv)
    mean = np.bincount(inv, weights=values) / count
    var = np.bincount(inv, weights=(values - mean[inv]) ** 2) / np.maximum(count - 1, 1)
    sd = np.sqrt(var)
    return np.where(sd[inv] > 0, (values - mean[inv]) / np.where(sd[inv] > 0, sd[inv], 1), 0.0)


# --- Krippendorff's alpha ------------------------------------------------------------------------------------------
def value_counts(units: np.ndarray, values: np.ndarray, domain: np.ndarray) -> np.ndarray:
    """Units x values matrix of how many raters gave each value to each unit (Krippendorff's n_uc)."""
    u_ids, u_idx = np.unique(np.asarray(units), return_inverse=True)
    pos = np.searchsorted(domain, values)
    if np.any(pos >= len(domain)) or np.any(domain[np.minimum(pos, len(domain) - 1)] != values):
        raise ValueError("a value outside the domain")
    counts = np.zeros((len(u_ids), len(domain)))
    np.add.at(counts, (u_idx, pos), 1)
    return counts


def distance_matrix(domain: np.ndarray, level: str, marginals: np.ndarray) -> np.ndarray:
    """Squared difference delta^2(c, k) of Krippendorff (2011): nominal 0/1, interval (c - k)^2, ordinal
    (sum of n_g for g from c to k, minus (n_c + n_k) / 2)^2 with n_g the values' totals in the coincidence matrix."""
    d = np.asarray(domain, dtype=float)
    if level == "nominal":
        return 1.0 - np.eye(len(d))
    if level == "interval":
        return (d[:, None] - d[None, :]) ** 2
    if level == "ordinal":
        cum = np.concatenate([[0.0], np.cumsum(marginals)])
        lo = np.minimum.outer(np.arange(len(d)), np.arange(len(d)))
        hi = np.maximum.outer(np.arange(len(d)), np.arange(len(d)))
        between = cum[hi + 1] - cum[lo]
        return (between - (marginals[:, None] + marginals[None, :]) / 2) ** 2
    raise ValueError(f"level {level!r}: use nominal, ordinal or interval")


def _coincidences(counts: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Coincidence matrix o_ck = sum_u (n_uc n_uk - [c = k] n_uc) / (m_u - 1) over units with m_u >= 2 values;
    `weights` [B, U] (bootstrap counts of units) gives B matrices."""
    m = counts.sum(1)
    keep = m >= 2
    c = counts[keep]
    per_unit = (np.einsum("uc,uk->uck", c, c) - np.einsum("uc,ck->uck", c, np.eye(c.shape[1]))) / (m[keep] - 1)[:, None, None]
    if weights is None:
        return per_unit.sum(0)
    return np.einsum("bu,uck->bck", weights[:, keep], per_unit)


def _alpha_from(o: np.ndarray, level: str, domain: np.ndarray) -> float:
    n_c = o.sum(1)
    n = n_c.sum()
    if n <= 1:
        return math.nan
    delta = distance_matrix(domain, level, n_c)
    observed = (o * delta).sum()
    expected = (np.outer(n_c, n_c) * delta).sum() / (n - 1)
    return 1.0 - observed / expected if expected > 0 else math.nan


def krippendorff_alpha(units, values, level: str = "ordinal", domain=None) -> float:
    """Krippendorff's alpha of (unit, value) pairs: one pair per rating (raters need not be named: alpha only
    counts values within units). Units with one value are pairable with nothing and drop out."""
    values = np.asarray(values, dtype=float)
    domain = np.unique(values) if domain is None else np.asarray(sorted(domain), dtype=float)
    counts = value_counts(np.asarray(units), values, domain)
    return _alpha_from(_coincidences(counts), level, domain)


def alpha_bootstrap(units, values, level: str = "ordinal", domain=None, level_ci: float = 0.95,
                    n_boot: int = 1000, seed: int = 0) -> Interval:
    """Alpha with a percentile interval from resampling units (items x question) with replacement."""
    values = np.asarray(values, dtype=float)
    domain = np.unique(values) if domain is None else np.asarray(sorted(domain), dtype=float)
    counts = value_counts(np.asarray(units), values, domain)
    est = _alpha_from(_coincidences(counts), level, domain)
    n_u = counts.shape[0]
    if n_u < 2 or not math.isfinite(est):
        return Interval(est, math.nan, math.nan, "bootstrap over units")
    w = np.random.default_rng(seed).multinomial(n_u, np.full(n_u, 1.0 / n_u), size=n_boot).astype(float)
    boots = np.array([_alpha_from(o, level, domain) for o in _coincidences(counts, w)])
    boots = boots[np.isfinite(boots)]
    lo, hi = np.quantile(boots, [0.5 - level_ci / 2, 0.5 + level_ci / 2])
    return Interval(est, float(lo), float(hi), "bootstrap over units")


# --- A/B ---------------------------------------------------------------------------------------------------------
def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (scipy's binomtest)."""
    if n == 0:
        return math.nan, math.nan
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def ab_summary(choices: list[str], level: float = 0.95) -> dict:
    """Choices 'A', 'B' or '=' (cannot determine / both equally): counts, ties apart, and A's win rate among the
    decided answers with its Wilson interval."""
    a, b, tie = choices.count("A"), choices.count("B"), choices.count("=")
    low, high = wilson(a, a + b, level)
    return {"a_wins": a, "b_wins": b, "ties": tie, "n": a + b + tie, "decided": a + b,
            "a_rate": a / (a + b) if a + b else math.nan, "a_low": low, "a_high": high,
            "tie_share": tie / (a + b + tie) if a + b + tie else math.nan}


# --- screening ---------------------------------------------------------------------------------------------------
# The P.808 toolkit's thresholds (CONTEXT 13): traps exact, gold within 1, variance >= 0.1, correlation >= 0.7.
MIN_VARIANCE = 0.1
MIN_CORRELATION = 0.7
GOLD_TOLERANCE = 1
# A per-condition mean of one or two ratings is mostly noise: such cells are left out of the correlation (short
# sessions where raters see few items per condition then rely on traps, gold and variance).
MIN_PER_CONDITION = 3


def screen_raters(rows: list[dict], min_variance: float = MIN_VARIANCE, min_correlation: float = MIN_CORRELATION,
                  gold_tolerance: int = GOLD_TOLERANCE) -> dict:
    """Which raters to exclude and why. `rows`: ACR answers as dicts rater, role ('test', 'reference', 'gold',
    'trap'), condition, value, expect (gold/trap). Rules: every trap answered exactly; every gold within
    `gold_tolerance`; variance of the rater's test ratings at least `min_variance`; Pearson correlation of the
    rater's per-condition means with the other raters' per-condition MOS at least `min_correlation` (over the
    question x condition cells where the rater gave MIN_PER_CONDITION or more ratings, and only with 3 or more such
    cells; fewer make a correlation meaningless, and the rule is then skipped and said so)."""
    by_rater: dict[str, list[dict]] = {}
    for r in rows:
        by_rater.setdefault(r["rater"], []).append(r)
    out = {}
    for rater, mine in sorted(by_rater.items()):
        reasons = []
        traps = [r for r in mine if r["role"] == "trap"]
        wrong = [r for r in traps if int(r["value"]) != int(r["expect"])]
        if wrong:
            reasons.append(f"answered {len(wrong)} of {len(traps)} trap item(s) wrongly")
        golds = [r for r in mine if r["role"] == "gold"]
        off = [r for r in golds if abs(int(r["value"]) - int(r["expect"])) > gold_tolerance]
        if off:
            reasons.append(f"{len(off)} of {len(golds)} gold item(s) more than {gold_tolerance} from the expected answer")
        test = np.array([float(r["value"]) for r in mine if r["role"] in ("test", "reference")])
        if len(test) >= 2 and test.var(ddof=1) < min_variance:
            reasons.append(f"rating variance {test.var(ddof=1):.3f} < {min_variance}")
        corr, note = _correlation_with_mos(rater, mine, rows)
        if corr is not None and corr < min_correlation:
            reasons.append(f"correlation with the others' MOS {corr:.2f} < {min_correlation}")
        out[rater] = {"excluded": bool(reasons), "reasons": reasons, "correlation": corr, "note": note,
                      "traps": len(traps), "golds": len(golds), "answers": len(mine)}
    return out


def _correlation_with_mos(rater, mine, rows):
    keyed = lambda r: (r["question"], r["condition"])  # noqa: E731
    own: dict = {}
    for r in mine:
        if r["role"] in ("test", "reference"):
            own.setdefault(keyed(r), []).append(float(r["value"]))
    others: dict = {}
    for r in rows:
        if r["rater"] != rater and r["role"] in ("test", "reference"):
            others.setdefault(keyed(r), []).append(float(r["value"]))
    keys = sorted(k for k in own if k in others and len(own[k]) >= MIN_PER_CONDITION)
    if len(keys) < 3:
        return None, (f"correlation not applied: {len(keys)} condition(s) with {MIN_PER_CONDITION}+ of the rater's "
                      "ratings shared with other raters (needs 3)")
    x = np.array([np.mean(own[k]) for k in keys])
    y = np.array([np.mean(others[k]) for k in keys])
    if x.std() == 0 or y.std() == 0:
        return 0.0, "no spread across conditions"
    return float(np.corrcoef(x, y)[0, 1]), f"over {len(keys)} question x condition means"
