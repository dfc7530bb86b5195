//! In which order a container swap starts and stops: start-first (the new container starts beside
//! the old one, is validated at its own address, and the old one stops only after that: no
//! downtime behind a proxy, and a failed version costs nothing) or stop-first (the old one stops,
//! then the new one starts: the only way when a container publishes a host port, which two
//! containers cannot hold at once). `auto` decides from what the containers publish and which
//! networks they are on, and the decision always carries its reason. Pure: the facts are handed in.

use serde::{Deserialize, Serialize};

/// The order asked for (`[target] order`, `--order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    StartFirst,
    StopFirst,
    #[default]
    Auto,
}

impl Order {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StartFirst => "start-first",
            Self::StopFirst => "stop-first",
            Self::Auto => "auto",
        }
    }
}

impl std::str::FromStr for Order {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "start-first" => Ok(Self::StartFirst),
            "stop-first" => Ok(Self::StopFirst),
            "auto" => Ok(Self::Auto),
            other => Err(format!("use order '{other}': expected start-first, stop-first or auto")),
        }
    }
}

/// What decides the order, per container of the target.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub name: String,
    /// Host ports it publishes, as `[ip:]port->container/proto`.
    pub published: Vec<String>,
    /// The user-defined networks it is on (not `bridge`, `host`, `none` or `container:x`).
    pub user_networks: Vec<String>,
    /// It shares the host's network stack (`--network host`): every port it listens on is a host port.
    pub host_network: bool,
}

/// The order a swap will use, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// `start-first` or `stop-first`.
    pub order: &'static str,
    pub why: String,
}

impl Decision {
    pub fn start_first(&self) -> bool {
        self.order == "start-first"
    }
}

/// Decides the order for a target's containers. `asked` is where the order came from (for the
/// reason: `--order`, `[target] order`). Start-first asked for on a container that publishes a host
/// port (or uses the host's network) is an error naming the container and the fix.
pub fn decide(order: Order, asked: &str, containers: &[Facts]) -> Result<Decision, String> {
    let publishing = containers.iter().find(|c| !c.published.is_empty() || c.host_network);
    let what_it_holds = |c: &Facts| {
        if c.host_network {
            "uses the host's network (every port it listens on is a host port)".to_string()
        } else {
            format!("publishes host port {}", c.published.join(", "))
        }
    };
    match order {
        Order::StopFirst => Ok(Decision {
            order: "stop-first",
            why: format!("{asked} = stop-first"),
        }),
        Order::StartFirst => match publishing {
            Some(c) => Err(format!(
                "start-first needs two containers to run at once, but {} {}, which only one can hold; \
                 put a proxy in front and publish nothing (README: zero-downtime rollbacks), or use \
                 order = \"stop-first\"",
                c.name,
                what_it_holds(c)
            )),
            None => Ok(Decision {
                order: "start-first",
                why: format!("{asked} = start-first"),
            }),
        },
        Order::Auto => {
            if let Some(c) = publishing {
                return Ok(Decision {
                    order: "stop-first",
                    why: format!(
                        "{} {}: each swap is down for the app's boot; put a proxy in front for zero \
                         downtime (README)",
                        c.name,
                        what_it_holds(c)
                    ),
                });
            }
            if let Some(c) = containers.iter().find(|c| c.user_networks.is_empty()) {
                return Ok(Decision {
                    order: "stop-first",
                    why: format!(
                        "{} is on no user-defined network, so nothing could reach a second container \
                         by its alias; put it and its proxy on one network for zero downtime (README)",
                        c.name
                    ),
                });
            }
            let mut networks: Vec<&str> = containers
                .iter()
                .flat_map(|c| c.user_networks.iter().map(String::as_str))
                .collect();
            networks.sort_unstable();
            networks.dedup();
            Ok(Decision {
                order: "start-first",
                why: format!(
                    "nothing publishes a host port and the target is on network {}: the new container \
                     starts beside the old one, which stops once the new one is healthy",
                    networks.join(", ")
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str, published: &[&str], networks: &[&str]) -> Facts {
        Facts {
            name: name.into(),
            published: published.iter().map(|s| s.to_string()).collect(),
            user_networks: networks.iter().map(|s| s.to_string()).collect(),
            host_network: false,
        }
    }

    #[test]
    fn auto_picks_by_published_ports_and_networks() {
        let cases: &[(&[Facts], &str, &str)] = &[
            (&[facts("web", &[], &["app"])], "start-first", "network app"),
            (
                &[facts("web", &["127.0.0.1:8080->8080/tcp"], &["app"])],
                "stop-first",
                "publishes host port 127.0.0.1:8080->8080/tcp: each swap is down",
            ),
            (&[facts("web", &[], &[])], "stop-first", "on no user-defined network"),
            (
                &[
                    facts("web-1", &[], &["app"]),
                    facts("web-2", &["8081->8080/tcp"], &["app"]),
                ],
                "stop-first",
                "web-2 publishes",
            ),
            (
                &[facts("web-1", &[], &["b", "a"]), facts("web-2", &[], &["a"])],
                "start-first",
                "network a, b",
            ),
        ];
        for (containers, order, why) in cases {
            let d = decide(Order::Auto, "[target] order", containers).unwrap();
            assert_eq!(d.order, *order, "{containers:?}");
            assert!(d.why.contains(why), "{}", d.why);
        }
    }

    #[test]
    fn host_network_counts_as_publishing() {
        let c = Facts {
            host_network: true,
            ..facts("web", &[], &[])
        };
        let d = decide(Order::Auto, "[target] order", std::slice::from_ref(&c)).unwrap();
        assert_eq!(d.order, "stop-first");
        assert!(d.why.contains("host's network"), "{}", d.why);
        assert!(decide(Order::StartFirst, "--order", &[c]).is_err());
    }

    #[test]
    fn start_first_asked_for_a_published_port_is_refused_naming_it() {
        let e = decide(
            Order::StartFirst,
            "--order",
            &[facts("web", &["0.0.0.0:80->8080/tcp"], &["app"])],
        )
        .unwrap_err();
        assert!(e.contains("web publishes host port 0.0.0.0:80->8080/tcp"), "{e}");
        assert!(e.contains("stop-first"), "{e}");
    }

    #[test]
    fn an_explicit_order_says_where_it_came_from() {
        let d = decide(Order::StopFirst, "--order", &[facts("web", &[], &["app"])]).unwrap();
        assert_eq!((d.order, d.why.as_str()), ("stop-first", "--order = stop-first"));
        let d = decide(Order::StartFirst, "[target] order", &[facts("web", &[], &[])]).unwrap();
        assert!(d.start_first());
    }

    #[test]
    fn order_parses_its_three_spellings() {
        for o in [Order::StartFirst, Order::StopFirst, Order::Auto] {
            assert_eq!(o.as_str().parse::<Order>().unwrap(), o);
        }
        assert!("first".parse::<Order>().unwrap_err().contains("start-first"));
    }
}
