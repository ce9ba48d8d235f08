//! Parsing durations given on the command line: `10`, `0.5` and `1e3` (seconds, as
//! `flock -w`), `250ms`, `30s`, `5m`, `1h30m`, `2d`.
//!
//! Written here rather than taken from `humantime`, which refuses a bare number (`flock -w 10`
//! must keep working) and fractions (`1.5h`). The arithmetic is exact (decimal digits, no
//! binary floating point) and saturating: a value too large for [`Duration`] is
//! [`Duration::MAX`], "no limit" in practice, never an overflow or a panic.

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

/// The shortest lease `--lease` accepts. A holder renews its lease at about a third of its
/// length, so a shorter one would rewrite and flush the state file many times a second and
/// slow every other user of the semaphore.
pub const MIN_LEASE: Duration = filesem::MIN_LEASE;

/// Parses a duration: a bare decimal number of seconds (`10`, `0.25`, `1e3`, `1.5e-3`), or
/// one or more `<number><unit>` parts with units `d`, `h`, `m`, `s`, `ms` from largest to
/// smallest (`1h30m`, `1m0.5s`, `250ms`); numbers may have a fraction. Digits below a
/// nanosecond are dropped; a value too large for [`Duration`] is [`Duration::MAX`] (no limit
/// in practice).
pub fn parse(text: &str) -> Result<Duration, String> {
    let nanos = bare_seconds(text)
        .or_else(|| with_units(text))
        .ok_or_else(|| {
            format!(
                "invalid duration `{text}`: expected seconds (`10`, `0.5`, `1e3`) or parts like \
                 `250ms`, `30s`, `5m`, `1h30m`"
            )
        })?;
    let secs = nanos / NANOS_PER_S;
    let subsec = (nanos % NANOS_PER_S) as u32;
    Ok(match u64::try_from(secs) {
        Ok(secs) => Duration::new(secs, subsec),
        Err(_) => Duration::MAX,
    })
}

/// Parses a lease: a duration as [`parse`] takes it, at least [`MIN_LEASE`].
pub fn parse_lease(text: &str) -> Result<Duration, String> {
    let lease = parse(text)?;
    if lease < MIN_LEASE {
        return Err(format!(
            "lease `{text}` is shorter than the minimum of {}: renewing it would rewrite the \
             state file several times a second",
            human(MIN_LEASE)
        ));
    }
    Ok(lease)
}

/// A bare number of seconds, `<digits>[.<digits>][e[+-]<digits>]` (as `strtod` reads
/// `flock -w`'s argument, without its `inf` and hexadecimal forms), in nanoseconds; `None`
/// if `text` is not of that form.
fn bare_seconds(text: &str) -> Option<u128> {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if !is_number(whole, fraction) {
        return None;
    }
    let exponent = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Anything past a few hundred saturates or truncates to zero anyway.
            let magnitude = digits
                .bytes()
                .fold(0i64, |n, b| (n * 10 + i64::from(b - b'0')).min(1_000));
            if e.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        }
    };
    // The value is the digits of `whole` and `fraction` as one integer, times 10^shift.
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    let shift = exponent - fraction.len() as i64;
    // Where the decimal point falls in `digits`: left of 0, inside, or past the end.
    let point = digits.len() as i64 + shift;
    if point > 40 {
        // At least 10^40 s: far beyond Duration::MAX (about 1.8 * 10^19 s).
        return Some(u128::MAX);
    }
    if point < -40 {
        // Below 10^-40 s: zero nanoseconds.
        return Some(0);
    }
    let (whole, fraction) = if point <= 0 {
        (
            String::new(),
            format!("{}{digits}", "0".repeat(point.unsigned_abs() as usize)),
        )
    } else if point as usize >= digits.len() {
        (
            format!("{digits}{}", "0".repeat(point as usize - digits.len())),
            String::new(),
        )
    } else {
        let (w, f) = digits.split_at(point as usize);
        (w.to_string(), f.to_string())
    };
    Some(scale(&whole, &fraction, NANOS_PER_S))
}

/// One or more `<number><unit>` parts, units from largest to smallest, in nanoseconds;
/// `None` if malformed.
fn with_units(text: &str) -> Option<u128> {
    if text.is_empty() {
        return None;
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
        // A part without a unit after another (`1h30`) is ambiguous: refused, not guessed.
        let position = UNITS[smallest_allowed..]
            .iter()
            .position(|(name, _)| *name == unit)?;
        smallest_allowed += position + 1;
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if !is_number(whole, fraction) {
            return None;
        }
        total = total.saturating_add(scale(whole, fraction, UNITS[smallest_allowed - 1].1));
        rest = after;
    }
    Some(total)
}

/// Whether `whole.fraction` is a decimal number: digits on either side of the point, at
/// least one digit in all.
fn is_number(whole: &str, fraction: &str) -> bool {
    (!whole.is_empty() || !fraction.is_empty())
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
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

/// `whole.fraction` (decimal digits, checked by [`is_number`]) times `per_unit`
/// nanoseconds, exactly, truncated below a nanosecond; saturating on overflow. Every digit
/// of the fraction counts, however many there are.
fn scale(whole: &str, fraction: &str, per_unit: u128) -> u128 {
    let mut total: u128 = 0;
    for digit in whole.bytes() {
        total = total
            .saturating_mul(10)
            .saturating_add(u128::from(digit - b'0'));
    }
    total = total.saturating_mul(per_unit);
    // The fraction's share, floor(0.d1d2...dn * per_unit), by Horner's rule from the last
    // digit: floor((d * per_unit + x) / 10) equals floor((d * per_unit + floor(x)) / 10), so
    // truncating at every step loses nothing, and the carry stays below `per_unit`. (Scaling
    // each digit's share on its own dropped part of a nanosecond at every digit:
    // `.00000000002m` was 0 ns.)
    let share = fraction.bytes().rev().fold(0u128, |carry, digit| {
        (u128::from(digit - b'0') * per_unit + carry) / 10
    });
    total.saturating_add(share)
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
        // The forms docs/cli.md promises.
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
            "", "-1", "1x", "s", "1.2.3", "1h30", "30m1h", "1m1m", "1 s", " 1", ".", "ms", "1e",
            "e3", "1e+", "1e-", ".e3", "1e3s", "1.5e3.2", "1e3e4", "inf", "nan", "0x10", "1_000",
            "+1",
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(error.contains("expected seconds"), "{bad}: {error}");
        }
    }

    #[test]
    fn exponents_scale_bare_seconds_exactly() {
        // `flock -w` reads its argument with strtod, so `1e3` is a thousand seconds there too.
        assert_eq!(parse("1e3"), Ok(Duration::from_secs(1000)));
        assert_eq!(parse("1E3"), Ok(Duration::from_secs(1000)));
        assert_eq!(parse("1.5e-3"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse("25e-2"), Ok(ms(250)));
        assert_eq!(parse("2.5e+1"), Ok(Duration::from_secs(25)));
        assert_eq!(parse("0e999"), Ok(Duration::ZERO));
        assert_eq!(parse("1e-9"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse("1e-10"), Ok(Duration::ZERO), "below a nanosecond");
        assert_eq!(parse("1e-99999999999999999999"), Ok(Duration::ZERO));
    }

    #[test]
    fn huge_durations_saturate_instead_of_overflowing() {
        // A huge value means "no limit in practice", never a panic or a wrap-around.
        let u64_max_s = Duration::from_secs(u64::MAX);
        for (text, expected) in [
            ("99999999999999999999999999999999999999", Duration::MAX),
            ("9999999999999999999999d", Duration::MAX),
            (
                "99999999999999h",
                Duration::from_secs(99_999_999_999_999 * 3600),
            ),
            ("999999999999999999h", Duration::MAX),
            ("18446744073709551615", u64_max_s),
            ("18446744073709551615s", u64_max_s),
            ("18446744073709551615.999999999", Duration::MAX),
            ("18446744073709551616", Duration::MAX),
            ("1e30", Duration::MAX),
            ("1e99999999999999999999", Duration::MAX),
            ("340282366920938463463374607431768211456ms", Duration::MAX),
            (
                "9999999999999999999999999d99999999999999999999999h1s",
                Duration::MAX,
            ),
        ] {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0.000000001"), Ok(Duration::from_nanos(1)));
    }

    #[test]
    fn a_lease_below_the_minimum_is_refused_naming_it() {
        // Tiny leases rewrite the state many times a second (9 §4): refused, with the floor.
        for short in ["0", "1ms", "999ms", "0.999999999", "1e-3"] {
            let error = parse_lease(short).expect_err(short);
            assert!(error.contains("minimum of 1 s"), "{short}: {error}");
        }
        assert_eq!(parse_lease("1"), Ok(MIN_LEASE));
        assert_eq!(parse_lease("1000ms"), Ok(MIN_LEASE));
        assert_eq!(parse_lease("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_lease("1e30"), Ok(Duration::MAX));
        assert!(parse_lease("x").unwrap_err().contains("expected seconds"));
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

    /// A bare number of seconds with an exponent (`1.5e-3`, `25.E+2`, `.5e0`), up to 29
    /// digits, and its exact value.
    fn with_exponent() -> impl Strategy<Value = (String, Duration)> {
        let mark = prop_oneof![Just("e"), Just("E")];
        let plus = prop_oneof![Just(""), Just("+")];
        ("[0-9]{0,20}", "[0-9]{0,9}", -45i32..=45, mark, plus)
            .prop_filter("a number has a digit", |(whole, fraction, ..)| {
                !whole.is_empty() || !fraction.is_empty()
            })
            .prop_map(|(whole, fraction, exponent, mark, plus)| {
                let sign = if exponent < 0 { "-" } else { plus };
                let text = format!("{whole}.{fraction}{mark}{sign}{}", exponent.unsigned_abs());
                // The value is `n * 10^k` ns: the digits as one integer, the point moved by
                // the exponent, less the fraction's digits, plus 9 for nanoseconds.
                let n: u128 = format!("0{whole}{fraction}").parse().unwrap();
                let k = exponent - i32::try_from(fraction.len()).unwrap() + 9;
                let nanos = if n == 0 {
                    Some(0)
                } else if k >= 0 {
                    10u128
                        .checked_pow(k.unsigned_abs())
                        .and_then(|p| n.checked_mul(p))
                } else {
                    Some(10u128.checked_pow(k.unsigned_abs()).map_or(0, |p| n / p))
                };
                (text, duration(nanos))
            })
    }

    #[test]
    fn a_fraction_finer_than_the_unit_keeps_its_whole_nanoseconds() {
        // Found by the property below: 2e-11 min is 1.2 ns, read as 0 ns when each digit's
        // share was truncated on its own.
        assert_eq!(parse(".00000000002m"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse("0.000000000019h"), Ok(Duration::from_nanos(68)));
        // A digit far below a nanosecond still carries into it: this is 20 s plus 4e-26 s.
        assert_eq!(
            parse("0.333333333333333333333333334m"),
            Ok(Duration::from_secs(20))
        );
        assert_eq!(
            parse("2.0000000000000000000000000000000000001e-9"),
            Ok(Duration::from_nanos(2))
        );
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

        #[test]
        fn bare_seconds_with_an_exponent_have_their_exact_value((text, expected) in with_exponent()) {
            // As `flock -w` reads them (`1.5e-3`): the exponent moves the point before anything
            // is truncated, and a value beyond what a Duration holds is Duration::MAX.
            prop_assert_eq!(parse(&text), Ok(expected), "{}", text);
        }
    }
}
