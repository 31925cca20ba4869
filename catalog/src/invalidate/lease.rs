//! The catalog's side of the front-ends' cache leases
//! ([`super::Invalidator::Lease`]).
//!
//! The protocol, per front-end `f`. Messages are numbered (`seq`) per
//! front-end; a heartbeat (every [`HEARTBEAT_EVERY`]) is a message that
//! names no new stock.
//! - Names stay *pending* for `f` until `f` answers a message that carries
//!   their latest change: every message carries every pending name, so any
//!   message created after a batch's carries that batch's names.
//! - A message also carries `confirmed`: the highest `seq` whose answer the
//!   catalog has seen (and not below the *floor*, below). `f` records when
//!   it received each message, and a confirmation of message `a` renews its
//!   lease to `received(a) + LEASE`.
//! - A batch `T` whose message to `f` is number `s` is settled for `f` when
//!   `f` answered any message numbered `s` or more (it carried `T`'s names,
//!   so `f` dropped them after `T` was durable), or when `now >= last_reply
//!   + LEASE`, where `last_reply` is the latest time the catalog saw any
//!   answer of `f` (the catalog's start when it has seen none). In the
//!   second case the floor becomes `s`: messages below `s` are never
//!   confirmed again. The catalog answers the leader once `T` is settled
//!   for every front-end, so the wait is at most `LEASE`.
//!
//! Why no lookup after the acknowledgement of `T` shows a quantity from
//! before `T`: suppose `f` serves a stock of `T` from its cache at a time
//! `t` after the acknowledgement. Its lease holds at `t`, so it was renewed
//! by a confirmation of some message `a` with `received(a) + LEASE > t`.
//! If `a >= s`, `a` carried `T`'s names (or an answered message at least
//! `s` did, earlier), so `f` dropped the stock after `T` was durable, and
//! its cache (which refuses fills that raced with a drop) can only hold a
//! later value. If `a < s`, the case that settled `T` was the second: if
//! the confirmation of `a` was sent before that, the catalog had seen the
//! answer of `a`, which `f` sent after receiving it, so `received(a) <=
//! last_reply` and the lease ended by `last_reply + LEASE <=` the time `T`
//! settled `< t`; after that, the floor forbids confirming `a`.
//! The lease starts when `f` receives a message, which is before the
//! catalog sees the answer, so the catalog's bound is never short; a
//! message delayed in the network (a link that heals delivers bytes written
//! during the cut) renews nothing unless the catalog has seen its answer.
//! Both sides measure `LEASE` on their own monotonic clock; the front-end
//! gives up its lease a tenth early, so rates that differ by less than that
//! are safe.
//!
//! A new catalog process is a new *incarnation*: its messages say so and a
//! front-end drops its whole cache on the first one (the old process's
//! pending names are gone). Until a front-end answers, the new catalog
//! treats it as answered at its own start: a lease granted by the previous
//! process was renewed by answers that process saw before it ended, which
//! was before this one could open the database, so it ends by start +
//! LEASE.
//!
//! A leader can also learn a batch's outcome without this answer: from
//! `/applied`, when it lost the answer of an apply (or the catalog
//! restarted in between). Each batch opens a [`super::Round`] before it
//! is applied, and [`super::Invalidator::settled`], called after reading what was
//! applied, waits for the rounds opened before it and, after a restart,
//! for every front-end to have heard from this process or its old lease
//! to have ended.
//!
//! Cost: one round trip to every front-end, in parallel, per batch (a
//! fraction of a millisecond on one host); a front-end that went silent
//! costs each batch up to `LEASE` until its lease has surely run out, then
//! nothing (it is not waited for, and gets only heartbeats, until it
//! answers again).

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use common::types::{Invalidations, LeaseTerms};

const LEASE_MS: u64 = 1000;
/// How long a front-end may serve from its cache after the catalog last
/// renewed it, and so the longest a batch waits for a silent front-end.
/// One second: far above a healthy round trip and a heartbeat period (a
/// busy front-end keeps its cache), and short enough that a cut-off
/// front-end costs at most about a second of extra latency per trade
/// (within the leader's 2 s apply timeout) before it is no longer waited for.
pub const LEASE: Duration = Duration::from_millis(LEASE_MS);
/// Heartbeats: four per lease, so a front-end keeps its lease through up
/// to three lost heartbeats.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(LEASE_MS / 4);
/// Timeout of one message. A batch does not wait for it: its wait ends
/// when the front-end answers or its lease has surely ended, at most
/// `LEASE`, which is why no shorter timeout would shorten a trade. It only
/// bounds how long a request lingers.
pub(super) const REQUEST_TIMEOUT: Duration = LEASE;
/// Pause before a failed message is sent again (as a new message, carrying
/// every pending name) while a batch waits.
pub(super) const RETRY_DELAY: Duration = Duration::from_millis(20);

/// Rounds opened and not yet closed.
#[derive(Default)]
struct Rounds {
    next: u64,
    open: BTreeSet<u64>,
}

/// The catalog's side of the front-ends' leases; see the module docs.
pub struct Leases {
    /// This process among catalog processes: random.
    incarnation: u64,
    client: reqwest::Client,
    peers: Vec<Arc<Peer>>,
    rounds: Mutex<Rounds>,
    round_closed: Notify,
}

struct Peer {
    id: u32,
    url: String,
    state: Mutex<PeerState>,
    /// Woken when an answer arrives.
    answered: Notify,
}

struct PeerState {
    next_seq: u64,
    /// Name -> number of the first message carrying its latest change.
    pending: HashMap<String, u64>,
    highest_answered: Option<u64>,
    /// Messages below this are never confirmed.
    floor: u64,
    /// When the catalog last saw an answer (its start, before any).
    last_reply: Instant,
}

/// One message to one front-end.
struct Message {
    seq: u64,
    names: Vec<String>,
    confirmed: Option<u64>,
}

/// Why a batch stopped waiting for a front-end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Answered,
    Lapsed,
}

impl PeerState {
    /// When the front-end's lease has surely ended, unless it answers.
    fn lapses(&self) -> Instant {
        self.last_reply + LEASE
    }

    /// The next message, carrying `changed` and every pending name.
    fn message(&mut self, changed: &[String]) -> Message {
        let seq = self.next_seq;
        self.next_seq += 1;
        for name in changed {
            self.pending.insert(name.clone(), seq);
        }
        Message {
            seq,
            names: self.pending.keys().cloned().collect(),
            confirmed: self.highest_answered.filter(|a| *a >= self.floor),
        }
    }

    fn answered(&mut self, m: &Message, at: Instant) {
        self.highest_answered = self.highest_answered.max(Some(m.seq));
        self.last_reply = self.last_reply.max(at);
        for name in &m.names {
            if self.pending.get(name).is_some_and(|first| *first <= m.seq) {
                self.pending.remove(name);
            }
        }
    }

    /// Is the batch whose message is `seq` settled for this front-end?
    fn settle(&mut self, seq: u64, now: Instant) -> Option<Settled> {
        if self.highest_answered.is_some_and(|a| a >= seq) {
            return Some(Settled::Answered);
        }
        if now >= self.lapses() {
            self.floor = self.floor.max(seq);
            return Some(Settled::Lapsed);
        }
        None
    }
}

impl Peer {
    fn state(&self) -> MutexGuard<'_, PeerState> {
        // Nothing panics while holding it; a poisoned state is still whole
        // (each update is a few assignments).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `done` holds, checking again on every answer and at the
    /// time the front-end's lease lapses.
    async fn wait(&self, mut done: impl FnMut(&mut PeerState, Instant) -> bool) {
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let lapses = {
                let mut s = self.state();
                if done(&mut s, Instant::now()) {
                    return;
                }
                s.lapses()
            };
            tokio::select! {
                () = answered => {}
                () = tokio::time::sleep_until(lapses) => {}
            }
        }
    }
}

impl Leases {
    pub(super) fn spawn(frontends: Vec<(u32, String)>, token: Option<&str>) -> Arc<Leases> {
        let start = Instant::now();
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let leases = Arc::new(Leases {
            incarnation: hasher.finish(),
            client: common::http::internal_client(REQUEST_TIMEOUT, token),
            peers: frontends
                .into_iter()
                .map(|(id, url)| {
                    Arc::new(Peer {
                        id,
                        url: format!("{url}/invalidations"),
                        state: Mutex::new(PeerState {
                            next_seq: 0,
                            pending: HashMap::new(),
                            highest_answered: None,
                            floor: 0,
                            last_reply: start,
                        }),
                        answered: Notify::new(),
                    })
                })
                .collect(),
            rounds: Mutex::default(),
            round_closed: Notify::new(),
        });
        for peer in &leases.peers {
            tokio::spawn(heartbeats(leases.clone(), peer.clone()));
        }
        leases
    }

    fn rounds(&self) -> MutexGuard<'_, Rounds> {
        // Each update is one insert or remove: a poisoned lock is still whole.
        self.rounds.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn open_round(&self) -> u64 {
        let mut rounds = self.rounds();
        let id = rounds.next;
        rounds.next += 1;
        rounds.open.insert(id);
        id
    }

    pub(super) fn close_round(&self, id: u64) {
        self.rounds().open.remove(&id);
        self.round_closed.notify_waiters();
    }

    /// See [`super::Invalidator::settled`].
    pub(super) async fn settled(&self) {
        let upto = self.rounds().next;
        loop {
            let closed = self.round_closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.rounds().open.range(..upto).next().is_none() {
                break;
            }
            closed.await;
        }
        for peer in &self.peers {
            peer.wait(|s, now| s.highest_answered.is_some() || now >= s.lapses())
                .await;
        }
    }

    /// Sends `names` to every front-end and returns once each is settled.
    pub(super) async fn changed(self: &Arc<Self>, names: &[String]) {
        let started = Instant::now();
        let names: Arc<[String]> = names.into();
        let mut all = JoinSet::new();
        for peer in &self.peers {
            let (leases, peer, names) = (self.clone(), peer.clone(), names.clone());
            all.spawn(async move { (peer.id, leases.deliver(&peer, &names).await) });
        }
        while let Some(done) = all.join_next().await {
            if let Ok((id, Settled::Lapsed)) = done {
                tracing::debug!(frontend = id, "front-end silent; its lease has run out");
            }
        }
        tracing::trace!(waited_us = ?started.elapsed().as_micros(), "invalidations settled");
    }

    /// One batch at one front-end: sends its message (again, as new
    /// messages, after a failure) until the front-end answers one or its
    /// lease has surely ended.
    async fn deliver(&self, peer: &Peer, names: &[String]) -> Settled {
        let first = peer.state().message(names);
        let seq = first.seq;
        if let Some(settled) = peer.state().settle(seq, Instant::now()) {
            return settled; // silent for a lease already: not waited for
        }
        let send = async {
            let mut message = first;
            while !self.send(peer, &message).await {
                tokio::time::sleep(RETRY_DELAY).await;
                message = peer.state().message(&[]);
            }
            // Answered: wait below sees it. Never complete again.
            std::future::pending::<()>().await;
        };
        let mut outcome = Settled::Answered;
        let wait = peer.wait(|s, now| match s.settle(seq, now) {
            Some(settled) => {
                outcome = settled;
                true
            }
            None => false,
        });
        tokio::select! {
            () = send => {}
            () = wait => {}
        }
        outcome
    }

    /// Sends one message; true when the front-end answered it.
    async fn send(&self, peer: &Peer, m: &Message) -> bool {
        let body = Invalidations::of(
            m.names.clone(),
            Some(LeaseTerms {
                catalog: self.incarnation,
                seq: m.seq,
                confirmed: m.confirmed,
                ms: LEASE_MS,
            }),
        );
        let answered = match self.client.post(&peer.url).json(&body).send().await {
            Ok(r) if r.status().is_success() => true,
            Ok(r) => {
                tracing::debug!(frontend = peer.id, status = %r.status(), "invalidation refused");
                false
            }
            Err(e) => {
                tracing::debug!(frontend = peer.id, error = %e, "invalidation failed");
                false
            }
        };
        if answered {
            peer.state().answered(m, Instant::now());
            peer.answered.notify_waiters();
        }
        answered
    }
}

/// A message naming nothing new every [`HEARTBEAT_EVERY`], so the
/// front-end keeps its lease (and gets pending names) between batches.
async fn heartbeats(leases: Arc<Leases>, peer: Arc<Peer>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let message = peer.state().message(&[]);
        // A silent front-end costs one outstanding heartbeat, not a pile.
        let _ = tokio::time::timeout(HEARTBEAT_EVERY, leases.send(&peer, &message)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(start: Instant) -> PeerState {
        PeerState {
            next_seq: 0,
            pending: HashMap::new(),
            highest_answered: None,
            floor: 0,
            last_reply: start,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn pending_names_ride_on_every_message_until_answered() {
        let now = Instant::now();
        let mut s = state(now);
        let a = s.message(&names(&["IBM"]));
        let heartbeat = s.message(&[]);
        assert_eq!(heartbeat.names, names(&["IBM"]));
        // A later change of IBM is not cleared by the answer of an older message.
        let b = s.message(&names(&["IBM"]));
        s.answered(&a, now);
        assert_eq!(s.message(&[]).names, names(&["IBM"]));
        s.answered(&b, now);
        assert!(s.message(&[]).names.is_empty());
    }

    #[test]
    fn a_batch_settles_on_a_later_answer_or_when_the_lease_has_run_out() {
        let start = Instant::now();
        let mut s = state(start);
        let hb = s.message(&[]);
        s.answered(&hb, start);
        let batch = s.message(&names(&["IBM"]));
        assert_eq!(s.settle(batch.seq, start), None);
        // An answer to a message created after the batch's settles it.
        let later = s.message(&[]);
        s.answered(&later, start);
        assert_eq!(s.settle(batch.seq, start), Some(Settled::Answered));

        let lost = s.message(&names(&["MSFT"]));
        assert_eq!(s.settle(lost.seq, start + LEASE / 2), None);
        assert_eq!(s.settle(lost.seq, start + LEASE), Some(Settled::Lapsed));
        // Nothing below the lost batch's message is confirmed any more.
        assert_eq!(s.message(&[]).confirmed, None);
        let next = s.message(&[]);
        s.answered(&next, start + LEASE);
        assert_eq!(s.message(&[]).confirmed, Some(next.seq));
    }

    #[test]
    fn a_new_catalog_counts_its_start_as_the_last_answer() {
        let start = Instant::now();
        let mut s = state(start);
        let m = s.message(&names(&["IBM"]));
        assert_eq!(s.settle(m.seq, start + LEASE / 2), None);
        assert_eq!(s.settle(m.seq, start + LEASE), Some(Settled::Lapsed));
    }
}
