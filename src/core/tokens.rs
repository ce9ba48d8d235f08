//! The token counter: one number sequence per semaphore, from which every fencing token (at
//! a grant) and every waiter's ticket (when it joins the queue) is taken, so that tokens
//! strictly increase in grant order and never repeat, across writers that drop the counter
//! (the Go package) and across recovery from a corrupt file.

use chrono::{DateTime, Utc};

use crate::core::doc::{Document, MAX_TOKEN};

/// The next number of the counter (a fencing token, or a waiter's ticket): above the stored
/// counter and above every token and ticket in the file (a Go write drops the counter;
/// numbers that survive still bound it from below).
pub(crate) fn next_token(doc: &Document) -> u64 {
    let seen = doc
        .holders
        .iter()
        .chain(&doc.waiters)
        .flat_map(|e| [e.token, e.ticket])
        .flatten()
        .max()
        .map_or(1, |t| t.saturating_add(1));
    doc.next_token.unwrap_or(1).max(seen).max(1)
}

/// Whether the counter has handed out every number up to [`MAX_TOKEN`]: nothing can be
/// granted or queued any more (a number is never handed out twice, nor one a JSON reader
/// could not represent).
pub(crate) fn tokens_exhausted(doc: &Document) -> bool {
    next_token(doc) > MAX_TOKEN
}

/// Gives a document without a token counter one that is above every token handed out before.
///
/// Only the Go package writes a document without `next_token` (it drops every field it does
/// not know, tokens and tickets included), so nothing on file bounds the numbers we handed
/// out before that write. The counter resumes at `now` in microseconds since 1970, as
/// [`Semaphore::recover`](crate::Semaphore::recover) does: our counters count up from 1 by one
/// per grant or queued waiter, and each write that takes k numbers also writes the k entries
/// that carry them, which takes more than k microseconds, so this stays above every earlier
/// number unless the clock went back. Applied by every store to every document it loads for
/// a step, at the store's `now`.
pub(crate) fn resume_token_counter(doc: &mut Document, now: DateTime<Utc>) {
    if doc.next_token.is_none() {
        let micros = u64::try_from(now.timestamp_micros()).unwrap_or(0);
        doc.next_token = Some(micros.max(1));
    }
}

/// Takes the next number of the counter (a fencing token for a grant, a ticket for a waiter)
/// and advances the counter. The caller checks [`tokens_exhausted`] first.
pub(crate) fn take_token(doc: &mut Document) -> u64 {
    let token = next_token(doc);
    doc.next_token = Some(token.saturating_add(1));
    token
}

/// A fencing-token counter above anything a corrupt file can have handed out: every number
/// after a `token"` key (`token`, `next_token`) or a `ticket"` key, and the clock (`now`, in
/// microseconds since 1970).
pub(crate) fn token_floor(bytes: &[u8], now: DateTime<Utc>) -> u64 {
    let mut max = 0u64;
    for key in [&b"token\""[..], &b"ticket\""[..]] {
        let mut i = 0;
        while let Some(at) = bytes[i..].windows(key.len()).position(|w| w == key) {
            let mut j = i + at + key.len();
            while j < bytes.len() && (bytes[j].is_ascii_whitespace() || bytes[j] == b':') {
                j += 1;
            }
            let digits: String = bytes[j..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|&b| b as char)
                .collect();
            // Numbers above the token range are themselves corruption, not past tokens.
            if let Ok(n) = digits.parse::<u64>()
                && n <= MAX_TOKEN + 1
            {
                max = max.max(n);
            }
            i = j.max(i + at + 1);
        }
    }
    let micros = u64::try_from(now.timestamp_micros()).unwrap_or(0);
    max.saturating_add(1).max(micros).min(MAX_TOKEN + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::doc::Entry;

    fn now() -> DateTime<Utc> {
        "2025-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn token_counter_resumes_above_every_visible_token() {
        // A Go write drops next_token; tokens must still never repeat what is visible.
        let mut doc = Document::new(5);
        doc.next_token = None;
        let mut e = Entry::test("x");
        e.token = Some(41);
        doc.holders.push(e);
        assert_eq!(take_token(&mut doc), 42);
        assert_eq!(take_token(&mut doc), 43);
        doc.next_token = Some(100);
        assert_eq!(take_token(&mut doc), 100);
        // Tickets bound it too: they come from the same counter.
        doc.next_token = None;
        let mut w = Entry::test("w");
        w.ticket = Some(500);
        doc.waiters.push(w);
        assert_eq!(take_token(&mut doc), 501);
    }

    #[test]
    fn token_counter_lost_to_a_go_write_resumes_at_the_clock() {
        // After a Go write drops every token, new tokens must exceed those handed out before.
        let mut doc = Document::new(2);
        for _ in 0..5 {
            take_token(&mut doc);
        }
        doc.next_token = None;
        resume_token_counter(&mut doc, now());
        let micros = u64::try_from(now().timestamp_micros()).unwrap();
        assert_eq!(take_token(&mut doc), micros);
        assert_eq!(take_token(&mut doc), micros + 1);
        // A counter on file is never touched.
        let later = now() + chrono::Duration::days(1);
        resume_token_counter(&mut doc, later);
        assert_eq!(take_token(&mut doc), micros + 2);
    }

    #[test]
    fn token_floor_is_above_tokens_in_corrupt_bytes_and_the_clock() {
        // Recovery must never hand out a fencing token that the corrupt file already used.
        let far = 9_000_000_000_000_000u64;
        let bytes = format!(
            r#"{{"holders":[{{"token": {far}}}], "next_token":{}"#,
            far + 5
        );
        assert_eq!(token_floor(bytes.as_bytes(), now()), far + 6);
        let tickets = format!(
            r#"{{"waiters":[{{"ticket" : {}}}], "next_token":{far}"#,
            far + 9
        );
        assert_eq!(token_floor(tickets.as_bytes(), now()), far + 10);
        let t = token_floor(b"garbage", now());
        assert!(t > 1_700_000_000_000_000, "{t}");
    }
}
