//! Parsing durations given on the command line: `10` and `0.5` (seconds, as `flock -w`),
//! `250ms`, `30s`, `5m`, `1h30m`, `2d`.
//!
//! Written here rather than taken from `humantime`, which refuses a bare number (`flock -w 10`
//! must keep working) and fractions (`1.5h`).

use std::time::Duration;

const NANOS_PER_MS: u128 = 1_000_000;
const NANOS_PER_S: u128 = 1_000 * NANOS_PER_MS;

/// The units, largest first; a duration lists its parts in this order, each at most once.
const UNITS: [(&str, u128); 5] = [
    ("d", 86_400 * NANOS_PER_S),
    ("h", 3_600 * NANOS_PER_S),
    ("m", 60 * NANOS_PER_S),
    ("s", NANOS_PER_S),
    ("ms", NANOS_PER_MS),
];

/// Parses a duration: a bare decimal number of seconds (`10`, `0.25`), or one or more
/// `<number><unit>` parts with units `d`, `h`, `m`, `s`, `ms` from largest to smallest
/// (`1h30m`, `1m0.5s`, `250ms`). Numbers may have a fraction. A value too large for
/// [`Duration`] is [`Duration::MAX`] (no limit in practice).
pub fn parse(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration `{text}`: expected seconds (`10`, `0.5`) or parts like \
             `250ms`, `30s`, `5m`, `1h30m`"
        )
    };
    if text.is_empty() {
        return Err(invalid());
    }
    let mut rest = text;
    let mut total: u128 = 0;
    let mut smallest_allowed = 0; // index into UNITS of the next allowed unit
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let per_unit = if unit.is_empty() {
            if rest.len() != text.len() {
                // `1h30` is ambiguous: refuse rather than guess minutes or seconds.
                return Err(invalid());
            }
            NANOS_PER_S
        } else {
            let position = UNITS[smallest_allowed..]
                .iter()
                .position(|(name, _)| *name == unit)
                .ok_or_else(invalid)?;
            smallest_allowed += position + 1;
            UNITS[smallest_allowed - 1].1
        };
        total = total.saturating_add(scale(number, per_unit).ok_or_else(invalid)?);
        rest = after;
    }
    let secs = total / NANOS_PER_S;
    let nanos = (total % NANOS_PER_S) as u32;
    Ok(match u64::try_from(secs) {
        Ok(secs) => Duration::new(secs, nanos),
        Err(_) => Duration::MAX,
    })
}

/// A duration for messages: `302 ms`, `1.0 s`, `2 s`, `42 s`, `5 min 3 s`, `2 h 5 min`
/// (never Rust's `302.211649ms` Debug form).
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        format!("{} ms", d.as_millis())
    } else if secs < 60 && d.subsec_millis() == 0 {
        format!("{secs} s")
    } else if secs < 10 {
        format!("{:.1} s", d.as_secs_f64())
    } else if secs < 60 {
        format!("{} s", d.as_secs_f64().round() as u64)
    } else if secs < 3600 {
        format!("{} min {} s", secs / 60, secs % 60)
    } else {
        format!("{} h {} min", secs / 3600, secs % 3600 / 60)
    }
}

/// `number` (decimal digits with at most one `.`) times `per_unit` nanoseconds, exactly,
/// truncated below a nanosecond; saturating on overflow. `None` if `number` is malformed.
/// Fraction digits after the 24th are ignored (together worth less than 10^-10 ns).
fn scale(number: &str, per_unit: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut total: u128 = 0;
    for digit in whole.bytes() {
        total = total
            .saturating_mul(10)
            .saturating_add(u128::from(digit - b'0'));
    }
    total = total.saturating_mul(per_unit);
    // The fraction as one integer over a power of ten, so that the product is exact (scaling
    // digit by digit dropped part of a nanosecond at every digit: `.00000000002m` was 0 ns).
    // 24 digits keep it within u128: 10^24 * 86_400 * 10^9 < 2^127.
    let fraction = &fraction[..fraction.len().min(24)];
    let numerator = (fraction.bytes()).fold(0u128, |n, digit| n * 10 + u128::from(digit - b'0'));
    let denominator = 10u128.pow(fraction.len() as u32);
    Some(total.saturating_add(numerator * per_unit / denominator))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bare_numbers_are_seconds_with_fractions() {
        // `-w 10` means seconds as in flock(1); fractions are allowed there too.
        assert_eq!(parse("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0.25"), Ok(ms(250)));
        assert_eq!(parse(".5"), Ok(ms(500)));
        assert_eq!(parse("2."), Ok(Duration::from_secs(2)));
        assert_eq!(parse("0.1"), Ok(ms(100)), "exact, no binary float rounding");
    }

    #[test]
    fn units_and_combinations_parse() {
        // The forms the issue and README promise.
        assert_eq!(parse("250ms"), Ok(ms(250)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1h30m15s"), Ok(Duration::from_secs(5415)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1m0.5s"), Ok(ms(60_500)));
        assert_eq!(parse("1s500ms"), Ok(ms(1500)));
    }

    #[test]
    fn malformed_durations_are_refused_with_the_accepted_forms() {
        // A typo must be a usage error, never a silently different wait.
        for bad in [
            "", "-1", "1x", "s", "1.2.3", "1h30", "30m1h", "1m1m", "1 s", "1e3", " 1", ".", "ms",
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(error.contains("expected seconds"), "{bad}: {error}");
        }
    }

    #[test]
    fn huge_durations_saturate_instead_of_overflowing() {
        // A huge value means "no limit in practice", never a panic or a wrap-around.
        assert_eq!(
            parse("99999999999999999999999999999999999999"),
            Ok(Duration::MAX)
        );
        assert_eq!(parse("9999999999999999999999d"), Ok(Duration::MAX));
        assert_eq!(
            parse("18446744073709551615"),
            Ok(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn human_durations_read_at_a_glance() {
        // Messages show a unit a person reads, never Debug's `302.211649ms`.
        assert_eq!(human(Duration::from_nanos(302_211_649)), "302 ms");
        assert_eq!(human(Duration::from_nanos(1_001_329_695)), "1.0 s");
        assert_eq!(human(Duration::from_secs(2)), "2 s");
        assert_eq!(human(Duration::from_millis(42_400)), "42 s");
        assert_eq!(human(Duration::from_secs(303)), "5 min 3 s");
        assert_eq!(human(Duration::from_secs(7500)), "2 h 5 min");
    }

    #[test]
    fn digits_below_a_nanosecond_are_truncated() {
        // Precision past the nanosecond is dropped, not rounded into an error.
        assert_eq!(parse("0.0000000019"), Ok(Duration::from_nanos(1)));
        assert_eq!(
            parse("1.123456789123456789"),
            Ok(Duration::new(1, 123_456_789))
        );
    }
}

#[cfg(test)]
mod properties {
    //! Property tests of [`parse`]: no input panics it, and every duration in the documented
    //! grammar has its exact value, truncated below a nanosecond, saturating at
    //! [`Duration::MAX`].

    use super::*;
    use proptest::prelude::*;

    /// A number as the grammar allows it (`10`, `0.25`, `.5`, `2.`; up to 40 digits before
    /// the point, so that some overflow, and 24 after it) and its digits before and after the
    /// point.
    fn number() -> impl Strategy<Value = (String, String, Option<String>)> {
        let whole = prop_oneof![3 => "[0-9]{0,3}", 1 => "[0-9]{0,40}"];
        let fraction = prop_oneof![3 => "[0-9]{0,9}", 1 => "[0-9]{0,24}"];
        (whole, prop::option::of(fraction))
            .prop_filter("a number has a digit", |(w, f)| {
                !w.is_empty() || f.as_ref().is_some_and(|f| !f.is_empty())
            })
            .prop_map(|(whole, fraction)| {
                let text = match &fraction {
                    Some(f) => format!("{whole}.{f}"),
                    None => whole.clone(),
                };
                (text, whole, fraction)
            })
    }

    /// `whole.fraction` units of `per_unit` nanoseconds, computed exactly; `None` beyond u128.
    fn exact(whole: &str, fraction: Option<&str>, per_unit: u128) -> Option<u128> {
        let digits = |s: &str| {
            s.bytes().try_fold(0u128, |n, b| {
                n.checked_mul(10)?.checked_add(u128::from(b - b'0'))
            })
        };
        let fraction = fraction.unwrap_or("");
        let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap());
        digits(whole)?
            .checked_mul(per_unit)?
            .checked_add(digits(fraction)? * per_unit / scale)
    }

    fn duration(nanos: Option<u128>) -> Duration {
        let Some(nanos) = nanos else {
            return Duration::MAX;
        };
        match u64::try_from(nanos / NANOS_PER_S) {
            Ok(secs) => Duration::new(secs, (nanos % NANOS_PER_S) as u32),
            Err(_) => Duration::MAX,
        }
    }

    /// A duration in the grammar: a bare number of seconds, or parts with units from largest
    /// to smallest, each at most once; with its exact value.
    fn well_formed() -> impl Strategy<Value = (String, Duration)> {
        let bare = number().prop_map(|(text, whole, fraction)| {
            let nanos = exact(&whole, fraction.as_deref(), NANOS_PER_S);
            (text, duration(nanos))
        });
        let parts = prop::sample::subsequence(UNITS.to_vec(), 1..=UNITS.len())
            .prop_flat_map(|units| {
                let n = units.len();
                (Just(units), prop::collection::vec(number(), n))
            })
            .prop_map(|(units, numbers)| {
                let mut text = String::new();
                let mut total = Some(0u128);
                for ((unit, per_unit), (number, whole, fraction)) in units.iter().zip(numbers) {
                    text.push_str(&number);
                    text.push_str(unit);
                    let part = exact(&whole, fraction.as_deref(), *per_unit);
                    total = total.zip(part).and_then(|(t, p)| t.checked_add(p));
                }
                (text, duration(total))
            });
        prop_oneof![bare, parts]
    }

    #[test]
    fn a_fraction_finer_than_the_unit_keeps_its_whole_nanoseconds() {
        // Found by the property below: 2e-11 min is 1.2 ns, read as 0 ns when each digit's
        // share was truncated on its own.
        assert_eq!(parse(".00000000002m"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse("0.000000000019h"), Ok(Duration::from_nanos(68)));
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn no_input_panics_the_duration_parser(text in any::<String>()) {
            // Anything typed after `-w` is a value or a usage error; the empty string is an error.
            let parsed = parse(&text);
            prop_assert!(!(text.is_empty() && parsed.is_ok()));
        }

        #[test]
        fn near_grammar_input_never_panics_the_parser(text in "[0-9.dhms]{0,16}") {
            // Digits, points and unit letters in any order: a value or an error naming the forms.
            if let Err(message) = parse(&text) {
                prop_assert!(message.contains("expected seconds"), "{}", message);
            }
        }

        #[test]
        fn well_formed_durations_have_their_exact_value((text, expected) in well_formed()) {
            // Exact decimal arithmetic, no float rounding, truncated below a nanosecond;
            // beyond what a Duration holds, Duration::MAX.
            prop_assert_eq!(parse(&text), Ok(expected), "{}", text);
        }
    }
}
