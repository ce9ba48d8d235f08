//! The pure rules of the semaphore: who gets a slot, which slot and token, who is stale, who is
//! served next. They change a [`Document`] in memory and take the time and a liveness judge
//! as inputs, so they are tested without files, processes or clocks. Every store applies them
//! in its atomic step (the file store under its lock; a network store by compare-and-swap).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::core::doc::{Document, Entry, Owner, Witness};
use crate::core::tokens::{take_token, tokens_exhausted};
use crate::core::verdict::{Judge, Liveness, expired, verdict};

/// The inputs every rule that may reap needs.
pub(crate) struct Ctx<'a> {
    pub now: DateTime<Utc>,
    pub judge: &'a dyn Judge,
    /// Whether stale entries may be removed by this operation.
    pub reap: bool,
}

/// An entry removed because it was stale, with the evidence.
#[derive(Clone, Debug)]
pub(crate) struct Removed {
    pub entry: Entry,
    pub verdict: Liveness,
    pub was_waiter: bool,
}

/// Why an acquire was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    AlreadyHeld,
    NoCapacity {
        capacity: u32,
        held: usize,
    },
    /// A queued waiter is owed a free slot, but the counter has no token left to grant it.
    TokensExhausted,
}

/// The lowest slot index in `0..capacity` not used by a holder; `None` when every index is
/// taken (possible after the capacity was lowered).
pub(crate) fn lowest_free_slot(doc: &Document) -> Option<u32> {
    let capacity = doc.capacity();
    let mut used: Vec<u32> = doc.holders.iter().filter_map(|e| e.slot).collect();
    used.sort_unstable();
    used.dedup();
    let mut candidate = 0u32;
    for s in used {
        if s == candidate {
            candidate += 1;
        } else if s > candidate {
            break;
        }
    }
    (candidate < capacity).then_some(candidate)
}

/// Finds a permit's entry by fencing token and ID, or, for entries whose token was dropped by a
/// Go write, by (ID, acquired_at). The ID is checked with the token so that an entry of another
/// holder is never taken for one's own, even where a token was handed out twice (a Redis key
/// rolled back by a failover, a server clock set back).
pub(crate) fn find_own(
    entries: &[Entry],
    token: u64,
    id: &str,
    acquired_at: DateTime<Utc>,
) -> Option<usize> {
    entries
        .iter()
        .position(|e| e.token == Some(token) && e.id == id)
        .or_else(|| {
            entries
                .iter()
                .position(|e| e.token.is_none() && e.id == id && e.acquired_at == acquired_at)
        })
}

/// Whether an entry is stale (dead or expired).
fn stale(entry: &Entry, ctx: &Ctx<'_>) -> Option<Liveness> {
    let v = verdict(entry, ctx.now, ctx.judge);
    v.is_stale().then_some(v)
}

/// Removes every stale holder and waiter, then hands freed slots to the queue. Returns what
/// it removed; an empty list means nothing changed unless hand-off granted someone.
pub(crate) fn reap(doc: &mut Document, ctx: &Ctx<'_>) -> Vec<Removed> {
    let mut removed = Vec::new();
    for (list, was_waiter) in [(&mut doc.holders, false), (&mut doc.waiters, true)] {
        let mut kept = Vec::with_capacity(list.len());
        for entry in list.drain(..) {
            match stale(&entry, ctx) {
                Some(verdict) => removed.push(Removed {
                    entry,
                    verdict,
                    was_waiter,
                }),
                None => kept.push(entry),
            }
        }
        *list = kept;
    }
    removed
}

/// Grants free slots to the head of the queue, in queue order, each in the same write that
/// freed it (direct hand-off). Returns how many waiters were granted.
///
/// Each granted waiter gets its fencing token now, from the counter, so tokens increase in
/// the order slots are granted, even when a waiter of higher priority overtook one that
/// queued earlier. The entry keeps its ticket: the waiter recognises its entry by it, and its
/// witness file stays named by it. With the counter exhausted ([`tokens_exhausted`]) nobody
/// is granted.
///
/// A waiter whose expiry has passed (it stopped refreshing it: dead, or stopped for longer
/// than its expiry) is dropped from the queue instead of granted, so that a dead waiter
/// never becomes a holder nobody can judge.
pub(crate) fn hand_off(doc: &mut Document, now: DateTime<Utc>) -> usize {
    let mut granted = 0;
    while !doc.waiters.is_empty() && doc.holders.len() < doc.capacity() as usize {
        let Some(slot) = lowest_free_slot(doc) else {
            break;
        };
        if expired(&doc.waiters[0], now).is_some() {
            doc.waiters.remove(0);
            continue;
        }
        if tokens_exhausted(doc) {
            break;
        }
        // Taken while the entry is still on file, so its ticket bounds the token too.
        let token = take_token(doc);
        let mut entry = doc.waiters.remove(0);
        entry.token = Some(token);
        entry.slot = Some(slot);
        entry.acquired_at = now;
        entry.priority = None;
        entry.expires_at = lease_end(entry.lease_ms, now);
        doc.holders.push(entry);
        granted += 1;
    }
    granted
}

/// The end of a lease of `lease_ms` milliseconds starting `now`, capped at [`latest_instant`]:
/// a lease is user input (and `lease_ms` is read from the file), so the arithmetic must not
/// overflow (chrono panics), and the date written stays one that RFC 3339 readers accept.
pub(crate) fn lease_end(lease_ms: Option<u64>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    lease_ms.map(|ms| {
        let latest = latest_instant();
        i64::try_from(ms)
            .ok()
            .and_then(chrono::TimeDelta::try_milliseconds)
            .and_then(|d| now.checked_add_signed(d))
            .map_or(latest, |end| end.min(latest))
    })
}

/// 9999-12-31T23:59:59Z: the last instant RFC 3339 writes with a four-digit year.
fn latest_instant() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Decides whether `id` may take a slot now, reaping stale entries in its way when
/// `ctx.reap` allows. On success a slot is free and no waiter is owed it. The document may
/// have changed (reaped entries, hand-off) even when the answer is a refusal: `changed` says so.
pub(crate) fn admit(
    doc: &mut Document,
    id: &str,
    ctx: &Ctx<'_>,
    changed: &mut bool,
    removed: &mut Vec<Removed>,
) -> Result<(), Refusal> {
    // The same ID on file: refused unless that entry is provably stale.
    for was_waiter in [false, true] {
        let list = if was_waiter {
            &mut doc.waiters
        } else {
            &mut doc.holders
        };
        if let Some(i) = list.iter().position(|e| e.id == id) {
            match stale(&list[i], ctx).filter(|_| ctx.reap) {
                Some(verdict) => {
                    let entry = list.remove(i);
                    removed.push(Removed {
                        entry,
                        verdict,
                        was_waiter,
                    });
                    *changed = true;
                }
                None => return Err(Refusal::AlreadyHeld),
            }
        }
    }
    // Slots freed behind the queue's back (a Go release, a capacity increase) go to it first.
    if hand_off(doc, ctx.now) > 0 {
        *changed = true;
    }
    if full(doc) && ctx.reap {
        let more = reap(doc, ctx);
        if !more.is_empty() {
            *changed = true;
            removed.extend(more);
        }
        if hand_off(doc, ctx.now) > 0 {
            *changed = true;
        }
    }
    if full(doc) {
        return Err(Refusal::NoCapacity {
            capacity: doc.capacity(),
            held: doc.holders.len(),
        });
    }
    Ok(())
}

/// No slot for a newcomer: every slot held, or a queue that is owed the next one.
fn full(doc: &Document) -> bool {
    doc.holders.len() >= doc.capacity() as usize || !doc.waiters.is_empty()
}

/// Records a grant after [`admit`] said yes: gives the entry `token` (which must come from
/// [`take_token`]), the lowest free slot and `now`. Returns what the hold records.
pub(crate) fn grant(
    doc: &mut Document,
    mut entry: Entry,
    token: u64,
    now: DateTime<Utc>,
) -> Record {
    let slot = lowest_free_slot(doc).unwrap_or(0);
    entry.token = Some(token);
    entry.slot = Some(slot);
    entry.acquired_at = now;
    entry.expires_at = lease_end(entry.lease_ms, now);
    let record = Record::of(&entry, token);
    doc.holders.push(entry);
    record
}

/// Everything a hold records in its entry besides its ID and grant time, as the process that
/// holds it knows it: what a [`Permit`](crate::Permit) writes back when a writer that knows
/// only the basic format (the Go package keeps `id` and `acquired_at`) stripped its entry,
/// and what a waiter that was handed a slot writes back into its entry found by ticket (a
/// waiter never claims an entry without its ticket: see `queue::find`). One definition for
/// both, used by [`restore`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Record {
    pub token: u64,
    /// The ticket of a hold that queued first: its witness file's name.
    pub ticket: Option<u64>,
    /// The slot index; `None` while a waiter does not know it yet.
    pub slot: Option<u32>,
    pub owner: Option<Owner>,
    pub witness: Option<Witness>,
    pub detached: bool,
    /// The lease length in milliseconds, if the hold has a lease.
    pub lease_ms: Option<u64>,
    /// The end of the lease as last written by this process.
    pub expires_at: Option<DateTime<Utc>>,
    pub metadata: BTreeMap<String, String>,
}

impl Record {
    /// What `entry` records, with fencing token `token`.
    pub fn of(entry: &Entry, token: u64) -> Record {
        Record {
            token,
            ticket: entry.ticket,
            slot: entry.slot,
            owner: entry.owner.clone(),
            witness: entry.witness.clone(),
            detached: entry.detached,
            lease_ms: entry.lease_ms,
            expires_at: entry.expires_at,
            metadata: entry.metadata.clone(),
        }
    }
}

/// Writes back into the holder entry at `i` (ours: found by token, or by ticket and ID by a
/// waiter; a permit also by ID and grant time) every field of `record` that the entry lacks, and sets `changed` if it wrote
/// any. Fields the entry has are left as they are.
///
/// The slot: ours if no other holder has it meanwhile; if another one has it, the entry stays
/// without a slot (it still counts against the capacity). A record that does not know its slot
/// (a waiter's) takes the lowest free one. Returns the entry's slot afterwards; `None` when it
/// has none (then no free index was left, or ours was taken).
pub(crate) fn restore(
    doc: &mut Document,
    i: usize,
    record: &Record,
    changed: &mut bool,
) -> Option<u32> {
    let slot = match doc.holders[i].slot {
        Some(slot) => Some(slot),
        None => match record.slot {
            Some(ours) => {
                let taken = doc.holders.iter().any(|e| e.slot == Some(ours));
                (!taken).then_some(ours)
            }
            None => lowest_free_slot(doc),
        },
    };
    let e = &mut doc.holders[i];
    let before = e.clone();
    e.token.get_or_insert(record.token);
    if e.ticket.is_none() {
        e.ticket = record.ticket;
    }
    if e.slot.is_none() {
        e.slot = slot;
    }
    if e.owner.is_none() {
        e.owner.clone_from(&record.owner);
    }
    if e.witness.is_none() {
        e.witness.clone_from(&record.witness);
    }
    e.detached |= record.detached;
    if e.lease_ms.is_none() {
        e.lease_ms = record.lease_ms;
    }
    if e.expires_at.is_none() {
        e.expires_at = record.expires_at;
    }
    if e.metadata.is_empty() {
        e.metadata.clone_from(&record.metadata);
    }
    if *e != before {
        *changed = true;
    }
    e.slot
}

/// Adds a waiter behind everyone of equal or higher priority. The entry must carry a ticket
/// and no token (it gets one when it is granted, by [`hand_off`]).
pub(crate) fn enqueue(doc: &mut Document, entry: Entry) {
    let p = entry.priority.unwrap_or(0);
    let at = doc
        .waiters
        .iter()
        .position(|w| w.priority.unwrap_or(0) < p)
        .unwrap_or(doc.waiters.len());
    doc.waiters.insert(at, entry);
}

/// What [`available`] and the query functions report: slots a `try_acquire` could get now.
/// Stale entries count as free only when the caller would reap them.
pub(crate) fn available(doc: &Document, ctx: &Ctx<'_>) -> usize {
    let live = |e: &&Entry| !(ctx.reap && stale(e, ctx).is_some());
    let holders = doc.holders.iter().filter(live).count();
    let waiters = doc.waiters.iter().filter(live).count();
    (doc.capacity() as usize)
        .saturating_sub(holders)
        .saturating_sub(waiters)
}

/// Removes the entries with these IDs from holders and waiters, then hands freed slots on.
/// Returns the IDs removed, in the order given (each once).
pub(crate) fn remove_ids(doc: &mut Document, ids: &[&str], now: DateTime<Utc>) -> Vec<String> {
    let mut removed = Vec::new();
    for &id in ids {
        let before = doc.holders.len() + doc.waiters.len();
        doc.holders.retain(|e| e.id != id);
        doc.waiters.retain(|e| e.id != id);
        if doc.holders.len() + doc.waiters.len() != before && !removed.iter().any(|r| r == id) {
            removed.push(id.to_string());
        }
    }
    if !removed.is_empty() {
        hand_off(doc, now);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::doc::MAX_TOKEN;
    use crate::core::tokens::next_token;
    use std::collections::HashMap;

    /// A judge that answers from a table keyed by ID; unknown IDs are `Unknown`.
    struct Table(HashMap<&'static str, bool>);

    impl Judge for Table {
        fn judge(&self, entry: &Entry) -> Liveness {
            match self.0.get(entry.id.as_str()) {
                Some(true) => Liveness::Alive {
                    evidence: "test says alive".into(),
                },
                Some(false) => Liveness::Dead {
                    evidence: "test says dead".into(),
                },
                None => Liveness::Unknown {
                    evidence: "not in table".into(),
                },
            }
        }
    }

    fn now() -> DateTime<Utc> {
        "2025-01-01T00:00:00Z".parse().unwrap()
    }

    fn ctx<'a>(judge: &'a Table) -> Ctx<'a> {
        Ctx {
            now: now(),
            judge,
            reap: true,
        }
    }

    fn acquire(doc: &mut Document, id: &str, ctx: &Ctx<'_>) -> Result<(u64, u32), Refusal> {
        let mut changed = false;
        let mut removed = Vec::new();
        admit(doc, id, ctx, &mut changed, &mut removed)?;
        let token = take_token(doc);
        let record = grant(doc, Entry::test(id), token, ctx.now);
        Ok((token, record.slot.expect("a grant has a slot")))
    }

    #[test]
    fn grants_up_to_capacity_with_lowest_slots_and_rising_tokens() {
        // Never more than capacity; slots fill from 0; tokens strictly increase.
        let judge = Table(HashMap::new());
        let mut doc = Document::new(3);
        assert_eq!(acquire(&mut doc, "a", &ctx(&judge)), Ok((1, 0)));
        assert_eq!(acquire(&mut doc, "b", &ctx(&judge)), Ok((2, 1)));
        assert_eq!(acquire(&mut doc, "c", &ctx(&judge)), Ok((3, 2)));
        assert_eq!(
            acquire(&mut doc, "d", &ctx(&judge)),
            Err(Refusal::NoCapacity {
                capacity: 3,
                held: 3
            })
        );
        assert_eq!(
            acquire(&mut doc, "a", &ctx(&judge)),
            Err(Refusal::AlreadyHeld)
        );
        doc.holders.retain(|e| e.id != "b");
        assert_eq!(acquire(&mut doc, "d", &ctx(&judge)), Ok((4, 1)));
    }

    #[test]
    fn stale_holder_is_reaped_only_when_full_and_only_if_provably_dead() {
        // Unknown entries (Go-written) keep their slot; a dead one gives it up.
        let judge = Table(HashMap::from([("dead", false), ("live", true)]));
        let mut doc = Document::new(2);
        acquire(&mut doc, "dead", &ctx(&judge)).unwrap();
        acquire(&mut doc, "live", &ctx(&judge)).unwrap();
        let mut changed = false;
        let mut removed = Vec::new();
        assert_eq!(
            admit(&mut doc, "new", &ctx(&judge), &mut changed, &mut removed),
            Ok(())
        );
        assert!(changed);
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].entry.id, "dead");

        let mut doc = Document::new(1);
        doc.holders.push(Entry::test("go-written"));
        let mut removed = Vec::new();
        let r = admit(&mut doc, "new", &ctx(&judge), &mut changed, &mut removed);
        assert_eq!(
            r,
            Err(Refusal::NoCapacity {
                capacity: 1,
                held: 1
            })
        );
        assert!(removed.is_empty());
    }

    #[test]
    fn reaping_off_keeps_dead_entries() {
        // With reaping off, even a provably dead holder keeps its slot until removed.
        let judge = Table(HashMap::from([("dead", false)]));
        let mut doc = Document::new(1);
        acquire(&mut doc, "dead", &ctx(&judge)).unwrap();
        let off = Ctx {
            reap: false,
            ..ctx(&judge)
        };
        assert!(matches!(
            acquire(&mut doc, "x", &off),
            Err(Refusal::NoCapacity { .. })
        ));
        assert_eq!(acquire(&mut doc, "dead", &off), Err(Refusal::AlreadyHeld));
        assert_eq!(available(&doc, &off), 0);
        assert_eq!(available(&doc, &ctx(&judge)), 1);
    }

    #[test]
    fn same_id_held_by_dead_entry_is_replaced() {
        // A crashed holder's ID can be taken again once it is provably dead.
        let judge = Table(HashMap::from([("me", false)]));
        let mut doc = Document::new(2);
        acquire(&mut doc, "me", &ctx(&judge)).unwrap();
        assert_eq!(acquire(&mut doc, "me", &ctx(&judge)), Ok((2, 0)));
        assert_eq!(doc.holders.len(), 1);
    }

    #[test]
    fn expired_lease_is_stale_after_grace() {
        // A lease is honoured until expires_at + grace, even for entries we cannot judge.
        let judge = Table(HashMap::new());
        let mut e = Entry::test("x");
        e.detached = true;
        e.expires_at = Some(now() - chrono::Duration::seconds(1));
        assert!(!verdict(&e, now(), &judge).is_stale());
        e.expires_at = Some(now() - chrono::Duration::seconds(3));
        assert!(matches!(
            verdict(&e, now(), &judge),
            Liveness::Expired { .. }
        ));
        e.expires_at = None;
        assert!(matches!(
            verdict(&e, now(), &judge),
            Liveness::Unknown { .. }
        ));
    }

    #[test]
    fn queue_is_served_by_priority_then_arrival_with_hand_off() {
        // A freed slot goes to the queue head in the same change; newcomers cannot overtake.
        let judge = Table(HashMap::new());
        let mut doc = Document::new(1);
        acquire(&mut doc, "holder", &ctx(&judge)).unwrap();
        for (id, p) in [("w1", 0), ("w2", 0), ("vip", 5), ("w3", 0)] {
            let mut e = Entry::test(id);
            e.ticket = Some(take_token(&mut doc));
            e.priority = Some(p);
            enqueue(&mut doc, e);
        }
        let order: Vec<_> = doc.waiters.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(order, ["vip", "w1", "w2", "w3"]);
        assert!(matches!(
            acquire(&mut doc, "late", &ctx(&judge)),
            Err(Refusal::NoCapacity { .. })
        ));
        assert_eq!(available(&doc, &ctx(&judge)), 0);
        assert_eq!(remove_ids(&mut doc, &["holder"], now()), ["holder"]);
        assert_eq!(doc.holders.len(), 1);
        assert_eq!(doc.holders[0].id, "vip");
        assert_eq!(doc.holders[0].slot, Some(0));
        assert_eq!(doc.holders[0].priority, None);
        assert_eq!(doc.waiters.len(), 3);
    }

    #[test]
    fn a_waiter_overtaken_by_a_higher_priority_gets_the_larger_token_granted_after() {
        // Tokens are taken at the grant: A queues first, B (priority 10) after it, B is served
        // first, and A's later grant has the larger token, as fencing needs. Each keeps the
        // ticket it queued with; tickets and tokens come from one counter and never collide.
        let judge = Table(HashMap::new());
        let mut doc = Document::new(1);
        let (first, _) = acquire(&mut doc, "holder", &ctx(&judge)).unwrap();
        for (id, priority) in [("a", 0), ("b", 10)] {
            let mut e = Entry::test(id);
            e.ticket = Some(take_token(&mut doc));
            e.priority = (priority != 0).then_some(priority);
            enqueue(&mut doc, e);
        }
        let tickets: Vec<_> = doc
            .waiters
            .iter()
            .map(|e| (e.id.as_str(), e.ticket))
            .collect();
        assert_eq!(tickets, [("b", Some(3)), ("a", Some(2))]);
        assert!(doc.waiters.iter().all(|e| e.token.is_none()));

        assert_eq!(remove_ids(&mut doc, &["holder"], now()), ["holder"]);
        let b = doc.holders[0].clone();
        assert_eq!((b.id.as_str(), b.token, b.ticket), ("b", Some(4), Some(3)));
        assert_eq!(remove_ids(&mut doc, &["b"], now()), ["b"]);
        let a = doc.holders[0].clone();
        assert_eq!((a.id.as_str(), a.token, a.ticket), ("a", Some(5), Some(2)));
        assert!(
            first < b.token.unwrap() && b.token < a.token,
            "tokens in grant order"
        );
        assert_eq!(
            a.witness_name(),
            Some(2),
            "the witness keeps the ticket's name"
        );
        assert_eq!(next_token(&doc), 6);
    }

    #[test]
    fn hand_off_grants_nobody_when_the_counter_is_exhausted() {
        // A token above 2^53 - 1 would make the file corrupt: the waiter stays queued instead.
        let mut doc = Document::new(1);
        let mut e = Entry::test("w");
        e.ticket = Some(MAX_TOKEN);
        e.expires_at = Some(now() + chrono::Duration::seconds(10));
        enqueue(&mut doc, e);
        assert!(tokens_exhausted(&doc));
        assert_eq!(hand_off(&mut doc, now()), 0);
        assert_eq!((doc.holders.len(), doc.waiters.len()), (0, 1));
        assert_eq!(Document::parse(&doc.to_bytes()).map(|d| d == doc), Ok(true));
        doc.waiters[0].ticket = Some(MAX_TOKEN - 1);
        assert!(!tokens_exhausted(&doc));
        assert_eq!(hand_off(&mut doc, now()), 1);
        assert_eq!(doc.holders[0].token, Some(MAX_TOKEN));
    }

    #[test]
    fn hand_off_skips_waiters_whose_expiry_passed() {
        // A waiter that stopped refreshing its expiry (dead) is dropped, never granted.
        let mut doc = Document::new(1);
        for (id, ticket, secs) in [("gone", 1, -10), ("alive", 2, 10)] {
            let mut e = Entry::test(id);
            e.ticket = Some(ticket);
            e.expires_at = Some(now() + chrono::Duration::seconds(secs));
            enqueue(&mut doc, e);
        }
        doc.next_token = Some(3);
        assert_eq!(hand_off(&mut doc, now()), 1);
        assert_eq!(doc.holders[0].id, "alive");
        assert_eq!(
            doc.holders[0].token,
            Some(3),
            "a token only for the one granted"
        );
        assert_eq!(
            doc.holders[0].expires_at, None,
            "the waiter's expiry is not a lease"
        );
        assert!(doc.waiters.is_empty());
    }

    #[test]
    fn lowest_free_slot_fills_gaps_and_respects_capacity() {
        // Slot indices stay in 0..capacity; gaps are reused first.
        let mut doc = Document::new(3);
        for s in [0, 2] {
            let mut e = Entry::test("x");
            e.slot = Some(s);
            doc.holders.push(e);
        }
        assert_eq!(lowest_free_slot(&doc), Some(1));
        doc.capacity = 2;
        assert_eq!(lowest_free_slot(&doc), Some(1));
        doc.capacity = 1;
        assert_eq!(lowest_free_slot(&doc), None);
    }

    #[test]
    fn find_own_matches_token_then_id_and_time() {
        // A permit finds its entry after a Go rewrite dropped the token, never a newcomer's.
        let mut a = Entry::test("a");
        a.token = Some(7);
        let mut b = Entry::test("a");
        b.acquired_at = now();
        let entries = vec![a.clone(), b.clone()];
        assert_eq!(find_own(&entries, 7, "a", now()), Some(0));
        assert_eq!(find_own(&entries, 8, "a", now()), Some(1));
        assert_eq!(find_own(&entries, 8, "a", a.acquired_at), None);
        // Another holder's entry with the same token (a token handed out twice) is not ours.
        assert_eq!(find_own(&entries, 7, "b", a.acquired_at), None);
    }

    #[test]
    fn restore_fills_only_missing_fields_and_never_takes_a_slot_twice() {
        // What a foreign write dropped comes back; what is on file stays; a slot granted to
        // another holder meanwhile is not claimed again.
        let mut doc = Document::new(3);
        let mut full = Entry::test("me");
        full.token = Some(7);
        full.ticket = Some(6);
        full.slot = Some(1);
        full.owner = Some(Owner::test());
        full.witness = Some(Witness {
            dev: 1,
            ino: 2,
            extra: Default::default(),
        });
        full.lease_ms = Some(30_000);
        full.expires_at = Some(now());
        full.detached = true;
        full.metadata.insert("k".into(), "v".into());
        let record = Record::of(&full, 7);
        doc.holders.push(Entry::test("me"));
        let mut changed = false;
        assert_eq!(restore(&mut doc, 0, &record, &mut changed), Some(1));
        assert!(changed);
        assert_eq!(doc.holders[0], full);
        let mut changed = false;
        assert_eq!(restore(&mut doc, 0, &record, &mut changed), Some(1));
        assert!(!changed, "a complete entry is not rewritten");

        // Fields on file win over the record.
        doc.holders[0].metadata.clear();
        doc.holders[0].metadata.insert("k".into(), "theirs".into());
        doc.holders[0].slot = None;
        let mut other = Entry::test("other");
        other.slot = Some(1);
        doc.holders.push(other);
        let mut changed = false;
        assert_eq!(restore(&mut doc, 0, &record, &mut changed), None);
        assert!(!changed);
        assert_eq!(doc.holders[0].metadata["k"], "theirs");
        assert_eq!(doc.holders[0].slot, None, "slot 1 is the other holder's");

        // A record that does not know its slot (a waiter's) takes the lowest free one.
        let unknown_slot = Record {
            slot: None,
            ..record
        };
        let mut changed = false;
        assert_eq!(restore(&mut doc, 0, &unknown_slot, &mut changed), Some(0));
        assert!(changed);
    }

    #[test]
    fn remove_is_idempotent_and_reports_what_it_removed() {
        // remove of unknown IDs changes nothing and is not an error.
        let judge = Table(HashMap::new());
        let mut doc = Document::new(2);
        acquire(&mut doc, "a", &ctx(&judge)).unwrap();
        assert_eq!(remove_ids(&mut doc, &["zz", "a", "a"], now()), ["a"]);
        assert!(remove_ids(&mut doc, &["a"], now()).is_empty());
        assert!(doc.holders.is_empty());
    }
}
