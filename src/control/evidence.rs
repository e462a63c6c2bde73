//! How sure the data make us about a true ratio (a 5xx ratio, the share of requests slower
//! than some latency), when the data are looked at again and again as they arrive.
//!
//! A rollout step is judged every tick. A bound that holds for one look (Wilson, Clopper–
//! Pearson) is crossed by chance sooner or later when it is recomputed on every tick, so a
//! controller that aborts on it aborts healthy canaries. The bounds here are *confidence
//! sequences*, valid at every look at once: for `s` events in `n` requests, the true ratio `q`
//! is excluded only once the evidence against it,
//!
//! ```text
//! E(q) = m(s, n) / (q^s · (1 − q)^(n − s))
//! ```
//!
//! reaches `1 / alpha`, where `m` is the likelihood of the data averaged over a prior on the
//! ratio. Under the true `q`, `E` is a non-negative martingale starting at 1, so by Ville's
//! inequality it ever reaches `1 / alpha`, at any look, with probability at most `alpha`.
//!
//! Any prior keeps that guarantee; the prior only decides which ratios are bounded tightly
//! soonest. Ratios that matter here are mostly small (a 5xx ratio of a few percent, the 1% of
//! requests beyond a p99), so the prior is an equal mix of Beta(1, 100), Beta(1, 10) and the
//! uniform Beta(1, 1): tight where the thresholds are, still quick for a canary failing
//! every request.

/// The values of a true ratio the data do not exclude, at the `alpha` they were computed for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// The `b` of each Beta(1, b) in the prior mix, with equal weights.
const PRIOR_B: [f64; 3] = [100.0, 10.0, 1.0];

/// The natural log of `m(s, n)`: `Σ w · B(1 + s, b + f) / B(1, b)` over the prior mix.
fn log_mixture(s: f64, f: f64) -> f64 {
    let terms = PRIOR_B.map(|b| ln_beta(1.0 + s, b + f) - ln_beta(1.0, b));
    let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = terms.iter().map(|t| (t - top).exp()).sum();
    top + (sum / PRIOR_B.len() as f64).ln()
}

fn ln_beta(a: f64, b: f64) -> f64 {
    libm::lgamma(a) + libm::lgamma(b) - libm::lgamma(a + b)
}

/// The natural log of `E(q)` for `s` events in `n`.
fn log_evidence(s: u64, n: u64, q: f64) -> f64 {
    Counts::new(s, n).log_evidence(q)
}

/// Events and non-events, with their `log_mixture` computed once for many `q`.
struct Counts {
    s: f64,
    f: f64,
    log_m: f64,
}

impl Counts {
    fn new(s: u64, n: u64) -> Counts {
        let (s, f) = (s as f64, n.saturating_sub(s) as f64);
        Counts {
            s,
            f,
            log_m: log_mixture(s, f),
        }
    }

    fn log_evidence(&self, q: f64) -> f64 {
        // 0 · ln 0 = 0: no events say nothing against q = 0.
        let term = |count: f64, p: f64| if count == 0.0 { 0.0 } else { count * p.ln() };
        self.log_m - term(self.s, q) - term(self.f, 1.0 - q)
    }
}

/// True when the data show, at `alpha`, that the true ratio is above `q`: `q` is below the
/// estimate and excluded. One evaluation, no search: this is what a tick asks.
pub fn above(s: u64, n: u64, q: f64, alpha: f64) -> bool {
    n > 0 && (s as f64) > q * n as f64 && log_evidence(s, n, q) >= (1.0 / alpha).ln()
}

/// True when the data show, at `alpha`, that the true ratio is below `q`.
pub fn below(s: u64, n: u64, q: f64, alpha: f64) -> bool {
    n > 0 && (s as f64) < q * n as f64 && log_evidence(s, n, q) >= (1.0 / alpha).ln()
}

/// The confidence sequence's interval after `s` events in `n` requests; `[0, 1]` without
/// requests.
pub fn interval(s: u64, n: u64, alpha: f64) -> Interval {
    if n == 0 {
        return Interval {
            low: 0.0,
            high: 1.0,
        };
    }
    let estimate = s as f64 / n as f64;
    let limit = (1.0 / alpha).ln();
    let counts = Counts::new(s, n);
    let excluded = |q: f64| counts.log_evidence(q) >= limit;
    // E falls towards the estimate from either side (where it is at most 1, never excluded),
    // so each end is found by bisection.
    let low = if s == 0 {
        0.0
    } else {
        bisect(0.0, estimate, excluded)
    };
    let high = if s == n {
        1.0
    } else {
        bisect(estimate, 1.0, |q| !excluded(q))
    };
    Interval { low, high }
}

/// The boundary in `[lo, hi]` where `left_side(q)` turns from true to false.
fn bisect(mut lo: f64, mut hi: f64, left_side: impl Fn(f64) -> bool) -> f64 {
    // 50 halvings: far below the 0.1 percentage point that is ever shown.
    for _ in 0..50 {
        let mid = 0.5 * (lo + hi);
        if left_side(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_holds_the_estimate_and_narrows_with_data() {
        let small = interval(5, 50, 0.01);
        let large = interval(500, 5000, 0.01);
        for i in [small, large] {
            assert!(i.low < 0.1 && 0.1 < i.high, "{i:?}");
        }
        assert!(large.high - large.low < small.high - small.low);
        assert_eq!(
            interval(0, 0, 0.01),
            Interval {
                low: 0.0,
                high: 1.0
            }
        );
        assert_eq!(interval(0, 100, 0.01).low, 0.0);
        assert_eq!(interval(100, 100, 0.01).high, 1.0);
    }

    #[test]
    fn above_and_below_agree_with_the_interval() {
        for (s, n) in [(8, 57), (50, 50), (3, 400), (120, 1000), (0, 300)] {
            let i = interval(s, n, 0.002);
            for q in [0.001, 0.01, 0.05, 0.1, 0.2, 0.5] {
                // Away from the ends, where bisection rounding could decide.
                if (q - i.low).abs() < 1e-6 || (q - i.high).abs() < 1e-6 {
                    continue;
                }
                assert_eq!(above(s, n, q, 0.002), q < i.low, "{s}/{n} q={q} {i:?}");
                assert_eq!(below(s, n, q, 0.002), q > i.high, "{s}/{n} q={q} {i:?}");
            }
        }
    }

    #[test]
    fn a_canary_failing_every_request_is_excluded_at_once() {
        assert!(above(50, 50, 0.05, 0.01 / 5.0));
        assert!(interval(50, 50, 0.002).low > 0.75);
    }
}
