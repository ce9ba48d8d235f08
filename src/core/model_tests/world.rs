//! The system under test: a [`Document`] changed by the rules exactly as the library's
//! operations compose them, the processes using it, and the checks after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::{GoOp, Hold, Id, M, Model, Op, Owner, waiter_expiry};
use crate::core::doc::{self, Document, Entry};
use crate::core::queue::{self, Grant, Left, Mine, Outcome, Stamp};
use crate::core::rules::{self, Ctx, Record, Refusal};
use crate::core::tokens::{resume_token_counter, take_token};
use crate::core::verdict::{Judge, Liveness};
use crate::options::AcquireOptions;

#[derive(Clone, Debug)]
enum State {
    /// Holds a permit.
    Holding(Box<Permit>),
    /// In a waiting acquire.
    Waiting(Box<Mine>),
    /// Gone: released, gave up, or killed.
    Ended,
}

/// What a process's permit knows of its hold, as [`crate::Permit`] keeps it.
#[derive(Clone, Debug)]
struct Permit {
    token: u64,
    slot: u32,
    /// The grant time: with the ID, how the permit finds its entry once a Go write dropped
    /// the token.
    at: DateTime<Utc>,
    /// What it writes back when it finds its entry stripped; `expires_at` follows renewals.
    record: Record,
}

impl State {
    /// Holding the permit of `grant`.
    fn holding(grant: Grant) -> State {
        State::Holding(Box::new(Permit {
            token: grant.token,
            slot: grant.slot,
            at: grant.acquired_at,
            record: grant.record,
        }))
    }
}

#[derive(Clone, Debug)]
struct Proc {
    id: Id,
    hold: Hold,
    priority: i32,
    state: State,
    /// Its witness lock is held.
    alive: bool,
    /// The names of the witnesses it created: the token of a direct grant, the ticket of a
    /// queue entry.
    witnesses: Vec<u64>,
}

impl Proc {
    fn options(&self) -> AcquireOptions {
        let options = AcquireOptions::new()
            .priority(self.priority)
            .detached(self.hold.detached);
        match self.hold.lease_s {
            Some(s) => options.lease(Duration::from_secs(u64::from(s))),
            None => options,
        }
    }
}

/// The liveness oracle, as the witness files judge: the process whose witness the entry names
/// ([`Entry::witness_name`]: its ticket, else its token) is alive while it holds its witness
/// lock, dead after; a remote process, or an entry that names no witness, cannot be judged.
struct Oracle<'a>(&'a [Proc]);

impl Judge for Oracle<'_> {
    fn judge(&self, entry: &Entry) -> Liveness {
        let unknown = |evidence: &str| Liveness::Unknown {
            evidence: evidence.to_string(),
        };
        let Some(name) = entry.witness_name() else {
            return unknown("no witness named");
        };
        match self.0.iter().find(|p| p.witnesses.contains(&name)) {
            None => unknown("no such process"),
            Some(p) if p.hold.remote => unknown("another machine"),
            Some(p) if p.alive => Liveness::Alive {
                evidence: "witness lock held".to_string(),
            },
            Some(_) => Liveness::Dead {
                evidence: "witness lock free".to_string(),
            },
        }
    }
}

/// One locked step as the file store runs it: read (resuming a token counter a Go write
/// dropped), apply the rule, and keep the result only if the rule says it changed something.
/// A rule that changes the document without saying so would lose that change: an error.
fn locked<R>(
    doc: &mut Document,
    procs: &[Proc],
    now: DateTime<Utc>,
    reap: bool,
    rule: impl FnOnce(&mut Document, &Ctx<'_>) -> (R, bool),
) -> Result<R, String> {
    let mut next = doc.clone();
    resume_token_counter(&mut next, now);
    let read = next.clone();
    let oracle = Oracle(procs);
    let ctx = Ctx {
        now,
        judge: &oracle,
        reap,
    };
    let (value, changed) = rule(&mut next, &ctx);
    if changed {
        *doc = next;
    } else {
        ensure!(
            next == read,
            "the rule changed the document but reported no change: the change would be lost"
        );
    }
    Ok(value)
}

/// A new permit records what its entry on file records (token, slot, owner, witness, lease
/// and its end, metadata, detached): that is what it writes back after a foreign write.
fn recorded(doc: &Document, record: &Record) -> Result<(), String> {
    let entry = (doc.holders.iter()).find(|e| e.token == Some(record.token));
    ensure!(
        entry.map(|e| Record::of(e, record.token)).as_ref() == Some(record),
        "the permit records {record:?}, its entry on file is {entry:?}"
    );
    Ok(())
}

/// Runs [`queue::settle`] for process `p` in a locked step; also returns the IDs it reaped.
fn settle(
    doc: &mut Document,
    procs: &[Proc],
    now: DateTime<Utc>,
    p: usize,
    mine: Option<&Mine>,
    refresh: bool,
) -> Result<(Outcome, BTreeSet<Id>), String> {
    let proc = &procs[p];
    let name = proc.id.name();
    let options = proc.options();
    let lease = options.lease;
    locked(doc, procs, now, proc.hold.reap, |doc, ctx| {
        let req = options.request(&name, lease, true);
        let (mut changed, mut removed) = (false, Vec::new());
        let mut new_stamp = |doc: &mut Document| Ok(stamp(take_token(doc)));
        let outcome = queue::settle(
            doc,
            &req,
            mine,
            refresh,
            ctx,
            &mut new_stamp,
            &mut changed,
            &mut removed,
        )
        .expect("tokens without witness files cannot fail");
        let reaped = removed
            .iter()
            .filter_map(|r| Id::parse(&r.entry.id))
            .collect();
        changed |= !removed.is_empty();
        ((outcome, reaped), changed)
    })
}

/// What a store records for a new entry of a process here: its number and an owner; the
/// oracle judges by the number (the witness name), so no witness record is needed.
fn stamp(number: u64) -> Stamp {
    Stamp {
        number,
        owner: doc::Owner::test(),
        witness: None,
    }
}

/// What the Go package writes: capacity and each holder's `id` and `acquired_at` (written
/// with a local offset and nanoseconds, as Go does), nothing else.
fn go_write(doc: &Document, add: Option<(Id, DateTime<Utc>)>, drop: Option<Id>) -> Document {
    let offset = chrono::FixedOffset::east_opt(2 * 3600).unwrap();
    let mut holders: Vec<serde_json::Value> = (doc.holders.iter())
        .filter(|e| drop.is_none_or(|d| e.id != d.name()))
        .map(|e| serde_json::json!({"id": e.id, "acquired_at": e.acquired_at}))
        .collect();
    if let Some((id, at)) = add {
        let at = at
            .with_timezone(&offset)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, false);
        holders.push(serde_json::json!({"id": id.name(), "acquired_at": at}));
    }
    let text = serde_json::json!({"capacity": doc.capacity, "holders": holders}).to_string();
    Document::parse(text.as_bytes()).expect("a Go-written document parses")
}

/// A grant as it happened, for the token order check.
#[derive(Clone, Copy, Debug)]
struct Granted {
    id: Id,
    token: u64,
    /// `Some(priority)` if it was handed over from the queue.
    queued: Option<i32>,
}

pub(super) struct World {
    pub(super) doc: Document,
    now: DateTime<Utc>,
    procs: Vec<Proc>,
    model: Model,
    /// Every number (token or ticket) ever on file.
    issued: BTreeSet<u64>,
    /// The latest grant with a token.
    last_grant: Option<Granted>,
}

impl World {
    pub(super) fn new(capacity: u32) -> World {
        World {
            doc: Document::new(capacity),
            now: "2025-06-01T12:00:00Z".parse().unwrap(),
            procs: Vec::new(),
            model: Model {
                capacity,
                entries: BTreeMap::new(),
                arrivals: 0,
                granted: Vec::new(),
            },
            issued: BTreeSet::new(),
            last_grant: None,
        }
    }

    /// The process an operation on "the process of `id`" acts on: the latest one with `id`
    /// that `fits`, else that of the next ID that has one.
    fn process(&self, id: Id, fits: impl Fn(&Proc) -> bool) -> Option<usize> {
        (0..4).find_map(|k| {
            let id = Id((id.0 + k) % 4);
            (self.procs.iter()).rposition(|p| p.id == id && p.alive && fits(p))
        })
    }

    fn waiting(&self, id: Id) -> Option<(usize, Mine)> {
        let p = self.process(id, |p| matches!(p.state, State::Waiting(_)))?;
        match &self.procs[p].state {
            State::Waiting(mine) => Some((p, Mine::clone(mine))),
            _ => None,
        }
    }

    fn start(&mut self, id: Id, hold: Hold, priority: i32) -> usize {
        self.procs.push(Proc {
            id,
            hold,
            priority,
            state: State::Ended,
            alive: true,
            witnesses: Vec::new(),
        });
        self.procs.len() - 1
    }

    /// Process `p` ends without removing its entry: its witness goes with it.
    fn end(&mut self, p: usize) {
        self.procs[p].state = State::Ended;
        self.procs[p].alive = false;
        if let Some(id) = self.model.of(p) {
            self.model.entries.get_mut(&id).unwrap().dead = true;
        }
    }

    pub(super) fn apply(&mut self, op: &Op) -> Result<(), String> {
        // The token counter a Go write dropped resumes at the clock in microseconds, which
        // must stay above the numbers handed out since: a step takes at most six (a hand-off
        // to each of the at most four IDs on file, a new entry, a token for a grant that lost
        // its own), and a real write of that many entries takes longer than 8 µs.
        self.now += TimeDelta::microseconds(8);
        let now = self.now;
        let holders_before = self.doc.holders.len();
        self.model.granted.clear();
        match *op {
            Op::TryAcquire { id, hold } => self.try_acquire(id, hold)?,
            Op::Acquire { id, hold, priority } => {
                let p = self.start(id, hold, priority);
                let mut expected = self.model.clone();
                let admitted = expected.admit(id, now, hold.reap);
                let (outcome, _) = settle(&mut self.doc, &self.procs, now, p, None, false)?;
                self.model = expected;
                self.first_step(p, admitted, outcome)?;
            }
            Op::Step { id, refresh } => {
                let Some((p, mine)) = self.waiting(id) else {
                    return Ok(());
                };
                self.step(p, &mine, refresh)?;
            }
            Op::Look { id } => {
                let Some((p, mine)) = self.waiting(id) else {
                    return Ok(());
                };
                let got = queue::granted(&self.doc, &mine);
                let expected = self.model.of(p).map(|i| &self.model.entries[&i]);
                let expected = expected.filter(|e| e.queued.is_none() && e.ticket.is_some());
                match (got, expected) {
                    (None, None) => {}
                    (Some(grant), Some(e)) => {
                        ensure!(
                            (Some(grant.token), Some(grant.slot), grant.acquired_at)
                                == (e.token, e.slot, e.at),
                            "the snapshot shows grant {grant:?}, the model {e:?}"
                        );
                        recorded(&self.doc, &grant.record)?;
                        self.procs[p].state = State::holding(grant);
                    }
                    (got, expected) => {
                        return Err(format!("look found {got:?}, the model {expected:?}"));
                    }
                }
            }
            Op::Leave { id, keep_grant } => {
                let Some((p, mine)) = self.waiting(id) else {
                    return Ok(());
                };
                self.leave(p, &mine, keep_grant)?;
            }
            Op::Release { id } => {
                let Some(p) = self.process(id, |p| matches!(p.state, State::Holding(_))) else {
                    return Ok(());
                };
                let State::Holding(ref permit) = self.procs[p].state else {
                    return Ok(());
                };
                let (token, at) = (permit.token, permit.at);
                let name = self.procs[p].id.name();
                let found =
                    locked(
                        &mut self.doc,
                        &self.procs,
                        now,
                        true,
                        |doc, _| match rules::find_own(&doc.holders, token, &name, at) {
                            Some(i) => {
                                doc.holders.remove(i);
                                rules::hand_off(doc, now);
                                (true, true)
                            }
                            None => (false, false),
                        },
                    )?;
                let ours = self.model.of(p).filter(|i| {
                    let e = &self.model.entries[i];
                    e.queued.is_none()
                        && (e.token == Some(token) || e.token.is_none() && e.at == at)
                });
                ensure!(
                    found == ours.is_some(),
                    "release by permit found its entry: {found}; the model: {ours:?}"
                );
                if let Some(i) = ours {
                    self.model.entries.remove(&i);
                    self.model.serve(now);
                }
                self.end(p);
            }
            Op::Renew { id } => {
                let Some(p) = self.process(id, |p| matches!(p.state, State::Holding(_))) else {
                    return Ok(());
                };
                self.renew(p)?;
            }
            Op::ReleaseId { id } => {
                let name = id.name();
                let released = locked(&mut self.doc, &self.procs, now, true, |doc, _| {
                    match doc.holders.iter().position(|e| e.id == name) {
                        Some(i) => {
                            doc.holders.remove(i);
                            rules::hand_off(doc, now);
                            (true, true)
                        }
                        None => (false, false),
                    }
                })?;
                let holds = self
                    .model
                    .entries
                    .get(&id)
                    .is_some_and(|e| e.queued.is_none());
                ensure!(
                    released == holds,
                    "release of {id:?}: {released}, model {holds}"
                );
                if holds {
                    self.model.entries.remove(&id);
                    self.model.serve(now);
                }
            }
            Op::Remove { ref ids } => {
                let names: Vec<String> = ids.iter().map(|i| i.name()).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let removed = locked(&mut self.doc, &self.procs, now, true, |doc, _| {
                    let removed = rules::remove_ids(doc, &names, now);
                    let changed = !removed.is_empty();
                    (removed, changed)
                })?;
                let mut expected: Vec<String> = Vec::new();
                for &id in ids {
                    if self.model.entries.remove(&id).is_some() {
                        expected.push(id.name());
                    }
                }
                if !expected.is_empty() {
                    self.model.serve(now);
                }
                ensure!(
                    removed == expected,
                    "removed {removed:?}, model {expected:?}"
                );
            }
            Op::Reap => {
                let reaped = locked(&mut self.doc, &self.procs, now, true, |doc, ctx| {
                    let removed = rules::reap(doc, ctx);
                    let granted = rules::hand_off(doc, now);
                    let ids: BTreeSet<Id> = removed
                        .iter()
                        .filter_map(|r| Id::parse(&r.entry.id))
                        .collect();
                    let changed = granted > 0 || !removed.is_empty();
                    (ids, changed)
                })?;
                let expected = self.model.reap(now);
                self.model.serve(now);
                ensure!(reaped == expected, "reaped {reaped:?}, model {expected:?}");
            }
            Op::Kill { id } => {
                if let Some(p) = self.process(id, |_| true) {
                    self.end(p);
                }
            }
            Op::SetCapacity { capacity } => {
                locked(&mut self.doc, &self.procs, now, true, |doc, _| {
                    if doc.capacity() == capacity {
                        return ((), false);
                    }
                    doc.capacity = i64::from(capacity);
                    rules::hand_off(doc, now);
                    ((), true)
                })?;
                self.model.capacity = capacity;
                self.model.serve(now);
            }
            Op::Foreign { go } => self.foreign(go),
            Op::Wait { secs } => self.now += TimeDelta::seconds(i64::from(secs)),
        }
        self.check(holders_before)
    }

    fn try_acquire(&mut self, id: Id, hold: Hold) -> Result<(), String> {
        let now = self.now;
        let p = self.start(id, hold, 0);
        let name = id.name();
        let options = self.procs[p].options();
        let result = locked(&mut self.doc, &self.procs, now, hold.reap, |doc, ctx| {
            let (mut changed, mut removed) = (false, Vec::new());
            match rules::admit(doc, &name, ctx, &mut changed, &mut removed) {
                Err(refusal) => (Err(refusal), changed || !removed.is_empty()),
                Ok(()) => {
                    let req = options.request(&name, options.lease, false);
                    let token = take_token(doc);
                    let entry = queue::holder_entry(&req, now, stamp(token));
                    let record = rules::grant(doc, entry, token, now);
                    (Ok(record), true)
                }
            }
        })?;
        let admitted = self.model.admit(id, now, hold.reap);
        match (result, admitted) {
            (Ok(record), Ok(())) => {
                let token = record.token;
                recorded(&self.doc, &record)?;
                self.procs[p].witnesses.push(token);
                self.procs[p].state = State::holding(Grant {
                    token,
                    slot: record.slot.unwrap_or(0),
                    acquired_at: now,
                    record,
                });
                self.model.insert(id, p, hold, token, None, now);
            }
            (Err(got), Err(expected)) if got == expected => self.procs[p].alive = false,
            (got, expected) => {
                return Err(format!("try_acquire gave {got:?}, the model {expected:?}"));
            }
        }
        Ok(())
    }

    /// Checks the outcome of a waiting acquire's first step (or of a later one whose entry
    /// vanished, which starts over) against `admitted`, and records it.
    fn first_step(
        &mut self,
        p: usize,
        admitted: Result<(), Refusal>,
        outcome: Outcome,
    ) -> Result<(), String> {
        let now = self.now;
        let Proc {
            id, hold, priority, ..
        } = self.procs[p];
        match (outcome, admitted) {
            (Outcome::Granted(grant), Ok(())) => {
                ensure!(grant.acquired_at == now, "grant time {grant:?}");
                ensure!(
                    grant.record.ticket.is_none(),
                    "a direct grant has no ticket"
                );
                recorded(&self.doc, &grant.record)?;
                let token = grant.token;
                self.procs[p].witnesses.push(token);
                self.procs[p].state = State::holding(grant);
                self.model.insert(id, p, hold, token, None, now);
            }
            (Outcome::Queued { mine, status }, Err(Refusal::NoCapacity { .. })) => {
                self.procs[p].witnesses.push(mine.ticket);
                self.model
                    .insert(id, p, hold, mine.ticket, Some(priority), now);
                let ahead = self.model.queue().iter().position(|&q| q == id);
                ensure!(
                    Some(status.ahead) == ahead,
                    "queued with {status:?}, the model puts it at {ahead:?}"
                );
                self.procs[p].state = State::Waiting(Box::new(mine));
            }
            (Outcome::Refused(Refusal::AlreadyHeld), Err(Refusal::AlreadyHeld)) => self.end(p),
            (got, expected) => {
                return Err(format!("the acquire gave {got:?}, the model {expected:?}"));
            }
        }
        Ok(())
    }

    /// A later locked step of a waiting acquire: reap every stale entry (if its handle
    /// reaps), serve the queue, then find our grant, stay queued, or start over if our entry
    /// vanished.
    fn step(&mut self, p: usize, mine: &Mine, refresh: bool) -> Result<(), String> {
        let now = self.now;
        let (outcome, reaped) = settle(&mut self.doc, &self.procs, now, p, Some(mine), refresh)?;
        let reap = self.procs[p].hold.reap;
        let stale = if reap {
            self.model.reap(now)
        } else {
            BTreeSet::new()
        };
        ensure!(
            reaped == stale,
            "the step reaped {reaped:?}, the model {stale:?}"
        );
        self.model.serve(now);
        let Some(id) = self.model.recognised(p) else {
            let admitted = self.model.admit(self.procs[p].id, now, reap);
            return self.first_step(p, admitted, outcome);
        };
        let e = self.model.entries.get_mut(&id).unwrap();
        match outcome {
            Outcome::Queued { mine: again, .. } if e.queued.is_some() => {
                ensure!(
                    again == *mine,
                    "a queued waiter's identity changed: {again:?}"
                );
                if refresh {
                    e.expiry = Some(now + waiter_expiry());
                }
            }
            Outcome::Granted(grant) if e.queued.is_none() => {
                ensure!(
                    e.token_is(grant.token)
                        && (Some(grant.slot), grant.acquired_at, grant.record.ticket)
                            == (e.slot, e.at, e.ticket),
                    "granted {grant:?}, the model {e:?}"
                );
                recorded(&self.doc, &grant.record)?;
                self.procs[p].state = State::holding(grant);
            }
            got => return Err(format!("the step gave {got:?}, the model {e:?}")),
        }
        Ok(())
    }

    /// A permit's renewal (or, without a lease, its look) as [`crate::Permit`] makes it, in one
    /// locked step: find the entry by token, or by ID and grant time; write back what the hold
    /// records ([`rules::restore`]); move the lease end to now plus the lease.
    fn renew(&mut self, p: usize) -> Result<(), String> {
        let now = self.now;
        let State::Holding(ref permit) = self.procs[p].state else {
            return Ok(());
        };
        let permit = Permit::clone(permit);
        let name = self.procs[p].id.name();
        let found = locked(&mut self.doc, &self.procs, now, true, |doc, _| {
            let Some(i) = rules::find_own(&doc.holders, permit.token, &name, permit.at) else {
                return (None, false);
            };
            let mut changed = false;
            rules::restore(doc, i, &permit.record, &mut changed);
            let until = rules::lease_end(permit.record.lease_ms, now);
            if until.is_some() {
                doc.holders[i].expires_at = until;
                changed = true;
            }
            (Some(until), changed)
        })?;
        // The model: the permit's entry, found as a release finds it, gets back its token, its
        // slot unless another entry has it meanwhile, and (with a lease) an end a lease from now.
        let ours = self.model.of(p).filter(|i| {
            let e = &self.model.entries[i];
            e.queued.is_none()
                && (e.token == Some(permit.token) || e.token.is_none() && e.at == permit.at)
        });
        let Some(i) = ours else {
            ensure!(
                found.is_none(),
                "the renewal found an entry, the model none"
            );
            // The hold is lost: the permit says so and its process gives up.
            self.end(p);
            return Ok(());
        };
        let Some(until) = found else {
            return Err(format!(
                "the renewal found no entry, the model {:?}",
                self.model.entries[&i]
            ));
        };
        let taken =
            (self.model.entries.iter()).any(|(&j, e)| j != i && e.slot == Some(permit.slot));
        let e = self.model.entries.get_mut(&i).unwrap();
        e.token = Some(permit.token);
        if e.ticket.is_none() {
            e.ticket = permit.record.ticket;
        }
        if e.slot.is_none() && !taken {
            e.slot = Some(permit.slot);
        }
        if let Some(lease) = e.lease() {
            e.expiry = Some(now + lease);
        }
        if let (State::Holding(held), Some(until)) = (&mut self.procs[p].state, until) {
            held.record.expires_at = Some(until);
        }
        Ok(())
    }

    fn leave(&mut self, p: usize, mine: &Mine, keep_grant: bool) -> Result<(), String> {
        let now = self.now;
        let left = locked(&mut self.doc, &self.procs, now, true, |doc, _| {
            let mut changed = false;
            let left = queue::leave(doc, mine, keep_grant, now, &mut changed);
            (left, changed)
        })?;
        let ours = self.model.recognised(p);
        match (left, ours.map(|i| (i, self.model.entries[&i].clone()))) {
            (Left::Gone, None) => self.end(p),
            (Left::Gone, Some((i, e))) if e.queued.is_some() => {
                self.model.entries.remove(&i);
                self.model.serve(now);
                self.end(p);
            }
            (Left::Granted(grant), Some((_, e))) if keep_grant && e.queued.is_none() => {
                ensure!(
                    (Some(grant.token), Some(grant.slot)) == (e.token, e.slot),
                    "kept {grant:?}, the model {e:?}"
                );
                recorded(&self.doc, &grant.record)?;
                self.procs[p].state = State::holding(grant);
            }
            (Left::Released, Some((i, e))) if e.queued.is_none() => {
                self.model.entries.remove(&i);
                self.model.serve(now);
                self.end(p);
            }
            (left, e) => return Err(format!("leave gave {left:?}, the model {e:?}")),
        }
        Ok(())
    }

    fn foreign(&mut self, go: GoOp) {
        let now = self.now;
        let model = &mut self.model;
        let holds = |id: Id| model.entries.get(&id).is_some_and(|e| e.queued.is_none());
        let (add, drop) = match go {
            GoOp::Rewrite => (None, None),
            GoOp::Acquire(id) if !holds(id) && model.holders() < model.capacity as usize => {
                (Some((id, now)), None)
            }
            GoOp::Release(id) if holds(id) => (None, Some(id)),
            // Go refuses and writes nothing.
            GoOp::Acquire(_) | GoOp::Release(_) => return,
        };
        self.doc = go_write(&self.doc, add, drop);
        model.entries.retain(|_, e| e.queued.is_none());
        for e in model.entries.values_mut() {
            (e.token, e.ticket, e.slot, e.expiry) = (None, None, None, None);
            e.fresh = false;
        }
        if let Some(id) = drop {
            model.entries.remove(&id);
        }
        if let Some((id, at)) = add {
            let hold = Hold {
                lease_s: None,
                detached: false,
                remote: true,
                reap: true,
            };
            let entry = M {
                owner: Owner::Go,
                hold,
                token: None,
                fresh: false,
                ticket: None,
                slot: None,
                queued: None,
                at,
                expiry: None,
                dead: false,
            };
            model.entries.insert(id, entry);
        }
    }

    /// The grants the step made that are still on file, in the order it made them, with the
    /// tokens the document gave them (a dead waiter can be handed a slot and reaped again
    /// within one step; that grant is never written). The model learns the fresh tokens of
    /// grants from the queue here: the document must have given each one.
    fn learn_grants(&mut self) -> Result<Vec<Granted>, String> {
        let doc = &self.doc;
        let model = &mut self.model;
        for (id, e) in model.entries.iter_mut().filter(|(_, e)| e.fresh) {
            let on_file = (doc.holders.iter()).find(|h| h.id == id.name());
            let token = on_file.and_then(|h| h.token).ok_or_else(|| {
                format!("{id:?} was handed a slot, on file without a token: {on_file:?}")
            })?;
            (e.token, e.fresh) = (Some(token), false);
        }
        let mut granted = Vec::new();
        for (n, &(id, token, queued)) in model.granted.iter().enumerate() {
            // An ID granted again later in the step: only its last grant is on file.
            if model.granted[n + 1..].iter().any(|g| g.0 == id) {
                continue;
            }
            let Some(e) = model.entries.get(&id).filter(|e| e.queued.is_none()) else {
                continue;
            };
            // A direct grant whose entry is someone else's now is not on file either.
            if token.is_some_and(|t| e.token != Some(t)) {
                continue;
            }
            if let Some(token) = e.token {
                granted.push(Granted { id, token, queued });
            }
        }
        Ok(granted)
    }

    /// The document agrees with the model, and keeps the invariants on its own.
    fn check(&mut self, holders_before: usize) -> Result<(), String> {
        let granted = self.learn_grants()?;
        let doc = &self.doc;
        let model = &self.model;
        let capacity = doc.capacity();
        ensure!(capacity == model.capacity, "capacity {capacity}");

        // Nobody lost or duplicated: each ID once, where the model has it, nothing else.
        let mut seen = BTreeSet::new();
        for e in doc.holders.iter().chain(&doc.waiters) {
            let id = Id::parse(&e.id).ok_or_else(|| format!("unknown ID {:?}", e.id))?;
            ensure!(seen.insert(id), "{id:?} is on file twice");
        }
        let on_file: BTreeSet<Id> = model.entries.keys().copied().collect();
        ensure!(seen == on_file, "on file {seen:?}, the model {on_file:?}");

        // Serving order: the queue on file is the model's, by priority then arrival.
        let queue: Vec<Id> = doc
            .waiters
            .iter()
            .filter_map(|e| Id::parse(&e.id))
            .collect();
        ensure!(
            queue == model.queue(),
            "queue {queue:?}, model {:?}",
            model.queue()
        );

        for e in doc.holders.iter().chain(&doc.waiters) {
            let id = Id::parse(&e.id).unwrap();
            let m = &model.entries[&id];
            let waiting = doc.waiters.iter().any(|w| w.id == e.id);
            ensure!(
                waiting == m.queued.is_some(),
                "{id:?} waiting: {waiting}, {m:?}"
            );
            // An entry that names its witness can be judged and reaped again: a restored one
            // too.
            let lease_ms = m.hold.lease_s.map(|s| u64::from(s) * 1000);
            ensure!(
                e.witness_name().is_none() || (e.owner.is_some() && e.lease_ms == lease_ms),
                "{id:?} on file names a witness but not its owner or lease: {e:?}"
            );
            let priority = m.queued.and_then(|(p, _)| (p != 0).then_some(p));
            ensure!(
                (
                    e.token,
                    e.ticket,
                    e.slot,
                    e.acquired_at,
                    e.expires_at,
                    e.priority,
                    e.detached
                ) == (
                    m.token,
                    m.ticket,
                    m.slot,
                    m.at,
                    m.expiry,
                    priority,
                    m.on_file_detached()
                ),
                "{id:?} on file is {e:?}, the model says {m:?}"
            );
        }

        // Capacity: a step that granted anything leaves at most `capacity` holders; lowering
        // the capacity evicts nobody, and the count never grows past the larger of the two.
        let holders = doc.holders.len();
        if !granted.is_empty() {
            ensure!(
                holders <= capacity as usize,
                "{holders} holders after a grant"
            );
        }
        ensure!(
            holders <= holders_before.max(capacity as usize),
            "{holders} holders, {holders_before} before, capacity {capacity}"
        );

        // No slot idle while someone waits.
        ensure!(
            holders >= capacity as usize || doc.waiters.is_empty(),
            "{holders} of {capacity} slots held while {} wait",
            doc.waiters.len()
        );

        // Slots: unique among holders, in 0..capacity when granted; waiters have none.
        let mut slots = BTreeSet::new();
        for e in &doc.holders {
            if let Some(s) = e.slot {
                ensure!(slots.insert(s), "slot {s} held twice");
            }
        }
        ensure!(
            doc.waiters.iter().all(|e| e.slot.is_none()),
            "a waiter has a slot"
        );
        for &Granted { id, .. } in &granted {
            let slot = model.entries.get(&id).and_then(|e| e.slot);
            ensure!(
                slot.is_some_and(|s| s < capacity),
                "{id:?} granted slot {slot:?} of {capacity}"
            );
        }

        // Numbers (tokens and tickets, from one counter): unique on file, below the counter,
        // each new one above every one before.
        let numbers: Vec<u64> = (doc.holders.iter().chain(&doc.waiters))
            .flat_map(|e| [e.token, e.ticket])
            .flatten()
            .collect();
        let unique: BTreeSet<u64> = numbers.iter().copied().collect();
        ensure!(
            unique.len() == numbers.len(),
            "a number is on file twice: {numbers:?}"
        );
        ensure!(
            doc.waiters.iter().all(|e| e.token.is_none()),
            "a waiter has a token"
        );
        if let (Some(next), Some(&max)) = (doc.next_token, unique.last()) {
            ensure!(next > max, "next_token {next} is not above number {max}");
        }
        for &t in &unique {
            if !self.issued.contains(&t) {
                let last = self.issued.last().copied().unwrap_or(0);
                ensure!(
                    t > last,
                    "new number {t} is not above {last}, handed out before"
                );
                self.issued.insert(t);
            }
        }

        // Fencing: tokens strictly increase in the order slots are granted, whatever the
        // priorities, across steps and within one.
        for &g in &granted {
            if let Some(before) = self.last_grant {
                ensure!(
                    g.token > before.token,
                    "{:?} (queued with priority {:?}) granted token {} after {before:?}",
                    g.id,
                    g.queued,
                    g.token
                );
            }
            self.last_grant = Some(g);
        }
        Ok(())
    }
}
