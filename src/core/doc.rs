//! The state document: its JSON shape (compatible with the Go package) and its validation.
//!
//! The rules that change a document live in [`crate::core::rules`]; this module only knows
//! the format. Fields the Go package writes are `capacity`, `holders`, `id` and `acquired_at`;
//! every other field is ours and optional, and fields neither of us knows are kept
//! (`extra`) byte for byte so that a newer writer's data survives an older one; the JSON is
//! read and written by hand for that, in [`crate::core::json`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::core::json::Unknown;

/// The largest capacity a semaphore may have, in holders. Larger numbers in a state file are
/// treated as corruption, not as a request for that many slots.
pub const MAX_CAPACITY: u32 = 1_000_000;

/// The largest fencing token, 2^53 - 1: every token is an integer that any JSON reader (a
/// JavaScript one too) represents exactly. Larger numbers in a state file are corruption.
pub const MAX_TOKEN: u64 = (1 << 53) - 1;

/// The longest holder ID an acquire accepts, in bytes of UTF-8.
pub const MAX_ID_LEN: usize = 256;

/// The format version this crate writes in `version`.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// The whole state file.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Document {
    /// Read as a signed number so that 0 and negative values reach validation (and become
    /// `Corrupt`) instead of failing as a type error with a worse message.
    pub capacity: i64,
    /// Go writes `null` for an empty list it never filled; read that as empty.
    pub holders: Vec<Entry>,
    pub version: Option<u32>,
    /// The next fencing token to hand out. Only ever grows.
    pub next_token: Option<u64>,
    /// Processes waiting for a slot, in the order they are served.
    pub waiters: Vec<Entry>,
    pub extra: Unknown,
}

/// One holder (in `holders`) or waiter (in `waiters`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub id: String,
    /// When the slot was granted (for a waiter: when it joined the queue). Any RFC 3339
    /// offset is read; UTC is written.
    pub acquired_at: DateTime<Utc>,
    /// The fencing token of the grant: taken from the counter when the slot is granted, so
    /// tokens increase in grant order. A waiter has none.
    pub token: Option<u64>,
    /// A waiter's number, taken from the same counter as tokens when it joined the queue (so
    /// ticket and token numbers never collide): how the waiting acquire recognises its entry,
    /// and the name of its witness file. Kept after the hand-off, which adds a token. `None`
    /// for a hold granted directly.
    pub ticket: Option<u64>,
    pub slot: Option<u32>,
    pub owner: Option<Owner>,
    pub witness: Option<Witness>,
    /// End of the lease; the entry is stale after this instant (plus a grace for clock skew).
    pub expires_at: Option<DateTime<Utc>>,
    /// Length of the lease in milliseconds, used by renewals.
    pub lease_ms: Option<u64>,
    /// A detached hold outlives its process; it ends by release, remove or lease expiry.
    pub detached: bool,
    /// Waiters only: higher is served first.
    pub priority: Option<i32>,
    pub metadata: BTreeMap<String, String>,
    pub extra: Unknown,
}

/// Who took a hold: enough to prove the process dead on the same machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    /// For display; never used to judge liveness.
    pub host: String,
    pub pid: u32,
    /// The process start time in clock ticks after boot (`/proc/PID/stat` field 22), which
    /// tells a reused pid from the original process.
    pub start_time: Option<u64>,
    /// `/etc/machine-id`: tells an earlier boot of this machine from another machine.
    pub machine_id: Option<String>,
    /// `/proc/sys/kernel/random/boot_id` of the machine at acquire time.
    pub boot_id: Option<String>,
    /// Inode of `/proc/self/ns/pid`: pids are only comparable inside one pid namespace.
    pub pid_ns: Option<u64>,
    /// Inode of `/proc/self/ns/time`: `start_time` is only comparable inside one time
    /// namespace (a boot-time offset shifts it).
    pub time_ns: Option<u64>,
    pub extra: Unknown,
}

/// The kernel-held witness file of a hold: flock'd by the holder for as long as it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Witness {
    pub dev: u64,
    pub ino: u64,
    pub extra: Unknown,
}

impl Document {
    /// A fresh, empty document.
    pub fn new(capacity: u32) -> Document {
        Document {
            capacity: i64::from(capacity),
            holders: Vec::new(),
            version: Some(FORMAT_VERSION),
            next_token: Some(1),
            waiters: Vec::new(),
            extra: Unknown::default(),
        }
    }

    /// Parses and validates a state file's bytes. The error is a reason for `Corrupt`.
    pub fn parse(bytes: &[u8]) -> Result<Document, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err("the file is empty".to_string());
        }
        let mut doc: Document = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if doc.capacity < 1 || doc.capacity > i64::from(MAX_CAPACITY) {
            return Err(format!(
                "capacity {} is outside 1..={MAX_CAPACITY}",
                doc.capacity
            ));
        }
        for e in doc.holders.iter().chain(&doc.waiters) {
            if e.slot.is_some_and(|s| s >= MAX_CAPACITY) {
                return Err(format!("holder {:?} has slot {:?}", e.id, e.slot));
            }
            if e.token.is_some_and(|t| t > MAX_TOKEN) {
                return Err(format!(
                    "holder {:?} has token {:?}, above 2^53 - 1",
                    e.id, e.token
                ));
            }
            if e.ticket.is_some_and(|t| t > MAX_TOKEN) {
                return Err(format!(
                    "holder {:?} has ticket {:?}, above 2^53 - 1",
                    e.id, e.ticket
                ));
            }
        }
        // One past the largest token: a counter that has handed out every token.
        if doc.next_token.is_some_and(|t| t > MAX_TOKEN + 1) {
            return Err(format!("next_token {:?} is above 2^53", doc.next_token));
        }
        // The previous format gave a waiter its fencing token when it joined: that number
        // names its witness file and is its ticket; the hand-off gives it a token.
        for e in &mut doc.waiters {
            if e.ticket.is_none() {
                e.ticket = e.token.take();
            }
        }
        Ok(doc)
    }

    /// The capacity, validated by [`Document::parse`] or [`Document::new`].
    pub fn capacity(&self) -> u32 {
        u32::try_from(self.capacity).unwrap_or(1).max(1)
    }

    /// Serializes the document for writing: compact JSON, unknown fields as they were read, a
    /// trailing newline (see [`crate::core::json`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::core::json::write(self)
    }
}

/// Checks a holder ID given to an acquire. IDs found in a file are never checked: the Go
/// package allows any string, and every ID on file can be listed and removed.
pub(crate) fn validate_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("the ID is empty");
    }
    if id.len() > MAX_ID_LEN {
        return Err("the ID is longer than 256 bytes");
    }
    if id.chars().any(char::is_control) {
        return Err("the ID contains a control character");
    }
    Ok(())
}

impl Entry {
    pub(crate) fn new(id: String, at: DateTime<Utc>) -> Entry {
        Entry {
            id,
            acquired_at: at,
            token: None,
            ticket: None,
            slot: None,
            owner: None,
            witness: None,
            expires_at: None,
            lease_ms: None,
            detached: false,
            priority: None,
            metadata: BTreeMap::new(),
            extra: Unknown::default(),
        }
    }

    /// The number the entry's witness file `PATH.witness/<number>` is named by: the one it
    /// was created under and keeps for the hold's life. The ticket for an entry that queued,
    /// else the token (a direct grant, or an entry of the previous format).
    pub(crate) fn witness_name(&self) -> Option<u64> {
        self.ticket.or(self.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const GO_TWO_HOLDERS: &str = include_str!("../../tests/fixtures/go-written-two-holders.json");
    const GO_RELEASED: &str = include_str!("../../tests/fixtures/go-written-released.json");

    #[test]
    fn reads_go_fixture_with_offsets_and_nanoseconds() {
        // Go writes local offsets and nanoseconds; we read the same instant.
        let doc = Document::parse(GO_TWO_HOLDERS.as_bytes()).unwrap();
        assert_eq!(doc.capacity(), 3);
        assert_eq!(doc.holders.len(), 2);
        assert_eq!(doc.holders[0].id, "session-123");
        assert_eq!(doc.holders[1].id, "worker \"2\"");
        assert_eq!(
            doc.holders[0].acquired_at.to_rfc3339(),
            "2026-11-29T08:14:39.996756276+00:00"
        );
        assert_eq!(doc.holders[0].token, None);
        let doc = Document::parse(GO_RELEASED.as_bytes()).unwrap();
        assert_eq!((doc.capacity(), doc.holders.len()), (1, 0));
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        // A newer writer's fields must not be dropped by us.
        let text = r#"{"capacity":2,"holders":[{"id":"a","acquired_at":"2024-01-01T10:00:00Z",
            "color":"red","owner":{"pid":7,"host":"h","zone":3}}],"future":{"x":[1,2]}}"#;
        let doc = Document::parse(text.as_bytes()).unwrap();
        let again = Document::parse(&doc.to_bytes()).unwrap();
        assert_eq!(again, doc);
        let v: Value = serde_json::from_slice(&doc.to_bytes()).unwrap();
        assert_eq!(v["future"]["x"][1], 2);
        assert_eq!(v["holders"][0]["color"], "red");
        assert_eq!(v["holders"][0]["owner"]["zone"], 3);
    }

    #[test]
    fn writes_the_types_go_reads() {
        // Go unmarshals capacity as int, holders as a list, id as string, acquired_at as RFC 3339.
        let mut doc = Document::new(2);
        doc.holders.push(Entry::test("x"));
        let v: Value = serde_json::from_slice(&doc.to_bytes()).unwrap();
        assert!(v["capacity"].is_i64());
        assert!(v["holders"].is_array());
        assert_eq!(v["holders"][0]["id"], "x");
        let at = v["holders"][0]["acquired_at"].as_str().unwrap();
        assert!(at.ends_with('Z'), "{at}");
        assert!(DateTime::parse_from_rfc3339(at).is_ok());
    }

    #[test]
    fn rejects_bad_documents_with_a_reason() {
        // Corrupt files are never read as empty or as a made-up capacity.
        for (text, needle) in [
            ("", "empty"),
            ("  \n", "empty"),
            ("{\"capacity\": 1, \"holders\": [", "EOF"),
            ("[]", "invalid type"),
            ("{\"capacity\": \"3\", \"holders\": []}", "invalid type"),
            ("{\"capacity\": 0, \"holders\": []}", "outside"),
            ("{\"capacity\": -2, \"holders\": []}", "outside"),
            ("{\"capacity\": 99999999999, \"holders\": []}", "outside"),
            ("{\"capacity\": 1.5, \"holders\": []}", "invalid type"),
            ("{\"capacity\": 1}", "missing field `holders`"),
            (
                "{\"capacity\": 1, \"holders\": [{\"id\": 3}]}",
                "invalid type",
            ),
            (
                "{\"capacity\": 1, \"holders\": [{\"id\": \"a\", \"acquired_at\": \"yesterday\"}]}",
                "input",
            ),
            // Valid for chrono's lenient reader, not RFC 3339: written back, Go could not read it.
            (
                "{\"capacity\": 1, \"holders\": [{\"id\": \"a\", \"acquired_at\": \"-1970-01-02T00:00:00Z\"}]}",
                "is not an RFC 3339 time",
            ),
            (
                "{\"capacity\": 1, \"holders\": [{\"id\": \"a\", \"acquired_at\": \"2024-01-01T10:00:00Z\", \"expires_at\": \"+12024-01-01T10:00:00Z\"}]}",
                "is not an RFC 3339 time",
            ),
            (
                "{\"capacity\": 1, \"holders\": [], \"waiters\": [{\"id\": \"w\", \"acquired_at\": \"2024-01-01T10:00:00Z\", \"ticket\": 9007199254740992}]}",
                "ticket Some(9007199254740992), above 2^53 - 1",
            ),
        ] {
            let err = Document::parse(text.as_bytes()).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_waiter_of_the_previous_format_reads_its_token_as_its_ticket() {
        // The previous format gave a waiter its token when it joined: that number names its
        // witness and becomes its ticket; only the hand-off gives it a token. Holders keep
        // theirs, and a ticket on file stays as it is.
        let text = r#"{"capacity": 1, "next_token": 9,
            "holders": [{"id": "h", "acquired_at": "2024-01-01T10:00:00Z", "token": 5}],
            "waiters": [{"id": "old", "acquired_at": "2024-01-01T10:00:01Z", "token": 7},
                        {"id": "new", "acquired_at": "2024-01-01T10:00:02Z", "ticket": 8}]}"#;
        let doc = Document::parse(text.as_bytes()).unwrap();
        assert_eq!(
            (doc.holders[0].token, doc.holders[0].ticket),
            (Some(5), None)
        );
        assert_eq!(doc.holders[0].witness_name(), Some(5));
        let waiters: Vec<_> = doc.waiters.iter().map(|e| (e.token, e.ticket)).collect();
        assert_eq!(waiters, [(None, Some(7)), (None, Some(8))]);
        assert_eq!(doc.waiters[0].witness_name(), Some(7));
        let v: Value = serde_json::from_slice(&doc.to_bytes()).unwrap();
        assert_eq!(v["waiters"][0]["ticket"], 7);
        assert!(v["waiters"][0].get("token").is_none());
    }

    #[test]
    fn null_holders_read_as_empty() {
        // Go's encoder writes a nil slice as null.
        let doc = Document::parse(br#"{"capacity":1,"holders":null}"#).unwrap();
        assert!(doc.holders.is_empty());
    }

    #[test]
    fn id_validation() {
        // Acquire refuses IDs that would break display or files; anything else is accepted.
        assert!(validate_id("worker-1").is_ok());
        assert!(validate_id("../x").is_ok());
        assert!(validate_id("ünïcode ok").is_ok());
        assert_eq!(validate_id(""), Err("the ID is empty"));
        assert!(validate_id(&"a".repeat(256)).is_ok());
        assert_eq!(
            validate_id(&"a".repeat(257)),
            Err("the ID is longer than 256 bytes")
        );
        assert_eq!(
            validate_id("a\nb"),
            Err("the ID contains a control character")
        );
        assert!(validate_id("a\u{7f}").is_err());
    }

    impl Entry {
        pub(crate) fn test(id: &str) -> Entry {
            Entry::new(id.to_string(), "2024-01-01T10:00:00Z".parse().unwrap())
        }
    }

    impl Owner {
        /// An owner record as the file store writes it, of a made-up process.
        pub(crate) fn test() -> Owner {
            Owner {
                host: "test-host".to_string(),
                pid: 4242,
                start_time: Some(123_456),
                machine_id: Some("0123456789abcdef0123456789abcdef".to_string()),
                boot_id: Some("5b1e1a3e-0000-4000-8000-000000000000".to_string()),
                pid_ns: Some(4_026_531_836),
                time_ns: Some(4_026_531_834),
                extra: Default::default(),
            }
        }
    }
}
