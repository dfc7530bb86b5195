//! "The same everywhere": every flag of a swap means the same on one host, many hosts and a Swarm
//! service, and where a kind genuinely cannot do a thing the CLI says so, naming the kind and what
//! does it there, before anything is touched: no flag is accepted and then ignored, and no command
//! answers "not built yet". What each flag does is tested per kind where it acts (`fleet.rs`,
//! `swap.rs`, `swarm.rs`, `hooks.rs`); this table guards the refusals.

use crate::harness::{Repo, Test};

/// A target of `kind` that nothing answers for: a refusal must come before any connection.
fn target(repo: &Repo, kind: &str) -> Test {
    let hosts = match kind {
        "fleet" => {
            "kind = \"container\"\nname = \"app\"\nhosts = [\"ssh://nobody@127.0.0.1:1\", \"ssh://nobody@127.0.0.1:2\"]"
        }
        "swarm" => "kind = \"swarm\"\nname = \"app\"\nhost = \"ssh://nobody@127.0.0.1:1\"",
        "swarm with a drain" => "kind = \"swarm\"\nname = \"app\"\nhost = \"ssh://nobody@127.0.0.1:1\"\ndrain = \"5s\"",
        "swarm with a strategy" => {
            "kind = \"swarm\"\nname = \"app\"\nhost = \"ssh://nobody@127.0.0.1:1\"\nstrategy = \"canary\""
        }
        _ => "kind = \"container\"\nname = \"app\"\nhost = \"ssh://nobody@127.0.0.1:1\"",
    };
    Test::new().repo(repo, &format!("[target]\n{hosts}\n"))
}

#[test]
fn flags_and_commands_a_kind_cannot_honour_are_refused_naming_the_kind() {
    let repo = Repo::new("sameeverywhere");
    // (kind, arguments, what the refusal must name)
    let table: &[(&str, &[&str], &[&str])] = &[
        (
            "container",
            &["deploy", "v1.0.0", "--parallelism", "2"],
            &["kind = \"swarm\""],
        ),
        (
            "swarm with a drain",
            &["rollback"],
            &["[target] drain", "kind = \"swarm\""],
        ),
        (
            "fleet",
            &["deploy", "v1.0.0", "--parallelism", "2"],
            &["kind = \"swarm\""],
        ),
        (
            "swarm",
            &["deploy", "v1.0.0", "--strategy", "rolling"],
            &["Swarm", "--parallelism"],
        ),
        ("swarm", &["rollback", "--skip-unreachable"], &["Swarm"]),
        ("swarm", &["emergency", "--skip-unreachable"], &["Swarm"]),
        ("swarm", &["deploy", "v1.0.0", "--no-warm"], &["Swarm", "--no-warm"]),
        (
            "swarm with a strategy",
            &["rollback"],
            &["[target] strategy", "kind = \"swarm\""],
        ),
        ("swarm", &["warm"], &["Swarm", "docker pull"]),
        ("swarm", &["drill"], &["Swarm", "backtrack validate"]),
        ("swarm", &["prune", "--local"], &["Swarm", "docker image prune"]),
    ];
    for (kind, args, names) in table {
        let run = target(&repo, kind).exec(args.iter().copied()).code(2);
        for n in *names {
            assert!(run.stderr.contains(n), "{kind} {args:?}: {n} not named: {}", run.stderr);
        }
        assert!(
            !run.stderr.contains("not built"),
            "{kind} {args:?}: a refusal names the kind and the alternative: {}",
            run.stderr
        );
    }
}

/// `--force` without `--reason` and `--soak` without `--mark-good` are refused for every kind.
#[test]
fn flags_that_need_another_flag_are_refused_for_every_kind() {
    let repo = Repo::new("sameeverywhere2");
    for kind in ["container", "fleet", "swarm"] {
        for args in [
            &["rollback", "v1.0.0", "--force"][..],
            &["deploy", "v1.0.0", "--soak", "1s"][..],
        ] {
            let run = target(&repo, kind).exec(args.iter().copied()).code(2);
            assert!(run.stderr.contains("required"), "{kind} {args:?}: {}", run.stderr);
        }
    }
}
