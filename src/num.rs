//! Rounding a non-negative `f64` to a `u64`, and hex digits, on the request
//! path.
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

/// US dollars to the pico-dollar, the unit spend is kept in: a sum or a
/// difference of costs written as JSON shows `0.109`, not the float's
/// `0.10899999999999999`. Negative and NaN give 0, as [`round_u64`].
pub fn to_pico(usd: f64) -> f64 {
    round_u64(usd * 1e12) as f64 / 1e12
}

/// The 32 lower-case hex digits of `v`, most significant first: request ids
/// and cache keys in every response head and log row. Eight digits at a time
/// in a word (each nibble spread to a byte, then made a digit) instead of a
/// table look-up per digit: about a sixth of the instructions.
pub fn hex_u128(v: u128) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&hex_u32((v >> (96 - 32 * i)) as u32));
    }
    out
}

/// The 8 lower-case hex digits of `v`, most significant first.
fn hex_u32(v: u32) -> [u8; 8] {
    // Nibble k (from the least significant) ends in byte k.
    let mut x = u64::from(v);
    x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // A byte's high bit of (nibble + 6) is set when the nibble is a-f.
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * u64::from(b'a' - b'0' - 10)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_are_written_to_the_pico_dollar_without_float_noise() {
        assert_eq!(to_pico(0.2 - 0.091).to_string(), "0.109");
        assert_eq!(to_pico(0.06 - 0.004).to_string(), "0.056");
        assert_eq!(to_pico(1.92e-7 + 3e-23).to_string(), "0.000000192");
        assert_eq!(to_pico(-0.5), 0.0);
        assert_eq!(to_pico(25.0).to_string(), "25");
    }

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

    #[test]
    fn hex_digits_are_the_formatted_ones() {
        let mut rng = crate::reqid::IdGen::new(3);
        let mut values = vec![0, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210];
        values.extend(
            (0..1000).map(|_| u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())),
        );
        values.extend((0..128).map(|b| 1u128 << b));
        for v in values {
            assert_eq!(hex_u128(v), format!("{v:032x}").as_bytes(), "{v:x}");
        }
    }
}
