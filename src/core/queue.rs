//! The queue of waiting acquires, as pure steps on a [`Document`]: join, look for our grant,
//! refresh, leave. They take the time and a liveness judge as inputs (through [`Ctx`]), and
//! the records a new entry carries from its store ([`Stamp`]), so they are tested without
//! files, processes or clocks; the blocking API (`crate::wait`) runs them in store steps and
//! waits between them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::core::doc::{Document, Entry, Owner, Witness};
use crate::core::rules::{self, Ctx, Record, Refusal, Removed};
use crate::core::tokens::{take_token, tokens_exhausted};
use crate::core::verdict::{expiry, verdict};
use crate::error::Result;

/// The default of [`Request::waiter_expiry`], and the file store's: how far ahead a waiter's
/// `expires_at` is set. The file store keeps it short and fixed: a process-bound waiter's
/// witness proves it dead at once, and this bounds only what nothing else can judge (another
/// machine, a stopped process).
pub(crate) const WAITER_EXPIRY: Duration = Duration::from_secs(6);

/// What [`AcquireOptions::on_wait`](crate::AcquireOptions::on_wait) is told when an acquire
/// starts waiting.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WaitStatus {
    /// The semaphore's state file.
    pub path: PathBuf,
    /// The capacity on file, in holders.
    pub capacity: u32,
    /// The IDs of the current holders, in file order.
    pub holders: Vec<String>,
    /// How many waiters are served before this one.
    pub ahead: usize,
}

/// What an acquire asks for: the settings of its
/// [`AcquireOptions`](crate::AcquireOptions) that go on file.
pub(crate) struct Request<'a> {
    pub id: &'a str,
    pub metadata: &'a BTreeMap<String, String>,
    /// A detached hold outlives its process (it has no witness).
    pub detached: bool,
    /// The queue priority; 0 is not written.
    pub priority: i32,
    /// The lease of the hold: the acquire's own, or the handle's default.
    pub lease: Option<Duration>,
    /// `false` for one attempt only (a zero timeout): refused instead of queued.
    pub may_wait: bool,
    /// How far ahead a waiter's `expires_at` is set, chosen by the store (the file store:
    /// [`WAITER_EXPIRY`]; a store with leases only: the acquire's lease). The waiter
    /// refreshes it every third of this while it waits; one that stops (it died, or was
    /// stopped for longer) is dropped from the queue once it has passed, plus
    /// [`LEASE_GRACE`](crate::LEASE_GRACE). This is what lets a queue move past a dead waiter
    /// that nobody can judge (another machine, or no liveness evidence at all).
    pub waiter_expiry: Duration,
}

impl Request<'_> {
    /// How often a waiter refreshes its expiry: a third of [`Request::waiter_expiry`].
    pub fn refresh_every(&self) -> Duration {
        self.waiter_expiry / 3
    }
}

/// What a new hold or waiter records, as its store issues it in the step that writes the
/// entry: the number it is created under (from the token counter: the fencing token of a
/// direct grant, a waiter's ticket), its owner, and the record of its witness if it has one.
/// The store decides what the owner record holds (the file store: pid, start time, boot id,
/// namespaces, host; a network store: enough to display) and whether there is a witness.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Stamp {
    pub number: u64,
    pub owner: Owner,
    pub witness: Option<Witness>,
}

/// A queued acquire's identity on file (its ID and ticket: the only way it recognises its
/// entry, queued and after the hand-off), and what its entry records (to restore the fields
/// another writer dropped from its granted entry, if the ticket survived).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Mine {
    pub id: String,
    /// The number it took when it joined the queue; never its fencing token, which the
    /// hand-off takes.
    pub ticket: u64,
    /// Its queue entry as it wrote it: what the hold will record once granted, together with
    /// the token, slot and lease end of the grant ([`Mine::granted`]).
    queued: Entry,
}

impl Mine {
    fn of(entry: &Entry, ticket: u64) -> Mine {
        Mine {
            id: entry.id.clone(),
            ticket,
            queued: entry.clone(),
        }
    }

    /// What the hold records once granted at `acquired_at` with `token` in `slot` (the lease
    /// end as [`rules::hand_off`] wrote it; the waiter's own expiry is not part of it).
    fn granted(&self, token: u64, slot: Option<u32>, acquired_at: DateTime<Utc>) -> Record {
        Record {
            slot,
            expires_at: rules::lease_end(self.queued.lease_ms, acquired_at),
            ..Record::of(&self.queued, token)
        }
    }

    /// Whether `entry` is this acquire's: same ticket and ID (a Go write loses the counter,
    /// so once our entry is gone, our old number may be handed out again: the ID tells it
    /// apart).
    fn is(&self, entry: &Entry) -> bool {
        entry.ticket == Some(self.ticket) && entry.id == self.id
    }
}

/// Issues the [`Stamp`] of a new entry: takes the next number of the counter (the fencing
/// token of a direct grant, or a waiter's ticket) and records what the store judges the entry
/// by (for the file store, a process-bound hold's witness file, created and named by that
/// number). The store acts here only, so that [`settle`] stays testable without one.
pub(crate) type NewStamp<'a> = dyn FnMut(&mut Document) -> Result<Stamp> + 'a;

/// A slot granted to an acquire.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Grant {
    pub token: u64,
    pub slot: u32,
    pub acquired_at: DateTime<Utc>,
    /// What the hold records, for the permit.
    pub record: Record,
}

/// The result of one locked step of an acquire.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per locked step, moved once; boxing buys nothing
pub(crate) enum Outcome {
    Granted(Grant),
    Queued { mine: Mine, status: WaitStatus },
    Refused(Refusal),
}

/// The result of leaving the queue.
#[derive(Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per leave, moved once; boxing buys nothing
pub(crate) enum Left {
    /// The queue entry was removed, or was already gone.
    Gone,
    /// The slot had been handed over; it is kept (the caller returns a permit).
    Granted(Grant),
    /// The slot had been handed over; it was released and handed on.
    Released,
}

/// Where an acquire's entry is.
enum Found {
    /// In `holders`, with its ticket: granted.
    Holder(usize),
    /// In the queue.
    Waiter(usize),
}

/// The entry of a new hold before its token, as both `try_acquire` and an acquire granted at
/// once record it: metadata, detached, lease length, and the owner and witness of `stamp`
/// (whose number becomes its token: see [`rules::grant`]).
pub(crate) fn holder_entry(req: &Request<'_>, now: DateTime<Utc>, stamp: Stamp) -> Entry {
    let mut entry = Entry::new(req.id.to_string(), now);
    entry.metadata = req.metadata.clone();
    entry.detached = req.detached;
    entry.lease_ms = req
        .lease
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    entry.owner = Some(stamp.owner);
    entry.witness = stamp.witness;
    entry
}

/// The entry of a new waiter: a holder entry plus its ticket (the number of `stamp`),
/// priority and expiry. Every waiter entry is built here, so that it is judged like a holder
/// (owner, witness) and becomes one by [`rules::hand_off`] (which gives it a token, and
/// replaces the waiter's expiry by the lease, if any).
pub(crate) fn waiter_entry(req: &Request<'_>, stamp: Stamp, now: DateTime<Utc>) -> Entry {
    let ticket = stamp.number;
    let mut entry = holder_entry(req, now, stamp);
    entry.ticket = Some(ticket);
    entry.priority = (req.priority != 0).then_some(req.priority);
    entry.expires_at = Some(expiry_from(now, req.waiter_expiry));
    entry
}

fn expiry_from(now: DateTime<Utc>, expiry: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(expiry).unwrap_or_default()
}

/// Finds our entry: by ticket and ID ([`Mine::is`]), among the holders (granted: the hand-off
/// keeps the ticket) and the waiters.
///
/// Never by ID alone. Once our queue entry is gone (removed, or dropped by a Go write), the ID
/// may be granted to someone else, and a holder entry whose ticket a Go write dropped cannot
/// be told from a slot handed to us and stripped before we saw it: claiming it could make two
/// processes hold one entry, and our release would end the other's hold. Such an entry is
/// left alone; the acquire is then refused as already held (the hold can be released by ID).
fn find(doc: &Document, mine: &Mine) -> Option<Found> {
    if let Some(i) = doc.holders.iter().position(|e| mine.is(e)) {
        return Some(Found::Holder(i));
    }
    doc.waiters
        .iter()
        .position(|e| mine.is(e))
        .map(Found::Waiter)
}

/// The grant of `mine`, if a snapshot shows it (no lock needed): our entry among the holders,
/// with the token and slot the hand-off gave it.
pub(crate) fn granted(doc: &Document, mine: &Mine) -> Option<Grant> {
    match find(doc, mine)? {
        Found::Holder(i) => {
            let e = &doc.holders[i];
            let (token, slot) = (e.token?, e.slot?);
            Some(Grant {
                token,
                slot,
                acquired_at: e.acquired_at,
                record: mine.granted(token, Some(slot), e.acquired_at),
            })
        }
        Found::Waiter(_) => None,
    }
}

/// Gives the holder entry at `i` (ours: found by ticket and ID) back every field another
/// writer dropped after the hand-off while keeping the ticket ([`rules::restore`]: a slot,
/// owner, witness, lease, metadata, detached), and learns its fencing token from it. An entry
/// that lost its token (but not its ticket) gets a new one now: the grant is ours, and its
/// old token is known to nobody. `None` when no slot index is free, or no token is left.
fn mark(doc: &mut Document, i: usize, mine: &Mine, changed: &mut bool) -> Option<Grant> {
    let acquired_at = doc.holders[i].acquired_at;
    let token = match doc.holders[i].token {
        Some(token) => token,
        None if tokens_exhausted(doc) => return None,
        None => {
            let token = take_token(doc);
            doc.holders[i].token = Some(token);
            *changed = true;
            token
        }
    };
    let mut record = mine.granted(token, None, acquired_at);
    let slot = rules::restore(doc, i, &record, changed)?;
    record.slot = Some(slot);
    Some(Grant {
        token,
        slot,
        acquired_at,
        record,
    })
}

/// One locked step of an acquire. Without `mine` (the first step): grant as `try_acquire`
/// does, else queue (if `may_wait`) with a new ticket. With `mine`: reap stale entries and
/// hand free slots to the queue, then report our grant, or stay queued (refreshing the expiry
/// if `refresh`), or, if our entry vanished, start over as a first step (at the back of the
/// queue, with a new ticket: the old one may have been lost with the counter). A queued
/// acquire owed a free slot that no token is left for is refused
/// ([`Refusal::TokensExhausted`]).
#[allow(clippy::too_many_arguments)] // one step's inputs and its two reports
pub(crate) fn settle(
    doc: &mut Document,
    req: &Request<'_>,
    mine: Option<&Mine>,
    refresh: bool,
    ctx: &Ctx<'_>,
    new_stamp: &mut NewStamp<'_>,
    changed: &mut bool,
    removed: &mut Vec<Removed>,
) -> Result<Outcome> {
    if let Some(mine) = mine {
        if ctx.reap {
            let reaped = rules::reap(doc, ctx);
            if !reaped.is_empty() {
                *changed = true;
                removed.extend(reaped);
            }
        }
        if rules::hand_off(doc, ctx.now) > 0 {
            *changed = true;
        }
        match find(doc, mine) {
            Some(Found::Holder(i)) => {
                return Ok(match mark(doc, i, mine, changed) {
                    Some(grant) => Outcome::Granted(grant),
                    // Ours, but no slot index is free (capacity lowered meanwhile): the ID is
                    // on file and this call cannot claim it.
                    None => Outcome::Refused(Refusal::AlreadyHeld),
                });
            }
            Some(Found::Waiter(i)) => {
                let owed = i == 0
                    && doc.holders.len() < doc.capacity() as usize
                    && rules::lowest_free_slot(doc).is_some();
                if owed && tokens_exhausted(doc) {
                    return Ok(Outcome::Refused(Refusal::TokensExhausted));
                }
                if refresh {
                    doc.waiters[i].expires_at = Some(expiry_from(ctx.now, req.waiter_expiry));
                    *changed = true;
                }
                return Ok(Outcome::Queued {
                    mine: mine.clone(),
                    status: status(doc, i),
                });
            }
            None => {}
        }
    }
    Ok(match rules::admit(doc, req.id, ctx, changed, removed) {
        Ok(()) => {
            let stamp = new_stamp(doc)?;
            let token = stamp.number;
            let entry = holder_entry(req, ctx.now, stamp);
            let record = rules::grant(doc, entry, token, ctx.now);
            *changed = true;
            Outcome::Granted(Grant {
                token,
                slot: record.slot.unwrap_or(0),
                acquired_at: ctx.now,
                record,
            })
        }
        Err(Refusal::NoCapacity { .. }) if req.may_wait => {
            let stamp = new_stamp(doc)?;
            let ticket = stamp.number;
            let entry = waiter_entry(req, stamp, ctx.now);
            let mine = Mine::of(&entry, ticket);
            rules::enqueue(doc, entry);
            *changed = true;
            let ahead = doc.waiters.iter().position(|e| mine.is(e)).unwrap_or(0);
            Outcome::Queued {
                status: status(doc, ahead),
                mine,
            }
        }
        Err(refusal) => Outcome::Refused(refusal),
    })
}

/// The status for `on_wait`; the caller fills in `path`.
fn status(doc: &Document, ahead: usize) -> WaitStatus {
    WaitStatus {
        path: PathBuf::new(),
        capacity: doc.capacity(),
        holders: doc.holders.iter().map(|e| e.id.clone()).collect(),
        ahead,
    }
}

/// Leaves the queue (a locked step). A slot handed over meanwhile is kept if `keep_grant`,
/// else released and handed on in the same write.
pub(crate) fn leave(
    doc: &mut Document,
    mine: &Mine,
    keep_grant: bool,
    now: DateTime<Utc>,
    changed: &mut bool,
) -> Left {
    match find(doc, mine) {
        Some(Found::Waiter(i)) => {
            doc.waiters.remove(i);
            rules::hand_off(doc, now);
            *changed = true;
            Left::Gone
        }
        Some(Found::Holder(i)) => {
            if keep_grant && let Some(grant) = mark(doc, i, mine, changed) {
                return Left::Granted(grant);
            }
            doc.holders.remove(i);
            rules::hand_off(doc, now);
            *changed = true;
            Left::Released
        }
        None => Left::Gone,
    }
}

/// Whether a snapshot shows something a locked step would change for a queued `mine`: its
/// entry vanished or lost its ticket, token or slot, a slot is free for the queue, or an
/// entry is stale.
pub(crate) fn needs_step(doc: &Document, mine: &Mine, ctx: &Ctx<'_>) -> bool {
    needs_step_given(doc, mine, || queue_needs_step(doc, ctx))
}

/// [`needs_step`], with the part that does not depend on `mine` ([`queue_needs_step`])
/// computed by `queue` only when needed: many waiters looking at one snapshot judge its
/// entries once.
pub(crate) fn needs_step_given(doc: &Document, mine: &Mine, queue: impl FnOnce() -> bool) -> bool {
    match find(doc, mine) {
        Some(Found::Waiter(_)) => queue(),
        Some(Found::Holder(i)) => doc.holders[i].slot.is_none() || doc.holders[i].token.is_none(),
        None => true,
    }
}

/// Whether a snapshot shows something a locked step would change for any waiter still
/// queued: a slot is free for the queue, or (when reaping) an entry is stale.
pub(crate) fn queue_needs_step(doc: &Document, ctx: &Ctx<'_>) -> bool {
    let free =
        doc.holders.len() < doc.capacity() as usize && rules::lowest_free_slot(doc).is_some();
    free || (ctx.reap
        && doc
            .holders
            .iter()
            .chain(&doc.waiters)
            .any(|e| verdict(e, ctx.now, ctx.judge).is_stale()))
}

/// Whether our entry is the head of the queue: the waiter served next.
pub(crate) fn at_head(doc: &Document, mine: &Mine) -> bool {
    doc.waiters.first().is_some_and(|e| mine.is(e))
}

/// How long until the next entry other than ours becomes stale by its expiry.
pub(crate) fn next_expiry(doc: &Document, mine: &Mine, now: DateTime<Utc>) -> Option<Duration> {
    next_expiry_of(doc, |e| !mine.is(e), now)
}

/// How long until the next entry becomes stale by its expiry: for a watcher that looks on
/// behalf of every waiter of a process (the async API).
#[cfg(feature = "tokio")]
pub(crate) fn next_expiry_any(doc: &Document, now: DateTime<Utc>) -> Option<Duration> {
    next_expiry_of(doc, |_| true, now)
}

/// Refreshes the expiry of every waiter among `mines` (each with its request's
/// [`waiter_expiry`](Request::waiter_expiry)) still queued in `doc`, as a step of one of them
/// with `refresh` does ([`settle`]): one step for all the waiters of a process (the async
/// API). Returns how many it refreshed.
#[cfg(feature = "tokio")]
pub(crate) fn refresh_all<'m>(
    doc: &mut Document,
    mines: impl IntoIterator<Item = &'m (Mine, Duration)>,
    now: DateTime<Utc>,
) -> usize {
    let mines: std::collections::HashMap<u64, &(Mine, Duration)> =
        mines.into_iter().map(|m| (m.0.ticket, m)).collect();
    let mut refreshed = 0;
    for e in &mut doc.waiters {
        let expiry = e
            .ticket
            .and_then(|t| mines.get(&t))
            .filter(|(m, _)| m.is(e))
            .map(|(_, expiry)| *expiry);
        if let Some(expiry) = expiry {
            e.expires_at = Some(expiry_from(now, expiry));
            refreshed += 1;
        }
    }
    refreshed
}

fn next_expiry_of(
    doc: &Document,
    counts: impl Fn(&Entry) -> bool,
    now: DateTime<Utc>,
) -> Option<Duration> {
    doc.holders
        .iter()
        .chain(&doc.waiters)
        .filter(|e| counts(e))
        .filter_map(expiry)
        .filter(|&at| at > now)
        .min()
        .and_then(|at| (at - now).to_std().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::doc::MAX_TOKEN;
    use crate::core::tokens::{next_token, resume_token_counter};
    use crate::core::verdict::{LEASE_GRACE, NoEvidence};
    use crate::options::AcquireOptions;

    fn t(secs: i64) -> DateTime<Utc> {
        "2025-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::seconds(secs)
    }

    fn ctx(now: DateTime<Utc>) -> Ctx<'static> {
        Ctx {
            now,
            judge: &NoEvidence,
            reap: true,
        }
    }

    /// Tokens without witness files.
    fn tokens_only(doc: &mut Document) -> Result<Stamp> {
        Ok(Stamp {
            number: take_token(doc),
            owner: Owner::test(),
            witness: None,
        })
    }

    fn full(capacity: u32) -> Document {
        let mut doc = Document::new(capacity);
        for i in 0..capacity {
            let token = take_token(&mut doc);
            rules::grant(&mut doc, Entry::test(&format!("h{i}")), token, t(0));
        }
        doc
    }

    fn settle_at(
        doc: &mut Document,
        id: &str,
        options: &AcquireOptions,
        mine: Option<&Mine>,
        refresh: bool,
        now: DateTime<Utc>,
    ) -> (Outcome, bool) {
        let req = options.request(id, None, true);
        let mut changed = false;
        let mut removed = Vec::new();
        let o = settle(
            doc,
            &req,
            mine,
            refresh,
            &ctx(now),
            &mut tokens_only,
            &mut changed,
            &mut removed,
        );
        (o.unwrap(), changed)
    }

    fn queue(doc: &mut Document, id: &str, priority: i32, now: DateTime<Utc>) -> Mine {
        let opts = AcquireOptions::new().priority(priority);
        match settle_at(doc, id, &opts, None, false, now).0 {
            Outcome::Queued { mine, .. } => mine,
            other => panic!("expected queued, got {other:?}"),
        }
    }

    #[test]
    fn first_step_grants_when_free_and_queues_with_a_ticket_when_full() {
        // The try path is tried first; a full semaphore queues the caller with a ticket and
        // no token (a token is taken when the slot is granted).
        let mut doc = Document::new(1);
        let (o, changed) = settle_at(&mut doc, "a", &AcquireOptions::new(), None, false, t(1));
        assert!(
            matches!(o, Outcome::Granted(Grant { slot: 0, .. })),
            "{o:?}"
        );
        assert!(changed);
        let (o, _) = settle_at(&mut doc, "b", &AcquireOptions::new(), None, false, t(1));
        let Outcome::Queued { mine, status } = o else {
            panic!("{o:?}")
        };
        assert_eq!(status.holders, ["a"]);
        assert_eq!((status.capacity, status.ahead), (1, 0));
        assert_eq!(doc.waiters[0].ticket, Some(mine.ticket));
        assert_eq!(doc.waiters[0].token, None);
        assert_eq!(mine.ticket, 2, "the number after the holder's token");
        assert_eq!(
            doc.waiters[0].expires_at,
            Some(expiry_from(t(1), WAITER_EXPIRY))
        );
    }

    #[test]
    fn a_zero_timeout_is_refused_without_leaving_an_entry() {
        // One attempt only: nothing is queued.
        let mut doc = full(1);
        let options = AcquireOptions::new();
        let req = options.request("b", None, false);
        let (mut changed, mut removed) = (false, Vec::new());
        let o = settle(
            &mut doc,
            &req,
            None,
            false,
            &ctx(t(1)),
            &mut tokens_only,
            &mut changed,
            &mut removed,
        )
        .unwrap();
        assert!(matches!(o, Outcome::Refused(Refusal::NoCapacity { .. })));
        assert!(doc.waiters.is_empty());
        assert!(!changed);
    }

    #[test]
    fn the_handed_over_slot_is_seen_in_a_snapshot_with_the_token_of_the_grant() {
        // The releaser's write grants the head a new token; the waiter only has to look, and
        // finds its entry by the ticket it kept.
        let mut doc = full(1);
        let mine = queue(&mut doc, "w", 0, t(1));
        assert_eq!(granted(&doc, &mine), None);
        assert_eq!(rules::remove_ids(&mut doc, &["h0"], t(2)), ["h0"]);
        let grant = granted(&doc, &mine).expect("granted");
        assert_eq!(doc.holders[0].ticket, Some(mine.ticket));
        assert_eq!(
            grant.token, 3,
            "taken at the grant, after the ticket {}",
            mine.ticket
        );
        assert_eq!(grant.slot, 0);
        assert_eq!(grant.acquired_at, t(2));
        assert_eq!(grant.record.ticket, Some(mine.ticket));
    }

    #[test]
    fn waiters_served_out_of_arrival_order_get_tokens_in_grant_order() {
        // A queues first, B with priority 10 later: B is granted first and A's token is the
        // larger, so a fencing resource that saw B's token accepts A's.
        let mut doc = full(1);
        let a = queue(&mut doc, "a", 0, t(1));
        let b = queue(&mut doc, "b", 10, t(2));
        assert!(a.ticket < b.ticket);
        rules::remove_ids(&mut doc, &["h0"], t(3));
        let (o, _) = settle_at(&mut doc, "b", &AcquireOptions::new(), Some(&b), false, t(3));
        let Outcome::Granted(first) = o else {
            panic!("{o:?}")
        };
        assert_eq!(granted(&doc, &a), None);
        rules::remove_ids(&mut doc, &["b"], t(4));
        let second = granted(&doc, &a).expect("a is granted after b");
        assert!(
            first.token < second.token,
            "b's token {} then a's {}",
            first.token,
            second.token
        );
        assert!(
            b.ticket < first.token,
            "tokens come after every ticket taken before"
        );
    }

    #[test]
    fn a_vanished_entry_queues_again_with_a_new_ticket() {
        // A Go write drops the queue: the waiter joins again instead of waiting forever.
        let mut doc = full(1);
        let mine = queue(&mut doc, "w", 0, t(1));
        doc.waiters.clear();
        doc.next_token = None;
        let (o, changed) = settle_at(
            &mut doc,
            "w",
            &AcquireOptions::new(),
            Some(&mine),
            false,
            t(2),
        );
        let Outcome::Queued { mine: again, .. } = o else {
            panic!("{o:?}")
        };
        assert!(changed);
        assert_eq!(doc.waiters.len(), 1);
        assert_eq!(doc.waiters[0].acquired_at, t(2));
        assert_eq!(doc.waiters[0].ticket, Some(again.ticket));
        assert_eq!(doc.waiters[0].token, None);
        assert!(again.ticket > doc.holders[0].token.unwrap());
    }

    /// What a Go write leaves of a document: holders with `id` and `acquired_at` only.
    fn go_rewrite(doc: &mut Document) {
        doc.waiters.clear();
        doc.next_token = None;
        for e in &mut doc.holders {
            *e = Entry::new(e.id.clone(), e.acquired_at);
        }
    }

    #[test]
    fn a_waiter_never_claims_a_hold_granted_to_someone_else_under_its_id() {
        // Found by the model test: the queue entry of `w` vanished (a Go write), then a Go
        // process took a slot as `w`. The waiter used to claim that entry as its own grant
        // (ID and time matched), so two processes held one entry and the waiter's release
        // would end the other's hold. It is refused instead, and leaving touches nothing.
        let mut doc = full(1);
        let mine = queue(&mut doc, "w", 0, t(1));
        go_rewrite(&mut doc);
        doc.capacity = 2;
        doc.holders.push(Entry::new("w".to_string(), t(2)));
        resume_token_counter(&mut doc, t(3));
        let before = doc.clone();
        let (o, changed) = settle_at(
            &mut doc,
            "w",
            &AcquireOptions::new(),
            Some(&mine),
            false,
            t(3),
        );
        assert!(matches!(o, Outcome::Refused(Refusal::AlreadyHeld)), "{o:?}");
        assert!(!changed);
        assert_eq!(doc, before);
        assert_eq!(granted(&doc, &mine), None);
        let mut changed = false;
        assert_eq!(
            leave(&mut doc, &mine, false, t(4), &mut changed),
            Left::Gone
        );
        assert!(!changed);
        assert_eq!(doc, before);
    }

    /// One holder `h0`, then `w` queued with a 30 s lease, metadata and detached, then handed
    /// the slot at t(2) by the release of `h0`: the document, the waiter, and its entry as
    /// granted.
    fn handed_over_with_a_record() -> (Document, Mine, Entry) {
        let mut doc = full(1);
        let opts = AcquireOptions::new().metadata("job", "7").detached(true);
        let req = opts.request("w", Some(Duration::from_secs(30)), true);
        let (mut changed, mut removed) = (false, Vec::new());
        let o = settle(
            &mut doc,
            &req,
            None,
            false,
            &ctx(t(1)),
            &mut tokens_only,
            &mut changed,
            &mut removed,
        )
        .unwrap();
        let Outcome::Queued { mine, .. } = o else {
            panic!("{o:?}")
        };
        assert_eq!(rules::remove_ids(&mut doc, &["h0"], t(2)), ["h0"]);
        let granted = doc.holders[0].clone();
        assert_eq!(granted.ticket, Some(mine.ticket));
        assert!(granted.token > Some(mine.ticket));
        assert_eq!(
            granted.expires_at,
            Some(t(32)),
            "the lease starts at the grant"
        );
        (doc, mine, granted)
    }

    #[test]
    fn a_grant_that_kept_its_ticket_gets_back_every_field_a_foreign_write_dropped() {
        // Found by ticket and ID, the entry is ours: the waiter writes back everything the
        // hold records (slot, owner, witness, lease and its end, metadata, detached), as a
        // permit does, and its grant carries that record and the token on file.
        let (mut doc, mine, granted) = handed_over_with_a_record();
        let mut stripped = Entry::new(granted.id.clone(), granted.acquired_at);
        stripped.token = granted.token;
        stripped.ticket = granted.ticket;
        doc.holders[0] = stripped;
        let (o, changed) = settle_at(
            &mut doc,
            "w",
            &AcquireOptions::new(),
            Some(&mine),
            false,
            t(3),
        );
        assert!(changed);
        let Outcome::Granted(grant) = o else {
            panic!("{o:?}")
        };
        assert_eq!(
            (Some(grant.token), grant.slot, grant.acquired_at),
            (granted.token, 0, t(2))
        );
        assert_eq!(doc.holders[0], granted, "every field is back");
        assert_eq!(grant.record, Record::of(&granted, grant.token));
    }

    #[test]
    fn a_grant_that_lost_only_its_token_gets_a_new_one() {
        // Its ticket proves the entry ours; the token a foreign writer dropped is known to
        // nobody, so the waiter takes the next one, above everything handed out before.
        let (mut doc, mine, granted) = handed_over_with_a_record();
        doc.holders[0].token = None;
        let before = next_token(&doc);
        let (o, changed) = settle_at(
            &mut doc,
            "w",
            &AcquireOptions::new(),
            Some(&mine),
            false,
            t(3),
        );
        assert!(changed);
        let Outcome::Granted(grant) = o else {
            panic!("{o:?}")
        };
        assert_eq!(grant.token, before);
        assert!(Some(grant.token) > granted.token);
        assert_eq!(doc.holders[0].token, Some(grant.token));
        assert_eq!(doc.holders[0].ticket, Some(mine.ticket));
        assert_eq!(grant.record, Record::of(&doc.holders[0], grant.token));
    }

    #[test]
    fn a_waiter_owed_a_slot_is_refused_when_no_token_is_left() {
        // Granting it would need a token above 2^53 - 1, which the file cannot hold: the
        // acquire ends with an error instead of waiting forever beside a free slot.
        let mut doc = full(1);
        let mine = queue(&mut doc, "w", 0, t(1));
        doc.next_token = Some(MAX_TOKEN + 1);
        rules::remove_ids(&mut doc, &["h0"], t(2));
        assert_eq!(doc.waiters.len(), 1, "not granted");
        let (o, _) = settle_at(
            &mut doc,
            "w",
            &AcquireOptions::new(),
            Some(&mine),
            false,
            t(2),
        );
        assert!(
            matches!(o, Outcome::Refused(Refusal::TokensExhausted)),
            "{o:?}"
        );
        let mut changed = false;
        assert_eq!(
            leave(&mut doc, &mine, false, t(3), &mut changed),
            Left::Gone
        );
        assert!(changed && doc.waiters.is_empty());
    }

    #[test]
    fn a_grant_whose_token_a_go_write_dropped_is_left_alone() {
        // Hand-off, then a Go write (only id and acquired_at kept) before the waiter looked:
        // nothing on file tells that entry from someone else's hold of the same ID, so the
        // waiter is refused as already held rather than guess. None of its record (owner,
        // witness, lease, metadata, detached) is written into the entry, leaving does not
        // release it, even when keeping a grant; the entry stays, to be released by ID.
        let (mut doc, mine, handed) = handed_over_with_a_record();
        go_rewrite(&mut doc);
        resume_token_counter(&mut doc, t(3));
        assert_eq!(
            doc.holders,
            [Entry::new("w".to_string(), handed.acquired_at)]
        );
        let before = doc.clone();
        let (o, changed) = settle_at(
            &mut doc,
            "w",
            &AcquireOptions::new(),
            Some(&mine),
            false,
            t(3),
        );
        assert!(matches!(o, Outcome::Refused(Refusal::AlreadyHeld)), "{o:?}");
        assert!(!changed);
        assert_eq!(doc, before, "nothing restored");
        assert_eq!(granted(&doc, &mine), None);
        for keep_grant in [true, false] {
            let mut changed = false;
            assert_eq!(
                leave(&mut doc, &mine, keep_grant, t(4), &mut changed),
                Left::Gone
            );
            assert!(!changed);
            assert_eq!(doc, before, "not released");
        }
        assert_eq!(rules::remove_ids(&mut doc, &["w"], t(4)), ["w"]);
    }

    #[test]
    fn refresh_moves_the_expiry_and_a_stopped_waiter_is_reaped_by_the_next() {
        // A waiter that stops refreshing leaves the queue; the one behind moves up.
        let mut doc = full(1);
        let dead = queue(&mut doc, "dead", 0, t(0));
        let live = queue(&mut doc, "live", 0, t(0));
        let (o, changed) = settle_at(
            &mut doc,
            "live",
            &AcquireOptions::new(),
            Some(&live),
            true,
            t(4),
        );
        assert!(changed);
        assert!(matches!(o, Outcome::Queued { .. }));
        assert_eq!(
            doc.waiters[1].expires_at,
            Some(expiry_from(t(4), WAITER_EXPIRY))
        );
        let later = t(9);
        assert!(needs_step(&doc, &live, &ctx(later)));
        let (o, _) = settle_at(
            &mut doc,
            "live",
            &AcquireOptions::new(),
            Some(&live),
            false,
            later,
        );
        let Outcome::Queued { status, .. } = o else {
            panic!("{o:?}")
        };
        assert_eq!(status.ahead, 0);
        assert_eq!(doc.waiters.len(), 1);
        assert_eq!(granted(&doc, &dead), None);
        assert!(!needs_step(&doc, &live, &ctx(later)));
    }

    #[test]
    fn leaving_removes_the_entry_or_releases_or_keeps_a_grant() {
        // Timeout and cancel never leak a slot handed over while they were leaving.
        let mut doc = full(1);
        let a = queue(&mut doc, "a", 0, t(1));
        let b = queue(&mut doc, "b", 0, t(1));
        let mut changed = false;
        assert_eq!(leave(&mut doc, &b, false, t(2), &mut changed), Left::Gone);
        assert!(changed);
        assert_eq!(doc.waiters.len(), 1);
        rules::remove_ids(&mut doc, &["h0"], t(3));
        let mut changed = false;
        let Left::Granted(g) = leave(&mut doc, &a, true, t(4), &mut changed) else {
            panic!("kept")
        };
        assert_eq!(Some(g.token), doc.holders[0].token);
        assert_eq!(g.record.ticket, Some(a.ticket));
        assert!(!changed);
        let c = queue(&mut doc, "c", 0, t(5));
        assert_eq!(
            leave(&mut doc, &a, false, t(6), &mut changed),
            Left::Released
        );
        assert_eq!(
            doc.holders[0].id, "c",
            "the released slot went to the next waiter"
        );
        assert_eq!(granted(&doc, &c).map(|g| g.token), doc.holders[0].token);
        let mut changed = false;
        assert_eq!(leave(&mut doc, &b, false, t(7), &mut changed), Left::Gone);
        assert!(!changed);
    }

    #[test]
    fn priority_orders_the_queue_and_status_counts_those_ahead() {
        // Higher priority first, first come first served within a priority.
        let mut doc = full(1);
        queue(&mut doc, "low", -1, t(1));
        queue(&mut doc, "a", 0, t(1));
        let opts = AcquireOptions::new().priority(3);
        let Outcome::Queued { status, .. } = settle_at(&mut doc, "vip", &opts, None, false, t(1)).0
        else {
            panic!()
        };
        assert_eq!(status.ahead, 0);
        let Outcome::Queued { status, .. } =
            settle_at(&mut doc, "b", &AcquireOptions::new(), None, false, t(1)).0
        else {
            panic!()
        };
        assert_eq!(status.ahead, 2);
        let order: Vec<_> = doc.waiters.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(order, ["vip", "a", "b", "low"]);
    }

    #[test]
    fn next_expiry_ignores_our_own_entry_and_the_past() {
        // The sleeper wakes when someone else's expiry passes, not for its own.
        let mut doc = full(1);
        let a = queue(&mut doc, "a", 0, t(0));
        let b = queue(&mut doc, "b", 0, t(1));
        let grace = LEASE_GRACE;
        assert_eq!(next_expiry(&doc, &b, t(0)), Some(WAITER_EXPIRY + grace));
        assert_eq!(
            next_expiry(&doc, &a, t(0)),
            Some(WAITER_EXPIRY + grace + Duration::from_secs(1))
        );
        assert_eq!(next_expiry(&doc, &a, t(100)), None);
    }
}
