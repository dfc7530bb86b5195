//! Round trips to a host, counted and timed by phase, for `--verbose`: what a slow rollback
//! spent its time on. Every adapter that waits on a remote host (the SSH connection's Engine API
//! channels, its state shell, its probe forwards) marks each wait on that host's [`Wire`], and the
//! operation names the phase it is in (connect, lock, plan, pull, swap, validate, commit).
//!
//! **A round trip is a wait that began while nothing else was in flight to that host**: waits
//! that overlap cost one, since latency is paid once for them, so the count is what the network's
//! round-trip time multiplies. A new channel opened for a wait that is alone costs one more (the
//! host confirms the channel before the request goes). The SSH handshake itself is not counted
//! here: it is the `connect` phase's time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One host's round trips and time, by phase.
#[derive(Debug)]
pub struct Wire {
    host: String,
    created: Instant,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    /// The phase now, and since when.
    current: usize,
    since: Instant,
    phases: Vec<PhaseStat>,
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
            state: Mutex::new(State {
                in_flight: 0,
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
        let what = what.into();
        if let Ok(mut s) = self.state.lock() {
            let current = s.current;
            if s.in_flight == 0 {
                s.phases[current].round_trips += 1;
            }
            s.phases[current].requests += 1;
            s.in_flight += 1;
        }
        tracing::debug!("{} +{} ms: -> {what}", self.host, self.created.elapsed().as_millis());
        Waiting {
            wire: self.clone(),
            what,
            started: Instant::now(),
        }
    }

    /// A new channel opened on the connection for the only wait in flight: one round trip more.
    pub fn channel_opened(&self) {
        if let Ok(mut s) = self.state.lock()
            && s.in_flight <= 1
        {
            let current = s.current;
            s.phases[current].round_trips += 1;
        }
    }

    /// Every phase so far, in the order first entered, the current one's time up to now.
    /// Phases with neither time nor requests are left out.
    pub fn summary(&self) -> Vec<PhaseStat> {
        let Ok(s) = self.state.lock() else { return Vec::new() };
        let mut phases = s.phases.clone();
        phases[s.current].elapsed += s.since.elapsed();
        phases.retain(|p| p.requests > 0 || p.elapsed >= Duration::from_millis(1));
        phases
    }
}

/// The phases as lines for a person: round trips, requests and time of each, and the total.
/// `connect` has no round trips of its own: it is the SSH login.
pub fn render(host: &str, phases: &[PhaseStat]) -> String {
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
    let trips: u32 = phases.iter().map(|p| p.round_trips).sum();
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
    what: String,
    started: Instant,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Ok(mut s) = self.wire.state.lock() {
            s.in_flight = s.in_flight.saturating_sub(1);
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
    fn overlapping_waits_cost_one_round_trip_and_sequential_ones_one_each() {
        let wire = Wire::new("h");
        wire.phase("plan");
        {
            let _a = wire.wait("a");
            let _b = wire.wait("b");
        }
        let c = wire.wait("c");
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
    fn a_channel_opened_beside_other_waits_costs_nothing_more() {
        let wire = Wire::new("h");
        wire.phase("plan");
        let _a = wire.wait("a");
        let _b = wire.wait("b");
        wire.channel_opened();
        drop((_a, _b));
        let s = wire.summary();
        assert_eq!(s.iter().find(|p| p.phase == "plan").unwrap().round_trips, 1);
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
        let text = render("ssh://h", &phases);
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
