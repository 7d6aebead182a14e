"""Mean and 95% confidence interval over seeds, and an exact test of success counts, for the
comparison tools."""
import math
import statistics

# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom; the normal's beyond.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_ci(values):
    """(mean, half-width of the 95% t confidence interval); the half-width is nan for one value."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError('mean_ci needs at least one value')
    mean = statistics.fmean(values)
    n = len(values)
    if n == 1:
        return mean, math.nan
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return mean, t * statistics.stdev(values) / math.sqrt(n)


def separated(a, b):
    """Whether two samples' 95% intervals do not overlap: 'a', 'b' (the higher one) or None."""
    (ma, ha), (mb, hb) = mean_ci(a), mean_ci(b)
    if math.isnan(ha) or math.isnan(hb):
        return None
    if ma - ha > mb + hb:
        return 'a'
    if mb - hb > ma + ha:
        return 'b'
    return None


def fmt(values, digits=3):
    mean, half = mean_ci(values)
    return f'{mean:.{digits}f}' if math.isnan(half) else f'{mean:.{digits}f} ± {half:.{digits}f}'


def fisher_greater(k1, n1, k2, n2):
    """One-sided Fisher exact p-value that group 1's success rate (k1 of n1) exceeds group 2's
    (k2 of n2): the chance, with the margins fixed and no difference, of k1 or more of the
    k1 + k2 successes falling in group 1. For all-or-nothing outcomes (a seed learns a task or
    it does not), where a t interval over 0/1 values says little."""
    if not (0 <= k1 <= n1 and 0 <= k2 <= n2 and n1 + n2 > 0):
        raise ValueError(f'fisher_greater needs 0 <= k <= n in both groups, got {k1} of {n1} '
                         f'and {k2} of {n2}')
    k = k1 + k2
    total = math.comb(n1 + n2, k)
    return sum(math.comb(n1, i) * math.comb(n2, k - i)
               for i in range(k1, min(n1, k) + 1)) / total
