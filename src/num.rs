//! Rounding a non-negative `f64` to a `u64` on the request path.
//!
//! `f64::ceil` and `f64::round` are calls into libm on the baseline x86-64
//! target (the `roundsd` instruction needs SSE4.1), about 20 instructions
//! each; admission, settlement and the stats round a few values per request.
//! These are a cast and a compare. Both saturate like `as u64`: NaN and
//! negative values give 0, values past `u64::MAX` give `u64::MAX`.

/// The smallest integer at least `x`.
pub fn ceil_u64(x: f64) -> u64 {
    let t = x as u64;
    if (t as f64) < x {
        t.saturating_add(1)
    } else {
        t
    }
}

/// `x` to the nearest integer, halves away from zero (as `f64::round`).
pub fn round_u64(x: f64) -> u64 {
    if x.is_nan() || x <= 0.0 {
        return 0;
    }
    let t = x as u64;
    // `x - t` is exact for `x` below 2^53; above it `x` is an integer already.
    if x - t as f64 >= 0.5 {
        t.saturating_add(1)
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn they_agree_with_std_everywhere_that_matters() {
        let mut cases = vec![
            0.0,
            -0.0,
            -1.5,
            0.1,
            0.5,
            0.49999999999999994,
            1.0,
            1.5,
            2.5,
            2.4999,
            1e-300,
            4503599627370495.5,
            9007199254740993.0,
            1.8e19,
            1e300,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        let mut rng = crate::reqid::IdGen::new(7);
        for _ in 0..100_000 {
            let bits = rng.next_u64();
            cases.push(f64::from_bits(bits >> 2)); // non-negative, every magnitude
            cases.push((bits % 10_000_000) as f64 / 1000.0);
        }
        for x in cases {
            assert_eq!(ceil_u64(x), x.ceil() as u64, "ceil {x:e}");
            assert_eq!(round_u64(x), x.round() as u64, "round {x:e}");
        }
    }
}
