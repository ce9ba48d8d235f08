//! The state file's JSON, read and written by hand so that fields this crate does not know
//! survive byte for byte.
//!
//! Known fields are parsed into [`Document`], [`Entry`], [`Owner`] and [`Witness`]. Every other
//! field of those objects (at the top level, in each holder and waiter, in `owner` and
//! `witness`) is kept as the exact text of its key and value ([`RawValue`]): in the order it
//! appeared, every occurrence of a repeated key included, and written back after the known
//! fields of its object. A number no `f64` or `u64` can hold (`340282366920938463463374607431768211455`,
//! `1e400`), `1.10`, `-0`, a string with a lone surrogate escape (`"\ud800"`): all come back
//! as they were. serde's `flatten` cannot do this: it buffers values as its own numbers (and
//! serde_json's `arbitrary_precision` feature, which would, changes number handling for every
//! crate in a build).
//!
//! A key this crate knows that appears twice in one object is an error (the file is
//! [`Corrupt`](crate::Error::Corrupt)): which of two `capacity` or `holders` values is meant
//! cannot be told, and guessing could lose holders.
//!
//! Unknown values are skipped by serde_json without recursion, so their nesting depth is not
//! limited; the known structure is at most four levels deep (document, list, entry, owner).
//! The one limit left is the size of the document, which each store bounds when it reads one
//! (the file store: 64 MiB).
//!
//! Keys are borrowed from the input while parsing, so documents are read with
//! `serde_json::from_slice` (as [`Document::parse`] does), not from a reader.
//!
//! Documents are written compact (no whitespace between tokens: every byte is read and written
//! again by every operation, and the Go package and every JSON reader read it all the same),
//! known fields in a fixed order, strings escaped as serde_json escapes them, times as RFC 3339
//! in UTC as chrono writes them, unknown fields after the known ones of their object, then a
//! newline. The writer formats numbers and times itself, without allocating.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::core::doc::{Document, Entry, Owner, Witness};

/// The fields of one object that this crate does not know: exact key and value text, in
/// file order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Unknown(Vec<(Box<RawValue>, Box<RawValue>)>);

impl Unknown {
    fn push(&mut self, key: &RawValue, value: Box<RawValue>) {
        self.0.push((key.to_owned(), value));
    }

    /// The raw text of the value of every field named `name`, in file order (test helper).
    #[cfg(test)]
    pub(crate) fn values_of(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| key_name(k).as_deref() == Some(name))
            .map(|(_, v)| v.get())
            .collect()
    }
}

impl Eq for Unknown {}

impl PartialEq for Unknown {
    fn eq(&self, other: &Unknown) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|((k, v), (k2, v2))| k.get() == k2.get() && v.get() == v2.get())
    }
}

/// The name a raw key stands for: its text without quotes, or decoded when it has escapes.
/// `None` for a key no Rust string can hold (a lone surrogate escape): certainly not a key
/// this crate knows.
fn key_name(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// A known string field (an `id`, a metadata key or value, an owner's `host`, `machine_id`
/// or `boot_id`), read as the Go package reads strings: a lone surrogate escape (`"\ud800"`,
/// valid JSON that no Rust string holds) becomes U+FFFD, as Go's `encoding/json` decodes it,
/// instead of making the whole file corrupt. So any ID on file can be listed and removed
/// (by the ID as read, with U+FFFD, as the Go package would); a rewrite writes U+FFFD, as a
/// rewrite by the Go package does. Every other string is read exactly, and a value that is
/// not a string is an error as before.
struct GoString(String);

impl<'de> Deserialize<'de> for GoString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GoString, D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?;
        let text = raw.get();
        match serde_json::from_str::<String>(text) {
            Ok(s) => Ok(GoString(s)),
            Err(_) if text.starts_with('"') => Ok(GoString(decode_lossy(text))),
            // Not a string: serde's own message, at the place in the document.
            Err(e) => {
                let message = e.to_string();
                let at = format!(" at line {} column {}", e.line(), e.column());
                Err(de::Error::custom(
                    message.strip_suffix(&at).unwrap_or(&message),
                ))
            }
        }
    }
}

/// A time as RFC 3339 requires it (years 0000 to 9999, a `T`, an offset), as the Go package
/// reads and writes it. chrono's own deserializer is more lenient (a year `-1970` or `+12345`),
/// and such a time, written back, would make the file unreadable for Go.
struct Rfc3339(DateTime<Utc>);

impl<'de> Deserialize<'de> for Rfc3339 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rfc3339, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| Rfc3339(t.to_utc()))
            .map_err(|e| de::Error::custom(format_args!("{text:?} is not an RFC 3339 time: {e}")))
    }
}

/// A string's metadata map, with keys and values read as [`GoString`]s.
struct GoStringMap(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for GoStringMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GoStringMap, D::Error> {
        d.deserialize_map(GoStringMapVisitor)
    }
}

struct GoStringMapVisitor;

impl<'de> Visitor<'de> for GoStringMapVisitor {
    type Value = GoStringMap;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<GoStringMap, A::Error> {
        let mut out = BTreeMap::new();
        while let Some((GoString(k), GoString(v))) = map.next_entry()? {
            out.insert(k, v);
        }
        Ok(GoStringMap(out))
    }
}

/// Decodes the JSON string literal `text` (quotes included, valid JSON: serde_json checked
/// it while capturing it) as Go does: escapes as usual, a surrogate escape that is not half
/// of a pair as U+FFFD.
fn decode_lossy(text: &str) -> String {
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let mut out = String::with_capacity(inner.len());
    let mut rest = inner;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let Some(kind) = rest.chars().next() else {
            break;
        };
        rest = &rest[kind.len_utf8()..];
        match kind {
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let unit = hex4(rest);
                rest = rest.get(4..).unwrap_or("");
                let decoded = match unit {
                    // A leading surrogate pairs only with a trailing one right after it; if
                    // none follows, the next escape is read on its own, as Go does.
                    Some(high @ 0xD800..=0xDBFF) => {
                        let next = rest.strip_prefix("\\u");
                        match next.and_then(hex4) {
                            Some(low @ 0xDC00..=0xDFFF) => {
                                rest = next.and_then(|n| n.get(4..)).unwrap_or("");
                                char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
                            }
                            _ => None,
                        }
                    }
                    // A trailing surrogate alone is not a character either: None.
                    Some(unit) => char::from_u32(unit),
                    None => None,
                };
                out.push(decoded.unwrap_or(char::REPLACEMENT_CHARACTER));
            }
            // `"`, `\` and `/` stand for themselves.
            other => out.push(other),
        }
    }
    out.push_str(rest);
    out
}

/// The value of the four hex digits that `text` starts with.
fn hex4(text: &str) -> Option<u32> {
    let digits = text.get(..4)?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

/// Reads the value of known field `name` into `slot`; a second occurrence is an error.
fn once<'de, A, T>(map: &mut A, slot: &mut Option<T>, name: &'static str) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

/// Runs `known` for each key of an object; keys it does not take (it returns `false`) are kept
/// in `unknown` with their values.
fn fields<'de, A>(
    mut map: A,
    unknown: &mut Unknown,
    mut known: impl FnMut(&str, &mut A) -> Result<bool, A::Error>,
) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
{
    while let Some(key) = map.next_key::<&'de RawValue>()? {
        let taken = match key_name(key) {
            Some(name) => known(&name, &mut map)?,
            None => false,
        };
        if !taken {
            unknown.push(key, map.next_value()?);
        }
    }
    Ok(())
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Document, D::Error> {
        d.deserialize_map(DocumentVisitor)
    }
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = Document;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a semaphore state object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Document, A::Error> {
        let mut capacity = None;
        let mut holders: Option<Option<Vec<Entry>>> = None;
        let mut version: Option<Option<u32>> = None;
        let mut next_token: Option<Option<u64>> = None;
        let mut waiters: Option<Option<Vec<Entry>>> = None;
        let mut extra = Unknown::default();
        fields(map, &mut extra, |name, map| {
            match name {
                "capacity" => once(map, &mut capacity, "capacity")?,
                "holders" => once(map, &mut holders, "holders")?,
                "version" => once(map, &mut version, "version")?,
                "next_token" => once(map, &mut next_token, "next_token")?,
                "waiters" => once(map, &mut waiters, "waiters")?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(Document {
            capacity: capacity.ok_or_else(|| de::Error::missing_field("capacity"))?,
            // Go writes `null` for an empty list it never filled.
            holders: holders
                .ok_or_else(|| de::Error::missing_field("holders"))?
                .unwrap_or_default(),
            version: version.flatten(),
            next_token: next_token.flatten(),
            waiters: waiters.flatten().unwrap_or_default(),
            extra,
        })
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Entry, D::Error> {
        d.deserialize_map(EntryVisitor)
    }
}

struct EntryVisitor;

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = Entry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a holder object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Entry, A::Error> {
        let mut id: Option<GoString> = None;
        let mut acquired_at: Option<Rfc3339> = None;
        let mut token: Option<Option<u64>> = None;
        let mut ticket: Option<Option<u64>> = None;
        let mut slot: Option<Option<u32>> = None;
        let mut owner: Option<Option<Owner>> = None;
        let mut witness: Option<Option<Witness>> = None;
        let mut expires_at: Option<Option<Rfc3339>> = None;
        let mut lease_ms: Option<Option<u64>> = None;
        let mut detached = None;
        // Read wider than it is kept, so that a priority outside 32 bits is named as such.
        let mut priority: Option<Option<i64>> = None;
        let mut metadata: Option<GoStringMap> = None;
        let mut extra = Unknown::default();
        fields(map, &mut extra, |name, map| {
            match name {
                "id" => once(map, &mut id, "id")?,
                "acquired_at" => once(map, &mut acquired_at, "acquired_at")?,
                "token" => once(map, &mut token, "token")?,
                "ticket" => once(map, &mut ticket, "ticket")?,
                "slot" => once(map, &mut slot, "slot")?,
                "owner" => once(map, &mut owner, "owner")?,
                "witness" => once(map, &mut witness, "witness")?,
                "expires_at" => once(map, &mut expires_at, "expires_at")?,
                "lease_ms" => once(map, &mut lease_ms, "lease_ms")?,
                "detached" => once(map, &mut detached, "detached")?,
                "priority" => once(map, &mut priority, "priority")?,
                "metadata" => once(map, &mut metadata, "metadata")?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        let priority = priority
            .flatten()
            .map(|p| {
                i32::try_from(p).map_err(|_| {
                    de::Error::custom(format_args!(
                        "priority {p} is outside the signed 32-bit range {}..={}",
                        i32::MIN,
                        i32::MAX
                    ))
                })
            })
            .transpose()?;
        Ok(Entry {
            id: id.ok_or_else(|| de::Error::missing_field("id"))?.0,
            acquired_at: acquired_at
                .ok_or_else(|| de::Error::missing_field("acquired_at"))?
                .0,
            token: token.flatten(),
            ticket: ticket.flatten(),
            slot: slot.flatten(),
            owner: owner.flatten(),
            witness: witness.flatten(),
            expires_at: expires_at.flatten().map(|t| t.0),
            lease_ms: lease_ms.flatten(),
            detached: detached.unwrap_or(false),
            priority,
            metadata: metadata.map(|m| m.0).unwrap_or_default(),
            extra,
        })
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Owner, D::Error> {
        d.deserialize_map(OwnerVisitor)
    }
}

struct OwnerVisitor;

impl<'de> Visitor<'de> for OwnerVisitor {
    type Value = Owner;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an owner object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Owner, A::Error> {
        let mut host: Option<GoString> = None;
        let mut pid = None;
        let mut start_time: Option<Option<u64>> = None;
        let mut machine_id: Option<Option<GoString>> = None;
        let mut boot_id: Option<Option<GoString>> = None;
        let mut pid_ns: Option<Option<u64>> = None;
        let mut time_ns: Option<Option<u64>> = None;
        let mut extra = Unknown::default();
        fields(map, &mut extra, |name, map| {
            match name {
                "host" => once(map, &mut host, "host")?,
                "pid" => once(map, &mut pid, "pid")?,
                "start_time" => once(map, &mut start_time, "start_time")?,
                "machine_id" => once(map, &mut machine_id, "machine_id")?,
                "boot_id" => once(map, &mut boot_id, "boot_id")?,
                "pid_ns" => once(map, &mut pid_ns, "pid_ns")?,
                "time_ns" => once(map, &mut time_ns, "time_ns")?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(Owner {
            host: host.map(|h| h.0).unwrap_or_default(),
            pid: pid.ok_or_else(|| de::Error::missing_field("pid"))?,
            start_time: start_time.flatten(),
            machine_id: machine_id.flatten().map(|m| m.0),
            boot_id: boot_id.flatten().map(|b| b.0),
            pid_ns: pid_ns.flatten(),
            time_ns: time_ns.flatten(),
            extra,
        })
    }
}

impl<'de> Deserialize<'de> for Witness {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Witness, D::Error> {
        d.deserialize_map(WitnessVisitor)
    }
}

struct WitnessVisitor;

impl<'de> Visitor<'de> for WitnessVisitor {
    type Value = Witness;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a witness object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Witness, A::Error> {
        let mut dev = None;
        let mut ino = None;
        let mut extra = Unknown::default();
        fields(map, &mut extra, |name, map| {
            match name {
                "dev" => once(map, &mut dev, "dev")?,
                "ino" => once(map, &mut ino, "ino")?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(Witness {
            dev: dev.ok_or_else(|| de::Error::missing_field("dev"))?,
            ino: ino.ok_or_else(|| de::Error::missing_field("ino"))?,
            extra,
        })
    }
}

/// Writes a document as the state file's bytes: compact JSON, then a newline.
pub(crate) fn write(doc: &Document) -> Vec<u8> {
    let entries = doc.holders.len() + doc.waiters.len();
    let mut out = Vec::with_capacity(128 + 384 * entries);
    let mut o = Object::begin(&mut out);
    o.key("capacity").int(doc.capacity);
    o.key("holders");
    self::entries(o.out(), &doc.holders);
    if let Some(v) = doc.version {
        o.key("version").uint(u64::from(v));
    }
    if let Some(t) = doc.next_token {
        o.key("next_token").uint(t);
    }
    if !doc.waiters.is_empty() {
        o.key("waiters");
        self::entries(o.out(), &doc.waiters);
    }
    o.unknown(&doc.extra);
    o.end();
    out.push(b'\n');
    out
}

fn entries(out: &mut Vec<u8>, list: &[Entry]) {
    out.push(b'[');
    for (i, e) in list.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        entry(out, e);
    }
    out.push(b']');
}

fn entry(out: &mut Vec<u8>, e: &Entry) {
    let mut o = Object::begin(out);
    o.key("id").string(&e.id);
    o.key("acquired_at").time(e.acquired_at);
    if let Some(t) = e.token {
        o.key("token").uint(t);
    }
    if let Some(t) = e.ticket {
        o.key("ticket").uint(t);
    }
    if let Some(s) = e.slot {
        o.key("slot").uint(u64::from(s));
    }
    if let Some(owner) = &e.owner {
        o.key("owner");
        let mut w = Object::begin(o.out());
        w.key("host").string(&owner.host);
        w.key("pid").uint(u64::from(owner.pid));
        if let Some(v) = owner.start_time {
            w.key("start_time").uint(v);
        }
        if let Some(v) = &owner.machine_id {
            w.key("machine_id").string(v);
        }
        if let Some(v) = &owner.boot_id {
            w.key("boot_id").string(v);
        }
        if let Some(v) = owner.pid_ns {
            w.key("pid_ns").uint(v);
        }
        if let Some(v) = owner.time_ns {
            w.key("time_ns").uint(v);
        }
        w.unknown(&owner.extra);
        w.end();
    }
    if let Some(witness) = &e.witness {
        o.key("witness");
        let mut w = Object::begin(o.out());
        w.key("dev").uint(witness.dev);
        w.key("ino").uint(witness.ino);
        w.unknown(&witness.extra);
        w.end();
    }
    if let Some(at) = e.expires_at {
        o.key("expires_at").time(at);
    }
    if let Some(ms) = e.lease_ms {
        o.key("lease_ms").uint(ms);
    }
    if e.detached {
        o.key("detached").raw("true");
    }
    if let Some(p) = e.priority {
        o.key("priority").int(i64::from(p));
    }
    if !e.metadata.is_empty() {
        o.key("metadata");
        metadata(o.out(), &e.metadata);
    }
    o.unknown(&e.extra);
    o.end();
}

fn metadata(out: &mut Vec<u8>, map: &BTreeMap<String, String>) {
    let mut o = Object::begin(out);
    for (k, v) in map {
        o.field_start();
        string(o.out(), k);
        o.out().push(b':');
        o.string(v);
    }
    o.end();
}

/// An object being written.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Object<'a> {
    fn begin(out: &'a mut Vec<u8>) -> Object<'a> {
        out.push(b'{');
        Object { out, empty: true }
    }

    fn out(&mut self) -> &mut Vec<u8> {
        self.out
    }

    /// The separator before a field.
    fn field_start(&mut self) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
    }

    /// Starts a field named `name` (a plain ASCII name); the value follows.
    fn key(&mut self, name: &str) -> &mut Self {
        self.field_start();
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        self
    }

    fn uint(&mut self, n: u64) {
        uint(self.out, n);
    }

    fn int(&mut self, n: i64) {
        if n < 0 {
            self.out.push(b'-');
        }
        uint(self.out, n.unsigned_abs());
    }

    fn string(&mut self, s: &str) {
        string(self.out, s);
    }

    fn time(&mut self, t: DateTime<Utc>) {
        time(self.out, t);
    }

    fn raw(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
    }

    /// Writes the kept unknown fields, exactly as read.
    fn unknown(&mut self, unknown: &Unknown) {
        for (k, v) in &unknown.0 {
            self.field_start();
            self.raw(k.get());
            self.out.push(b':');
            self.raw(v.get());
        }
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

/// The decimal digits of 0 to 99, two bytes each.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// An unsigned integer in decimal, without allocating (two digits per division).
fn uint(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        digits[at] = b'0' + n as u8;
    }
    out.extend_from_slice(&digits[at..]);
}

/// `n` (below 10^width) in decimal with leading zeros to `width` digits.
fn padded(out: &mut Vec<u8>, n: u32, width: usize) {
    let mut digits = [b'0'; 9];
    let mut n = n;
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// A time as a JSON string, as chrono's serde writes it: RFC 3339 in UTC with `Z`, and as
/// many fractional digits as needed (none, 3, 6 or 9). Years outside 0 to 9999 and leap
/// seconds, which no clock here produces but a file may hold, are left to chrono.
fn time(out: &mut Vec<u8>, t: DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    let t = t.naive_utc();
    let (year, nanos) = (t.year(), t.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        string(
            out,
            &t.and_utc().to_rfc3339_opts(SecondsFormat::AutoSi, true),
        );
        return;
    }
    out.push(b'"');
    padded(out, year.unsigned_abs(), 4);
    out.push(b'-');
    padded(out, t.month(), 2);
    out.push(b'-');
    padded(out, t.day(), 2);
    out.push(b'T');
    padded(out, t.hour(), 2);
    out.push(b':');
    padded(out, t.minute(), 2);
    out.push(b':');
    padded(out, t.second(), 2);
    if nanos != 0 {
        out.push(b'.');
        if nanos % 1_000_000 == 0 {
            padded(out, nanos / 1_000_000, 3);
        } else if nanos % 1_000 == 0 {
            padded(out, nanos / 1_000, 6);
        } else {
            padded(out, nanos, 9);
        }
    }
    out.extend_from_slice(b"Z\"");
}

/// A JSON string, escaped as serde_json escapes it: `"`, `\` and control characters only.
fn string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    // Most strings need no escape: one pass without an early exit, which the compiler
    // vectorizes, tells.
    let plain = !bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        let mut control = *b"\\u0000";
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => {
                control[4] = HEX[usize::from(b >> 4)];
                control[5] = HEX[usize::from(b & 0xf)];
                &control
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Document, String> {
        Document::parse(text.as_bytes())
    }

    fn written(text: &str) -> String {
        String::from_utf8(parse(text).unwrap().to_bytes()).unwrap()
    }

    #[test]
    fn known_fields_are_written_exactly_as_before() {
        // Known fields are written in this order, compact, with strings escaped and times
        // formatted as serde_json and chrono write them (the text of earlier versions, which
        // serde_json's pretty printer produced, without its whitespace).
        let text = r#"{"capacity": 3, "holders": [
          {"id": "a\"b\u0001\t/é", "acquired_at": "2024-01-01T10:00:00.123456789+02:00", "token": 7, "ticket": 6, "slot": 2,
           "owner": {"host": "h", "pid": 42, "start_time": 99, "machine_id": "m", "boot_id": "b", "pid_ns": 4026531836, "time_ns": 4026531834},
           "witness": {"dev": 64768, "ino": 1234}, "expires_at": "2024-01-01T09:00:30Z", "lease_ms": 30000, "detached": true,
           "metadata": {"job": "x", "a": ""}},
          {"id": "go", "acquired_at": "2024-01-01T10:00:00Z"}],
          "version": 1, "next_token": 9,
          "waiters": [{"id": "w", "acquired_at": "2024-01-01T10:00:01Z", "ticket": 8, "priority": -3, "expires_at": "2024-01-01T10:00:07Z"}]}"#;
        let expected = r#"{"capacity":3,"holders":[{"id":"a\"b\u0001\t/é","acquired_at":"2024-01-01T08:00:00.123456789Z","token":7,"ticket":6,"slot":2,"owner":{"host":"h","pid":42,"start_time":99,"machine_id":"m","boot_id":"b","pid_ns":4026531836,"time_ns":4026531834},"witness":{"dev":64768,"ino":1234},"expires_at":"2024-01-01T09:00:30Z","lease_ms":30000,"detached":true,"metadata":{"a":"","job":"x"}},{"id":"go","acquired_at":"2024-01-01T10:00:00Z"}],"version":1,"next_token":9,"waiters":[{"id":"w","acquired_at":"2024-01-01T10:00:01Z","ticket":8,"expires_at":"2024-01-01T10:00:07Z","priority":-3}]}
"#;
        assert_eq!(written(text), expected);
        assert_eq!(
            String::from_utf8(Document::new(1).to_bytes()).unwrap(),
            "{\"capacity\":1,\"holders\":[],\"version\":1,\"next_token\":1}\n"
        );
    }

    #[test]
    fn strings_and_times_are_escaped_and_formatted_as_serde_json_and_chrono_do() {
        // Every control character, quotes, backslashes and non-ASCII text, as serde_json would.
        let all: String = (0u8..0x80)
            .map(char::from)
            .chain("é€😀\u{2028}".chars())
            .collect();
        let mut out = Vec::new();
        string(&mut out, &all);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&all).unwrap()
        );
        let mut times: Vec<DateTime<Utc>> = [
            "2024-01-01T10:00:00Z",
            "2024-01-01T10:00:00.5Z",
            "2024-01-01T10:00:00.000000001Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "9999-12-31T23:59:59-01:00",
            "0001-01-01T00:00:00+01:00",
            "2016-12-31T23:59:60.25Z",
        ]
        .iter()
        .map(|t| DateTime::parse_from_rfc3339(t).unwrap().to_utc())
        .collect();
        // Every fraction length, over four centuries of dates.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let secs = (rng % (400 * 366 * 86_400)) as i64 + 946_684_800 - 200 * 366 * 86_400;
            let nanos = match rng >> 60 {
                0..=3 => 0,
                4..=7 => (rng >> 20) as u32 % 1000 * 1_000_000,
                8..=11 => (rng >> 20) as u32 % 1_000_000 * 1000,
                _ => (rng >> 20) as u32 % 1_000_000_000,
            };
            times.push(DateTime::from_timestamp(secs, nanos).unwrap());
        }
        for t in times {
            let mut o = Vec::new();
            time(&mut o, t);
            assert_eq!(
                String::from_utf8(o).unwrap(),
                serde_json::to_string(&t).unwrap()
            );
        }
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            let mut o = Vec::new();
            uint(&mut o, n);
            assert_eq!(o, n.to_string().as_bytes());
        }
        let mut o = Vec::new();
        Object::begin(&mut o).int(i64::MIN);
        assert_eq!(o[1..], *i64::MIN.to_string().as_bytes());
    }

    #[test]
    fn lone_surrogates_in_known_strings_read_as_go_reads_them() {
        // Valid JSON that no Rust string holds: an ID with a lone surrogate escape is listed
        // (and removable) with U+FFFD, as the Go package reads it, instead of the whole file
        // being corrupt; metadata and owner strings alike. A rewrite writes U+FFFD, as Go's.
        let text = r#"{"capacity": 1, "holders": [{"id": "job-\ud800", "acquired_at":
            "2024-01-01T10:00:00Z", "owner": {"pid": 7, "host": "h\udc00", "boot_id": "\ud800"},
            "metadata": {"k\ud800": "v\udfff", "ok": "\ud83d\ude00"}}]}"#;
        let doc = parse(text).unwrap();
        let e = &doc.holders[0];
        assert_eq!(e.id, "job-\u{fffd}");
        let owner = e.owner.as_ref().unwrap();
        assert_eq!(owner.host, "h\u{fffd}");
        assert_eq!(owner.boot_id.as_deref(), Some("\u{fffd}"));
        assert_eq!(e.metadata["k\u{fffd}"], "v\u{fffd}");
        assert_eq!(e.metadata["ok"], "\u{1f600}");
        let again = parse(&written(text)).unwrap();
        assert_eq!(again, doc);
        assert!(written(text).contains("\"id\":\"job-\u{fffd}\""));
        // Not a string is still a type error, at its place in the document.
        for (bad, needle) in [
            (
                r#"{"capacity": 1, "holders": [{"id": 3}]}"#,
                "invalid type: integer `3`, expected a string at line 1",
            ),
            (
                r#"{"capacity": 1, "holders": [{"id": null}]}"#,
                "invalid type: null",
            ),
            (
                r#"{"capacity": 1, "holders": [{"id": "a", "acquired_at": "2024-01-01T10:00:00Z", "metadata": {"k": 1}}]}"#,
                "invalid type: integer `1`",
            ),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn lossy_decoding_pairs_surrogates_and_replaces_only_lone_ones() {
        // Go's decoding: a pair is one character; a half without its other half is U+FFFD,
        // and the escape after a lone leading half is read on its own.
        for (literal, expected) in [
            (r#""\ud800""#, "\u{fffd}"),
            (r#""\udc00x""#, "\u{fffd}x"),
            (r#""\ud800\u0041""#, "\u{fffd}A"),
            (r#""\ud800\ud800\udc00""#, "\u{fffd}\u{10000}"),
            (r#""a\ud83d\ude00b""#, "a\u{1f600}b"),
            (
                r#""\"\\\/\b\f\n\r\t\ud800é""#,
                "\"\\/\u{8}\u{c}\n\r\t\u{fffd}é",
            ),
            (r#""\ud800""#, "\u{fffd}"),
        ] {
            assert_eq!(decode_lossy(literal), expected, "{literal}");
        }
    }

    #[test]
    fn unknown_fields_keep_their_exact_text_and_order_at_every_level() {
        // Numbers no f64 or u64 holds, `1.10`, `-0`, odd spacing and lone surrogates survive.
        let text = r#"{"x_u128": 340282366920938463463374607431768211455, "capacity": 2,
            "x_dec": 1.10, "holders": [{"id": "a", "x_neg0": -0, "acquired_at": "2024-01-01T10:00:00Z",
            "owner": {"pid": 7, "x_big": 1e400, "host": "h"}, "witness": {"dev": 1, "x_s": "\ud800", "ino": 2},
            "x_obj": {"b" :[1 ,2], "a": null}}], "x_neg0": -0, "\ud800": "lone key", "x_e": -1.5E-7}"#;
        let doc = parse(text).unwrap();
        assert_eq!(
            doc.extra.values_of("x_u128"),
            ["340282366920938463463374607431768211455"]
        );
        assert_eq!(doc.extra.values_of("x_dec"), ["1.10"]);
        assert_eq!(
            doc.holders[0].extra.values_of("x_obj"),
            [r#"{"b" :[1 ,2], "a": null}"#]
        );
        assert_eq!(
            doc.holders[0]
                .owner
                .as_ref()
                .unwrap()
                .extra
                .values_of("x_big"),
            ["1e400"]
        );
        assert_eq!(
            doc.holders[0]
                .witness
                .as_ref()
                .unwrap()
                .extra
                .values_of("x_s"),
            [r#""\ud800""#]
        );
        let out = written(text);
        for field in [
            r#""x_u128":340282366920938463463374607431768211455,"#,
            r#""x_dec":1.10,"#,
            r#""x_neg0":-0,"#,
            r#""\ud800":"lone key","#,
            r#""x_e":-1.5E-7"#,
            r#""x_neg0":-0"#,
            r#""x_big":1e400"#,
            r#""x_s":"\ud800""#,
            r#""x_obj":{"b" :[1 ,2], "a": null}"#,
        ] {
            assert!(out.contains(field), "{field} missing from\n{out}");
        }
        // Top level: known fields first, then the unknown ones in file order.
        let order: Vec<usize> = [
            "\"capacity\"",
            "\"x_u128\"",
            "\"x_dec\"",
            "\"x_neg0\"",
            "\"\\ud800\"",
            "\"x_e\"",
        ]
        .iter()
        .map(|k| out.rfind(k).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{out}");
        assert_eq!(
            parse(&out).unwrap(),
            doc,
            "a second round trip changes nothing"
        );
        assert_eq!(written(&out), out);
    }

    #[test]
    fn a_repeated_unknown_key_is_kept_every_time_a_repeated_known_key_is_corrupt() {
        // Unknown data is never dropped; an ambiguous known field is never guessed.
        let doc = parse(r#"{"capacity": 1, "holders": [], "x": 1, "x": [2]}"#).unwrap();
        assert_eq!(doc.extra.values_of("x"), ["1", "[2]"]);
        let out = written(r#"{"capacity": 1, "holders": [], "x": 1, "x": [2]}"#);
        assert!(out.ends_with(",\"x\":1,\"x\":[2]}\n"), "{out}");
        for (text, field) in [
            (
                r#"{"capacity": 1, "capacity": 2, "holders": []}"#,
                "capacity",
            ),
            (
                r#"{"capacity": 1, "holders": [], "holders": []}"#,
                "holders",
            ),
            (
                r#"{"capacity": 1, "holders": [], "c\u0061pacity": 2}"#,
                "capacity",
            ),
            (
                r#"{"capacity": 1, "holders": [{"id": "a", "id": "b", "acquired_at": "2024-01-01T10:00:00Z"}]}"#,
                "id",
            ),
            (
                r#"{"capacity": 1, "holders": [{"id": "a", "acquired_at": "2024-01-01T10:00:00Z", "owner": {"pid": 1, "pid": 2}}]}"#,
                "pid",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(
                err.contains(&format!("duplicate field `{field}`")),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn a_known_key_written_with_escapes_is_still_known() {
        // `"c\u0061pacity"` is `capacity` to every JSON reader, so it is to us.
        let doc = parse(r#"{"c\u0061pacity": 4, "hold\u0065rs": []}"#).unwrap();
        assert_eq!(doc.capacity(), 4);
        assert_eq!(doc.extra, Unknown::default());
    }

    #[test]
    fn unknown_values_of_any_nesting_depth_are_kept() {
        // serde_json skips an unknown value without recursion: its depth is not limited (the
        // known structure is; it is at most four levels deep).
        for depth in [126, 127, 128, 129, 100_000] {
            let value = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let text = format!(r#"{{"capacity": 1, "holders": [], "deep": {value}}}"#);
            let doc = parse(&text).unwrap_or_else(|e| panic!("depth {depth}: {e}"));
            assert_eq!(doc.extra.values_of("deep"), [value.as_str()]);
            let in_entry = format!(
                r#"{{"capacity": 1, "holders": [{{"id": "a", "acquired_at": "2024-01-01T10:00:00Z", "owner": {{"pid": 1, "deep": {value}}}}}]}}"#
            );
            let doc = parse(&in_entry).unwrap_or_else(|e| panic!("depth {depth} in owner: {e}"));
            let owner = doc.holders[0].owner.as_ref().unwrap();
            assert_eq!(owner.extra.values_of("deep"), [value.as_str()]);
        }
    }

    #[test]
    fn known_fields_with_wrong_types_or_missing_are_still_corrupt() {
        // Hand-written parsing keeps the checks of the derived one.
        for (text, needle) in [
            (
                r#"{"capacity": 1, "holders": [{"id": "a"}]}"#,
                "missing field `acquired_at`",
            ),
            (
                r#"{"capacity": 1, "holders": [{"id": "a", "acquired_at": "2024-01-01T10:00:00Z", "owner": {"host": "h"}}]}"#,
                "missing field `pid`",
            ),
            (
                r#"{"capacity": 1, "holders": [{"id": "a", "acquired_at": "2024-01-01T10:00:00Z", "witness": {"dev": 1}}]}"#,
                "missing field `ino`",
            ),
            (
                r#"{"capacity": 1, "holders": [{"id": "a", "acquired_at": "2024-01-01T10:00:00Z", "token": "7"}]}"#,
                "invalid type",
            ),
            (
                r#"{"capacity": 1, "holders": [{"id": "a", "acquired_at": "2024-01-01T10:00:00Z", "ticket": -7}]}"#,
                "invalid value",
            ),
            (
                r#"{"capacity": 1, "holders": [{"id": "a", "acquired_at": "2024-01-01T10:00:00Z", "metadata": {"k": 1}}]}"#,
                "invalid type",
            ),
            (r#"{"capacity": 1, "holders": {}}"#, "invalid type"),
            (
                r#"{"capacity": 1, "holders": [], "x": 1e}"#,
                "invalid number",
            ),
            (
                r#"{"capacity": 1, "holders": [], "x": 01}"#,
                "invalid number",
            ),
            (
                r#"{"capacity": 1, "holders": [], "x": [1,]}"#,
                "expected value",
            ),
            (
                r#"{"capacity": 1, "holders": [], "x": "a\qb"}"#,
                "invalid escape",
            ),
            (r#"{"capacity": 1, "holders": []} x"#, "trailing characters"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
        // null for an optional known field reads as absent.
        let doc =
            parse(r#"{"capacity": 1, "holders": null, "version": null, "waiters": null}"#).unwrap();
        assert_eq!(
            (doc.holders.len(), doc.version, doc.waiters.len()),
            (0, None, 0)
        );
    }
}
