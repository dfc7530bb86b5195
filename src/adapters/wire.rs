//! Round trips to a host, counted and timed by phase, for `--verbose`: what a slow rollback
//! spent its time on. Every adapter that waits on a remote host (the SSH connection's Engine API
//! channels, its state shell, its probe forwards) marks each wait on that host's [`Wire`], and the
//! operation names the phase it is in (connect, lock, plan, pull, swap, validate, commit).
//!
//! **A phase's round trips are its longest chain of waits one after another**: waits that overlap
//! pay latency once, so the count is what the network's round-trip time multiplies. A wait that
//! opened a new channel weighs one more (the host confirms a channel before its first byte goes),
//! unless it opened before the connection's own session first answered: those channels are
//! confirmed in the same flight as the session's, which the login covers. The SSH handshake
//! itself is not counted here: it is the `connect` phase's time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A round trip at least this long makes it worth starting a program on the host (the swap's
/// gate, a `curl` probe) to save one: on a LAN the program costs more than the trip.
pub const FAR: Duration = Duration::from_millis(3);

/// One host's round trips and time, by phase.
#[derive(Debug)]
pub struct Wire {
    host: String,
    created: Instant,
    state: Mutex<State>,
    /// The connection's own session has answered (its first line came).
    session_up: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct State {
    /// The phase now, and since when.
    current: usize,
    since: Instant,
    phases: Vec<PhaseStat>,
    /// Waits under way: id, start, round trips so far (1, or 2 with a channel opened), and the
    /// phase that sent it.
    open: Vec<(u64, Instant, u32, usize)>,
    next_id: u64,
    /// Waits ended: the phase that sent it, start, end, round trips.
    done: Vec<(usize, Instant, Instant, u32)>,
}

/// What one phase cost on one host.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PhaseStat {
    pub phase: &'static str,
    pub round_trips: u32,
    /// Requests sent (overlapping ones share round trips).
    pub requests: u32,
    #[serde(serialize_with = "millis")]
    pub elapsed: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Wire {
    /// A host's wire, in phase `connect` from now.
    pub fn new(host: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            host: host.into(),
            created: Instant::now(),
            session_up: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(State {
                open: Vec::new(),
                next_id: 0,
                done: Vec::new(),
                current: 0,
                since: Instant::now(),
                phases: vec![PhaseStat {
                    phase: "connect",
                    round_trips: 0,
                    requests: 0,
                    elapsed: Duration::ZERO,
                }],
            }),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// From now on, waits count toward `phase` (a phase entered again adds to what it had).
    pub fn phase(&self, phase: &'static str) {
        let Ok(mut s) = self.state.lock() else { return };
        let now = Instant::now();
        let (current, since) = (s.current, s.since);
        s.phases[current].elapsed += now - since;
        s.since = now;
        s.current = match s.phases.iter().position(|p| p.phase == phase) {
            Some(i) => i,
            None => {
                s.phases.push(PhaseStat {
                    phase,
                    round_trips: 0,
                    requests: 0,
                    elapsed: Duration::ZERO,
                });
                s.phases.len() - 1
            }
        };
    }

    /// Marks a wait on the host (`what`, for the debug log) until the guard drops.
    pub fn wait(self: &Arc<Self>, what: impl Into<String>) -> Waiting {
        self.wait_n(what, 1)
    }

    /// Marks a wait on `requests` requests sent at once (a pipeline) until the guard drops.
    pub fn wait_n(self: &Arc<Self>, what: impl Into<String>, requests: usize) -> Waiting {
        let what = what.into();
        let mut id = 0;
        if let Ok(mut s) = self.state.lock() {
            let current = s.current;
            s.phases[current].requests += u32::try_from(requests).unwrap_or(u32::MAX);
            id = s.next_id;
            s.next_id += 1;
            s.open.push((id, Instant::now(), 1, current));
        }
        tracing::debug!("{} +{} ms: -> {what}", self.host, self.created.elapsed().as_millis());
        Waiting {
            wire: self.clone(),
            id,
            what,
            started: Instant::now(),
        }
    }

    /// The connection's own session has answered: channels opened from now on cost a round trip
    /// of their own.
    pub fn session_started(&self) {
        self.session_up.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A new channel opened on the connection, for the wait begun last: one round trip more, once
    /// the session is up (before, it opens beside the session's own, in the login's flight).
    pub fn channel_opened(&self) {
        if !self.session_up.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let Ok(mut s) = self.state.lock()
            && let Some(last) = s.open.last_mut()
        {
            last.2 = 2;
        }
    }

    /// The quickest wait on the host so far: about one round trip (none yet: `None`).
    pub fn quickest(&self) -> Option<Duration> {
        let s = self.state.lock().ok()?;
        s.done.iter().map(|w| w.2 - w.1).min()
    }

    /// Whether the host is far enough that a round trip costs more than starting a program
    /// there (`FAR`): unknown counts as far.
    pub fn far(&self) -> bool {
        self.quickest().is_none_or(|d| d >= FAR)
    }

    /// The round trips of the whole run on this host: its longest chain of waits one after
    /// another, whatever phase sent them (a wait sent in one phase and answered in the next is
    /// counted once, where the phases' own counts would count it in each chain it ends).
    pub fn round_trips(&self) -> u32 {
        let Ok(s) = self.state.lock() else { return 0 };
        longest_chain(s.done.iter().map(|w| (w.1, w.2, w.3)).collect())
    }

    /// Every phase so far, in the order first entered, the current one's time up to now; a
    /// wait counts in the phase that sent it. Phases with neither time nor requests are left out.
    pub fn summary(&self) -> Vec<PhaseStat> {
        let Ok(s) = self.state.lock() else { return Vec::new() };
        let mut phases = s.phases.clone();
        for (i, p) in phases.iter_mut().enumerate() {
            let waits: Vec<(Instant, Instant, u32)> =
                s.done.iter().filter(|w| w.0 == i).map(|w| (w.1, w.2, w.3)).collect();
            p.round_trips = longest_chain(waits);
        }
        phases[s.current].elapsed += s.since.elapsed();
        phases.retain(|p| p.requests > 0 || p.elapsed >= Duration::from_millis(1));
        phases
    }
}

/// The heaviest chain of waits each starting after the one before ended (weighted interval
/// scheduling): how many round trips the phase spent one after another.
fn longest_chain(mut waits: Vec<(Instant, Instant, u32)>) -> u32 {
    waits.sort_by_key(|w| w.1);
    let mut best: Vec<u32> = Vec::with_capacity(waits.len());
    for i in 0..waits.len() {
        let before = (0..i)
            .filter(|&j| waits[j].1 <= waits[i].0)
            .map(|j| best[j])
            .max()
            .unwrap_or(0);
        let with = before + waits[i].2;
        let without = if i > 0 { best[i - 1] } else { 0 };
        best.push(with.max(without));
    }
    best.last().copied().unwrap_or(0)
}

/// The phases as lines for a person: round trips, requests and time of each, and the total
/// (`trips`: the run's longest chain, `Wire::round_trips`). `connect` has no round trips of its
/// own: it is the SSH login (reads sent as its session starts count where they chain).
pub fn render(host: &str, phases: &[PhaseStat], trips: u32) -> String {
    let mut out = format!("round trips to {host}, by phase:");
    let secs = |d: Duration| format!("{:.3} s", d.as_secs_f64());
    for p in phases {
        let trips = if p.phase == "connect" && p.requests == 0 {
            "login".to_string()
        } else {
            p.round_trips.to_string()
        };
        out.push_str(&format!(
            "\n  {:<9} {:>5}  {:>9}  ({} request{})",
            p.phase,
            trips,
            secs(p.elapsed),
            p.requests,
            if p.requests == 1 { "" } else { "s" }
        ));
    }
    let time: Duration = phases.iter().map(|p| p.elapsed).sum();
    let after: Duration = phases.iter().filter(|p| p.phase != "connect").map(|p| p.elapsed).sum();
    out.push_str(&format!(
        "\n  {:<9} {:>5}  {:>9}  ({} after the login)",
        "total",
        trips,
        secs(time),
        secs(after)
    ));
    out
}

/// A wait on the host, ended on drop.
pub struct Waiting {
    wire: Arc<Wire>,
    id: u64,
    what: String,
    started: Instant,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Ok(mut s) = self.wire.state.lock()
            && let Some(i) = s.open.iter().position(|w| w.0 == self.id)
        {
            let (_, start, trips, phase) = s.open.remove(i);
            s.done.push((phase, start, Instant::now(), trips));
        }
        tracing::debug!(
            "{} +{} ms: <- {} ({} ms)",
            self.wire.host,
            self.wire.created.elapsed().as_millis(),
            self.what,
            self.started.elapsed().as_millis()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_opened_beside_the_session_s_own_is_part_of_the_login() {
        let wire = Wire::new("h");
        wire.phase("lock");
        {
            let _lock = wire.wait("take the lock");
            let _read = wire.wait("read ahead");
            wire.channel_opened();
        }
        wire.session_started();
        wire.phase("swap");
        {
            let _calls = wire.wait("calls");
            wire.channel_opened();
        }
        let s = wire.summary();
        assert_eq!(s.iter().find(|p| p.phase == "lock").unwrap().round_trips, 1);
        assert_eq!(s.iter().find(|p| p.phase == "swap").unwrap().round_trips, 2);
    }

    #[test]
    fn overlapping_waits_cost_one_round_trip_and_sequential_ones_one_each() {
        let wire = Wire::new("h");
        wire.session_started();
        wire.phase("plan");
        let pause = || std::thread::sleep(Duration::from_millis(2));
        {
            let _a = wire.wait("a");
            let _b = wire.wait("b");
            pause();
        }
        pause();
        let c = wire.wait("c");
        pause();
        drop(c);
        wire.phase("swap");
        {
            let _d = wire.wait("d");
            wire.channel_opened();
        }
        let s = wire.summary();
        let plan = s.iter().find(|p| p.phase == "plan").unwrap();
        assert_eq!((plan.round_trips, plan.requests), (2, 3));
        let swap = s.iter().find(|p| p.phase == "swap").unwrap();
        assert_eq!((swap.round_trips, swap.requests), (2, 1));
    }

    #[test]
    fn a_channel_opened_weighs_on_its_own_wait_and_a_chain_counts_once() {
        let wire = Wire::new("h");
        wire.session_started();
        wire.phase("validate");
        let pause = || std::thread::sleep(Duration::from_millis(2));
        // The first look (one request) and the probe (a channel, then its request) at once, then
        // a second look after the first: the probe's two round trips are the chain.
        let probe = wire.wait("probe");
        wire.channel_opened();
        let look = wire.wait("look");
        pause();
        drop(look);
        pause();
        let again = wire.wait("look again");
        pause();
        drop(again);
        drop(probe);
        let s = wire.summary();
        assert_eq!(s.iter().find(|p| p.phase == "validate").unwrap().round_trips, 2);
    }

    #[test]
    fn a_host_is_far_when_its_quickest_wait_is_a_costly_round_trip() {
        let wire = Wire::new("h");
        assert!(wire.far(), "unknown counts as far");
        drop(wire.wait("quick"));
        assert!(!wire.far(), "{:?}", wire.quickest());
        let slow = Wire::new("h");
        let w = slow.wait("slow");
        std::thread::sleep(FAR + Duration::from_millis(1));
        drop(w);
        assert!(slow.far());
    }

    #[test]
    fn the_longest_chain_weighs_sequential_waits() {
        let t = Instant::now();
        let at = |ms| t + Duration::from_millis(ms);
        // a [0,10] then c [10,20] (chain 2) beside b [0,15] weighing 2: the chain of 2 either way;
        // d [20,30] after c makes 3.
        let waits = vec![
            (at(0), at(10), 1),
            (at(0), at(15), 2),
            (at(10), at(20), 1),
            (at(20), at(30), 1),
        ];
        assert_eq!(longest_chain(waits), 3);
        assert_eq!(longest_chain(vec![(at(0), at(15), 2), (at(15), at(16), 1)]), 3);
        assert_eq!(longest_chain(Vec::new()), 0);
    }

    #[test]
    fn the_rendering_lists_each_phase_and_the_total() {
        let ms = Duration::from_millis;
        let phases = [
            PhaseStat {
                phase: "connect",
                round_trips: 0,
                requests: 0,
                elapsed: ms(300),
            },
            PhaseStat {
                phase: "lock",
                round_trips: 1,
                requests: 2,
                elapsed: ms(20),
            },
            PhaseStat {
                phase: "swap",
                round_trips: 2,
                requests: 1,
                elapsed: ms(180),
            },
        ];
        let text = render("ssh://h", &phases, 3);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "round trips to ssh://h, by phase:");
        assert!(
            lines[1].contains("connect") && lines[1].contains("login") && lines[1].contains("0.300 s"),
            "{text}"
        );
        assert!(
            lines[2].contains("lock") && lines[2].contains(" 1 ") && lines[2].contains("(2 requests)"),
            "{text}"
        );
        assert!(lines[3].contains("(1 request)"), "{text}");
        assert!(
            lines[4].contains("total") && lines[4].contains(" 3 ") && lines[4].contains("0.500 s"),
            "{text}"
        );
        assert!(lines[4].contains("(0.200 s after the login)"), "{text}");
    }

    #[test]
    fn a_wait_counts_in_the_phase_that_sent_it_and_once_in_the_total() {
        let wire = Wire::new("h");
        wire.session_started();
        let pause = || std::thread::sleep(Duration::from_millis(2));
        wire.phase("lock");
        let read = wire.wait("read ahead");
        let lock = wire.wait("take the lock");
        pause();
        drop(lock);
        wire.phase("plan");
        pause();
        drop(read);
        wire.phase("swap");
        drop(wire.wait("calls"));
        let s = wire.summary();
        let trips = |phase: &str| s.iter().find(|p| p.phase == phase).map(|p| p.round_trips);
        assert_eq!(
            (trips("lock"), trips("plan"), trips("swap")),
            (Some(1), Some(0), Some(1))
        );
        assert_eq!(wire.round_trips(), 2, "the read and the lock overlap, then the calls");
    }

    #[test]
    fn a_phase_entered_again_adds_to_what_it_had() {
        let wire = Wire::new("h");
        wire.phase("plan");
        drop(wire.wait("a"));
        wire.phase("pull");
        wire.phase("plan");
        drop(wire.wait("b"));
        let s = wire.summary();
        let names: Vec<_> = s.iter().map(|p| p.phase).collect();
        assert_eq!(names.iter().filter(|n| **n == "plan").count(), 1, "{names:?}");
        assert_eq!(s.iter().find(|p| p.phase == "plan").unwrap().round_trips, 2);
    }
}
