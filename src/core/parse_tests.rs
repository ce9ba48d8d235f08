//! Property tests of what reads untrusted bytes: the state parser ([`Document::parse`]) and
//! the token-floor scan that [`Semaphore::recover`](crate::Semaphore::recover) runs over a
//! corrupt file. Inputs: arbitrary bytes, arbitrary JSON, documents near the real shape with
//! random extra fields, random types in known fields and numbers at the edges (0, -0, 1e400,
//! 2^53, 2^64, u128::MAX, 1.10), and valid documents cut or damaged at a random byte.
//!
//! The properties: nothing panics; a document that parses is valid (capacity, tokens and
//! slots in range); writing it and reading it back gives the same known fields, and a second
//! round trip gives the same bytes as the first; the token floor is above every token the
//! bytes show (within range) and never above 2^53.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use proptest::prelude::*;

use crate::core::doc::{Document, MAX_CAPACITY, MAX_TOKEN};
use crate::core::tokens::token_floor;

// ---------------------------------------------------------------------------------------------
// JSON text strategies. Values are generated as text, so that numbers no f64 or u64 holds
// reach the parser exactly as a file would have them.

/// Numbers at the edges, and ordinary ones.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "-0",
            "1",
            "-1",
            "0.0",
            "-0.0",
            "1.10",
            "1e400",
            "-1e400",
            "2.5e-400",
            "1E+2",
            "9007199254740991",
            "9007199254740992",
            "9007199254740993",
            "18446744073709551615",
            "18446744073709551616",
            "340282366920938463463374607431768211455",
            "123456789012345678901234567890.5",
        ])
        .prop_map(str::to_string),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
    ]
}

/// A JSON string literal: any Unicode text, escaped as a writer would, or with hand-written
/// escapes.
fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        1 => prop::sample::select(vec![
            r#""""#,
            r#""\u00e9\n\t\"\\\/""#,
            r#""\ud83d\ude00""#,
            r#""a\u0000b""#,
        ])
        .prop_map(str::to_string),
    ]
}

/// Whitespace a writer may put between tokens.
fn ws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", " ", "\n  ", "\t", "\r\n"])
}

/// Any JSON value, a few levels deep.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        number(),
        string(),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec((ws(), inner.clone()), 0..6).prop_map(|items| {
                let items: Vec<String> =
                    items.into_iter().map(|(w, v)| format!("{w}{v}")).collect();
                format!("[{}]", items.join(","))
            }),
            prop::collection::vec((string(), ws(), inner), 0..6).prop_map(|fields| object(
                fields.into_iter().map(|(k, w, v)| (k, format!("{w}{v}")))
            )),
        ]
    })
}

/// An object from (key literal, value text) pairs, in order.
fn object(fields: impl IntoIterator<Item = (String, String)>) -> String {
    let fields: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// A field name that filesem does not know (it may look like one).
fn unknown_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "x_[a-z0-9_]{0,8}".prop_map(|k| serde_json::to_string(&k).unwrap()),
        prop::sample::select(vec!["Capacity", "holders ", "tokens", "_", "", "€"])
            .prop_map(|k| serde_json::to_string(k).unwrap()),
    ]
}

/// An RFC 3339 time between 1970 and 9999, in UTC or another offset, with 0 to 9 digits of
/// fraction (Go writes local offsets and nanoseconds).
fn timestamp() -> impl Strategy<Value = String> {
    // A day inside either end, so that no offset moves the date out of years 1..=9999.
    (
        86_400i64..253_402_214_400,
        0u32..1_000_000_000,
        -86_340i32..86_340,
        0usize..=9,
    )
        .prop_map(|(secs, nanos, offset, digits)| {
            let at = DateTime::from_timestamp(secs, nanos).unwrap();
            let offset = chrono::FixedOffset::east_opt(offset / 60 * 60).unwrap();
            let text = at
                .with_timezone(&offset)
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string();
            let fraction = format!("{nanos:09}");
            let fraction = match digits {
                0 => String::new(),
                n => format!(".{}", &fraction[..n]),
            };
            let zone = at.with_timezone(&offset).format("%:z").to_string();
            let zone = if zone == "+00:00" {
                "Z".to_string()
            } else {
                zone
            };
            format!("\"{text}{fraction}{zone}\"")
        })
}

/// A known field's value: usually of the right type and in range, sometimes any JSON.
fn known(valid: impl Strategy<Value = String> + 'static, strict: bool) -> BoxedStrategy<String> {
    if strict {
        valid.boxed()
    } else {
        prop_oneof![6 => valid, 1 => value()].boxed()
    }
}

fn small_uint() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..10).prop_map(|n| n.to_string()),
        (MAX_TOKEN - 3..=MAX_TOKEN).prop_map(|n| n.to_string()),
        any::<u32>().prop_map(|n| n.to_string()),
    ]
}

/// A holder or waiter entry; with `strict`, every known field is valid.
fn entry(strict: bool) -> impl Strategy<Value = String> {
    let owner = (
        string(),
        any::<u32>(),
        prop::option::of(any::<u64>()),
        prop::collection::vec((unknown_key(), value()), 0..2),
    )
        .prop_map(|(host, pid, start, extra)| {
            let mut fields = vec![
                ("\"host\"".to_string(), host),
                ("\"pid\"".to_string(), pid.to_string()),
            ];
            fields.extend(start.map(|s| ("\"start_time\"".to_string(), s.to_string())));
            fields.extend(extra);
            object(fields)
        });
    let witness = (any::<u64>(), any::<u64>())
        .prop_map(|(dev, ino)| format!("{{\"dev\":{dev},\"ino\":{ino}}}"));
    let metadata = prop::collection::btree_map("[a-z]{1,5}", "[ -~]{0,8}", 0..3)
        .prop_map(|m| serde_json::to_string(&m).unwrap());
    let optional = vec![
        ("token", known(small_uint(), strict)),
        ("ticket", known(small_uint(), strict)),
        ("slot", known((0u32..8).prop_map(|n| n.to_string()), strict)),
        ("owner", known(owner, strict)),
        ("witness", known(witness, strict)),
        ("expires_at", known(timestamp(), strict)),
        (
            "lease_ms",
            known(any::<u64>().prop_map(|n| n.to_string()), strict),
        ),
        (
            "detached",
            known(any::<bool>().prop_map(|b| b.to_string()), strict),
        ),
        (
            "priority",
            known(any::<i32>().prop_map(|n| n.to_string()), strict),
        ),
        ("metadata", known(metadata, strict)),
    ];
    let optional: Vec<_> = optional
        .into_iter()
        .map(|(k, v)| prop::option::weighted(0.4, v).prop_map(move |v| v.map(|v| (k, v))))
        .collect();
    (
        known(string(), strict),
        known(timestamp(), strict),
        optional,
        prop::collection::vec((unknown_key(), value()), 0..3),
    )
        .prop_map(|(id, at, optional, extra)| {
            let mut fields = vec![
                ("\"id\"".to_string(), id),
                ("\"acquired_at\"".to_string(), at),
            ];
            for (k, v) in optional.into_iter().flatten() {
                fields.push((format!("\"{k}\""), v));
            }
            fields.extend(extra);
            object(fields)
        })
}

/// A whole state document near the real shape; with `strict`, every known field is valid and
/// only the unknown fields are arbitrary.
fn document(strict: bool) -> impl Strategy<Value = String> {
    let capacity = prop_oneof![
        (1u32..=5).prop_map(|n| n.to_string()),
        Just(MAX_CAPACITY.to_string()),
    ];
    let capacity = if strict {
        capacity.boxed()
    } else {
        prop_oneof![3 => capacity, 1 => number(), 1 => value()].boxed()
    };
    let list = move || {
        prop_oneof![
            8 => prop::collection::vec(entry(strict), 0..4).prop_map(|e| format!("[{}]", e.join(","))),
            1 => Just("null".to_string()),
        ]
    };
    let next_token = prop_oneof![
        (1u64..100).prop_map(|n| n.to_string()),
        (MAX_TOKEN - 1..=MAX_TOKEN + 1).prop_map(|n| n.to_string()),
    ];
    (
        capacity,
        known(list(), strict),
        prop::option::weighted(0.5, known(Just("1".to_string()), strict)),
        prop::option::weighted(0.5, known(next_token, strict)),
        prop::option::weighted(0.5, known(list(), strict)),
        prop::collection::vec((unknown_key(), value()), 0..3),
        ws(),
    )
        .prop_map(|(capacity, holders, version, next, waiters, extra, w)| {
            let mut fields = vec![
                ("\"capacity\"".to_string(), capacity),
                ("\"holders\"".to_string(), format!("{w}{holders}")),
            ];
            fields.extend(version.map(|v| ("\"version\"".to_string(), v)));
            fields.extend(next.map(|v| ("\"next_token\"".to_string(), v)));
            fields.extend(waiters.map(|v| ("\"waiters\"".to_string(), v)));
            fields.extend(extra);
            format!("{w}{}{w}", object(fields))
        })
}

/// A valid document's bytes, damaged: cut at a byte, a byte changed, or bytes inserted.
fn damaged() -> impl Strategy<Value = Vec<u8>> {
    (
        document(true),
        any::<prop::sample::Index>(),
        0u8..3,
        any::<u8>(),
    )
        .prop_map(|(text, at, how, byte)| {
            let mut bytes = text.into_bytes();
            let i = at.index(bytes.len() + 1);
            match how {
                0 => bytes.truncate(i),
                1 if i < bytes.len() => bytes[i] = byte,
                _ => bytes.insert(i, byte),
            }
            bytes
        })
}

// ---------------------------------------------------------------------------------------------
// The properties.

/// The known fields of an entry, by value.
#[derive(Debug, PartialEq)]
struct KnownEntry {
    id: String,
    acquired_at: DateTime<Utc>,
    token: Option<u64>,
    ticket: Option<u64>,
    slot: Option<u32>,
    owner: Option<KnownOwner>,
    witness: Option<(u64, u64)>,
    expires_at: Option<DateTime<Utc>>,
    lease_ms: Option<u64>,
    detached: bool,
    priority: Option<i32>,
    metadata: BTreeMap<String, String>,
}

/// The known fields of an owner, by value.
#[derive(Debug, PartialEq)]
struct KnownOwner {
    host: String,
    pid: u32,
    start_time: Option<u64>,
    machine_id: Option<String>,
    boot_id: Option<String>,
    pid_ns: Option<u64>,
    time_ns: Option<u64>,
}

/// The known fields of a document, by value (unknown fields are compared as bytes).
#[derive(Debug, PartialEq)]
struct Known {
    capacity: i64,
    version: Option<u32>,
    next_token: Option<u64>,
    holders: Vec<KnownEntry>,
    waiters: Vec<KnownEntry>,
}

fn known_fields(doc: &Document) -> Known {
    let entries = |list: &[crate::core::doc::Entry]| {
        list.iter()
            .map(|e| KnownEntry {
                id: e.id.clone(),
                acquired_at: e.acquired_at,
                token: e.token,
                ticket: e.ticket,
                slot: e.slot,
                owner: e.owner.as_ref().map(|o| KnownOwner {
                    host: o.host.clone(),
                    pid: o.pid,
                    start_time: o.start_time,
                    machine_id: o.machine_id.clone(),
                    boot_id: o.boot_id.clone(),
                    pid_ns: o.pid_ns,
                    time_ns: o.time_ns,
                }),
                witness: e.witness.as_ref().map(|w| (w.dev, w.ino)),
                expires_at: e.expires_at,
                lease_ms: e.lease_ms,
                detached: e.detached,
                priority: e.priority,
                metadata: e.metadata.clone(),
            })
            .collect()
    };
    Known {
        capacity: doc.capacity,
        version: doc.version,
        next_token: doc.next_token,
        holders: entries(&doc.holders),
        waiters: entries(&doc.waiters),
    }
}

/// Parses `bytes` (which must not panic); for a document that parses, checks that it is
/// valid, that writing and reading it keeps its known fields, and that a second round trip
/// writes the same bytes as the first. Returns whether it parsed.
fn check_parse(bytes: &[u8]) -> Result<bool, TestCaseError> {
    let Ok(doc) = Document::parse(bytes) else {
        return Ok(false);
    };
    prop_assert!((1..=i64::from(MAX_CAPACITY)).contains(&doc.capacity));
    prop_assert_eq!(i64::from(doc.capacity()), doc.capacity);
    for e in doc.holders.iter().chain(&doc.waiters) {
        prop_assert!(
            e.token.is_none_or(|t| t <= MAX_TOKEN),
            "token {:?}",
            e.token
        );
        prop_assert!(
            e.ticket.is_none_or(|t| t <= MAX_TOKEN),
            "ticket {:?}",
            e.ticket
        );
        prop_assert!(e.slot.is_none_or(|s| s < MAX_CAPACITY), "slot {:?}", e.slot);
    }
    prop_assert!(doc.next_token.is_none_or(|t| t <= MAX_TOKEN + 1));

    let first = doc.to_bytes();
    let again = Document::parse(&first)
        .map_err(|e| TestCaseError::fail(format!("our own output does not parse: {e}")))?;
    prop_assert_eq!(known_fields(&again), known_fields(&doc));
    let second = again.to_bytes();
    prop_assert_eq!(
        String::from_utf8_lossy(&second),
        String::from_utf8_lossy(&first),
        "a second round trip changed the bytes"
    );

    // What we write is what the Go package reads: an integer capacity, a list of holders
    // with a string ID and an RFC 3339 time (other fields skipped unread, as Go does).
    let go: GoView = serde_json::from_slice(&first)
        .map_err(|e| TestCaseError::fail(format!("the Go package could not read it: {e}")))?;
    prop_assert_eq!(go.capacity, doc.capacity);
    for h in &go.holders {
        prop_assert!(
            DateTime::parse_from_rfc3339(&h.acquired_at).is_ok(),
            "{}",
            h.acquired_at
        );
    }
    Ok(true)
}

/// The fields the Go package reads.
#[derive(serde::Deserialize)]
struct GoView {
    capacity: i64,
    holders: Vec<GoHolder>,
}

#[derive(serde::Deserialize)]
struct GoHolder {
    #[allow(dead_code)] // read to check its type
    id: String,
    acquired_at: String,
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        // Any file content is an error or a valid document that round-trips.
        check_parse(&bytes)?;
    }

    #[test]
    fn arbitrary_json_never_panics_the_parser(text in value()) {
        // Valid JSON of the wrong shape is an error, never a panic or a made-up document.
        check_parse(text.as_bytes())?;
    }

    #[test]
    fn near_shape_documents_round_trip_when_they_parse(text in document(false)) {
        // Random types in known fields and random extra fields: refused, or kept exactly.
        check_parse(text.as_bytes())?;
    }

    #[test]
    fn damaged_documents_never_panic_the_parser(bytes in damaged()) {
        // A cut, a flipped or an inserted byte: an error, or a valid document that round-trips.
        check_parse(&bytes)?;
    }

    #[test]
    fn unknown_fields_never_make_a_valid_document_corrupt(text in document(true)) {
        // Whatever JSON an unknown field holds (1e400, u128::MAX, -0, deep nesting), a
        // document whose known fields are valid parses, and round-trips.
        let parsed = check_parse(text.as_bytes())?;
        prop_assert!(parsed, "refused: {:?}\n{}", Document::parse(text.as_bytes()).err(), text);
    }

    #[test]
    fn token_floor_is_in_range_for_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        // A counter from any corrupt file is a usable token: at least 1, at most 2^53.
        let floor = token_floor(&bytes, clock());
        prop_assert!((1..=MAX_TOKEN + 1).contains(&floor), "{}", floor);
    }

    #[test]
    fn token_floor_is_above_every_token_in_a_damaged_file(
        tokens in prop::collection::vec(token_number(), 1..5),
        next in token_number(),
        cut in any::<prop::sample::Index>(),
        w in ws(),
    ) {
        // Recovery never hands out a token or ticket the corrupt file shows, nor a number
        // above 2^53, nor one below the clock.
        let mut text = r#"{"capacity":9,"holders":["#.to_string();
        // (number, the floor it requires, the end of its digits in `text`)
        let mut bounds = Vec::new();
        for (i, &t) in tokens.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            // Every other entry a granted waiter's, whose witness is named by its ticket.
            let key = if i % 2 == 1 { "ticket" } else { "token" };
            text.push_str(&format!(r#"{{"id":"h{i}","acquired_at":"2025-01-01T00:00:00Z","{key}"{w}:{w}{t}"#));
            bounds.push((t, t.saturating_add(1), text.len()));
            text.push_str(&format!(r#","slot":{i}}}"#));
        }
        text.push_str(&format!(r#"],"next_token":{w}{next}"#));
        bounds.push((next, next, text.len()));
        text.push('}');
        let end = cut.index(text.len() + 1);
        let now = clock();
        let clock = u64::try_from(now.timestamp_micros()).unwrap();
        let floor = token_floor(&text.as_bytes()[..end], now);
        prop_assert!(floor <= MAX_TOKEN + 1);
        prop_assert!(floor >= clock.min(MAX_TOKEN + 1), "{} below the clock {}", floor, clock);
        // Every number in range whose digits the cut left whole bounds it (a number cut
        // within its digits is not known; the clock covers it).
        for (value, bound, digits_end) in bounds {
            if digits_end < end && value <= MAX_TOKEN + 1 {
                prop_assert!(
                    floor >= bound.min(MAX_TOKEN + 1),
                    "floor {} for {} in {:?}", floor, value, &text[..end]
                );
            }
        }
    }
}

/// The time recovery runs at: a fixed instant, since the core takes the clock as an input.
fn clock() -> DateTime<Utc> {
    "2026-06-01T12:00:00.123456Z".parse().unwrap()
}

/// Token numbers: small ones, ones above the clock, at the 2^53 edge, and out of range.
fn token_number() -> impl Strategy<Value = u64> {
    prop_oneof![
        1u64..1000,
        4_000_000_000_000_000u64..MAX_TOKEN,
        MAX_TOKEN - 2..=MAX_TOKEN + 2,
        Just(u64::MAX),
    ]
}
