//! Zero-downtime swaps behind a real reverse proxy (Caddy following Docker's DNS for the alias
//! `web`): start-first rollbacks and rejected deploys lose no request, stop-first on the same setup
//! is down for the app's boot, a kill -9 mid start-first swap is settled, and compose services keep
//! their compose labels. The app takes 2 s to listen, like a real one; a client sends a request
//! every 10 ms through the proxy for the whole operation.

use std::time::Duration;

use crate::harness::{AppImage, Containers, Poller, Proxy, Repo, Test, docker, docker_ok, unique, wait_http};

fn inspect(name: &str, format: &str) -> String {
    docker_ok(&["inspect", "--format", format, name])
}

/// Containers named after the target's temporary ones (`NAME-backtrack-next`, `-prev`).
fn leftovers_of(name: &str) -> Vec<String> {
    docker_ok(&[
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("name={name}-backtrack"),
    ])
    .lines()
    .filter(|l| !l.is_empty())
    .map(str::to_string)
    .collect()
}

/// The app behind the proxy: `docker run` on the proxy's network with the alias `web`, no host
/// port; waits until the proxy serves it.
fn run_behind(proxy: &Proxy, repo: &Repo, tag: &str, containers: &Containers) -> String {
    let name = unique("bt-zd");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &containers.label(),
        "--network",
        &proxy.network,
        "--network-alias",
        "web",
        &format!("{}:{tag}", repo.image()),
    ]);
    let body = wait_http(&proxy.url(), Duration::from_secs(30));
    assert_eq!(body.trim(), tag.trim_start_matches('v'));
    name
}

fn target(repo: &Repo, name: &str, proxy: &Proxy, more: &str) -> Test {
    Test::new().repo(
        repo,
        &format!(
            "[target]\nkind = \"container\"\nname = \"{name}\"\n{more}\n[health]\nhttp = \"{}\"\nport = 8080\ntimeout = \"30s\"\n",
            proxy.url()
        ),
    )
}

#[test]
fn a_start_first_rollback_behind_a_proxy_loses_no_request() {
    let repo = Repo::new("zd-rollback");
    repo.push(&AppImage::new("v1.0.0").boot(2));
    repo.push(&AppImage::new("v1.1.0").boot(2));
    let proxy = Proxy::start();
    let containers = Containers::new();
    let name = run_behind(&proxy, &repo, "v1.0.0", &containers);
    let t = target(&repo, &name, &proxy, "");

    // `auto`: nothing is published and the container is on a user-defined network.
    let plan = t
        .exec(["deploy", "v1.1.0", "--dry-run", "--output", "json"])
        .success()
        .json();
    assert_eq!(plan["order"]["order"], "start-first", "{plan}");
    let why = plan["order"]["why"].as_str().unwrap();
    assert!(why.contains(&proxy.network), "{why}");
    let commands = plan["commands"].to_string();
    assert!(
        commands.contains(&format!("--name {name}-backtrack-next")),
        "{commands}"
    );
    assert!(commands.contains("--network-alias web"), "{commands}");

    for (args, version) in [
        (&["deploy", "v1.1.0", "--yes"][..], "1.1.0"),
        (&["rollback", "--yes"][..], "1.0.0"),
    ] {
        let poller = Poller::start(&proxy.url());
        let run = t.exec(args.iter().copied()).success();
        std::thread::sleep(Duration::from_millis(300));
        let traffic = poller.stop();
        assert!(run.stderr.contains("start-first"), "{}", run.stderr);
        assert!(
            traffic.failures.is_empty(),
            "{args:?}: {} of {} requests failed: {:?}\n{}",
            traffic.failures.len(),
            traffic.requests,
            traffic.failures,
            run.stderr
        );
        assert_eq!(traffic.bodies.last().map(String::as_str), Some(version), "{traffic:?}");
        assert!(traffic.requests > 100, "{traffic:?}");
        // One container under the name, on the alias, nothing left beside it.
        assert_eq!(leftovers_of(&name), Vec::<String>::new());
        let aliases = inspect(
            &name,
            &format!(
                "{{{{json (index .NetworkSettings.Networks \"{}\").Aliases}}}}",
                proxy.network
            ),
        );
        assert!(aliases.contains("\"web\""), "{aliases}");
        assert_eq!(
            inspect(&name, "{{index .Config.Labels \"io.backtrack.version\"}}"),
            version
        );
    }
    let history = t.exec(["history", "--output", "json"]).success().json();
    let last = history["operations"].as_array().unwrap().last().unwrap();
    assert_eq!(
        (&last["op"], &last["result"]),
        (&"rollback".into(), &"ok".into()),
        "{history}"
    );
}

#[test]
fn a_failed_start_first_deploy_behind_a_proxy_loses_no_request() {
    let repo = Repo::new("zd-failed");
    repo.push(&AppImage::new("v1.0.0").boot(2));
    // Takes connections and answers 404 on /health: through the proxy it would fail requests.
    repo.push(&AppImage::new("v1.1.0").health_404());
    repo.push(&AppImage::new("v1.2.0").crash(3));
    let proxy = Proxy::start();
    let containers = Containers::new();
    let name = run_behind(&proxy, &repo, "v1.0.0", &containers);
    let started_at = inspect(&name, "{{.State.StartedAt}}");
    let t = target(&repo, &name, &proxy, "order = \"start-first\"");
    for (version, why) in [("v1.1.0", "HTTP 404"), ("v1.2.0", "exit")] {
        let poller = Poller::start(&proxy.url());
        let run = t.exec(["deploy", version, "--yes"]).code(6);
        let traffic = poller.stop();
        assert!(run.stderr.contains(why), "{version}: {}", run.stderr);
        assert!(run.stderr.contains("kept serving"), "{version}: {}", run.stderr);
        assert!(
            traffic.failures.is_empty(),
            "{version}: {} of {} requests failed: {:?}",
            traffic.failures.len(),
            traffic.requests,
            traffic.failures
        );
        assert_eq!(
            traffic.bodies,
            vec!["1.0.0"],
            "{version}: only the old version answered"
        );
        // The old container was never stopped, and the new one is gone.
        assert_eq!(inspect(&name, "{{.State.StartedAt}}"), started_at);
        assert_eq!(leftovers_of(&name), Vec::<String>::new());
    }
    let history = t.exec(["history", "--output", "json"]).success().json();
    let results: Vec<&str> = history["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, vec!["reverted", "reverted"], "{history}");
}

#[test]
fn stop_first_behind_the_same_proxy_is_down_for_the_boot() {
    let repo = Repo::new("zd-stopfirst");
    repo.push(&AppImage::new("v1.0.0").boot(2));
    repo.push(&AppImage::new("v1.1.0").boot(2));
    let proxy = Proxy::start();
    let containers = Containers::new();
    let name = run_behind(&proxy, &repo, "v1.0.0", &containers);
    let t = target(&repo, &name, &proxy, "");
    let poller = Poller::start(&proxy.url());
    let run = t.exec(["deploy", "v1.1.0", "--yes", "--order", "stop-first"]).success();
    let traffic = poller.stop();
    assert!(
        run.stderr.contains("stop-first: --order = stop-first"),
        "{}",
        run.stderr
    );
    // The proxy holds requests while nothing listens (its retries), then gives up on some: the
    // 2 s boot shows as failed requests or requests that waited for it.
    assert!(
        !traffic.failures.is_empty() || traffic.longest >= Duration::from_millis(1500),
        "stop-first should be down for the boot: {traffic:?}"
    );
}

#[test]
fn a_start_first_swap_killed_mid_way_is_settled_by_the_next_run() {
    let repo = Repo::new("zd-kill9");
    repo.push(&AppImage::new("v1.0.0"));
    // Never listens within the kill: the swap sits in the new container's validation.
    repo.push(&AppImage::new("v1.1.0").boot(60));
    let proxy = Proxy::start();
    let containers = Containers::new();
    let name = run_behind(&proxy, &repo, "v1.0.0", &containers);
    let id_before = inspect(&name, "{{.Id}}");
    let t = target(&repo, &name, &proxy, "");
    let mut child = t
        .command()
        .args(["deploy", "v1.1.0", "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let next = format!("{name}-backtrack-next");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while docker(&["inspect", "--format", "{{.State.Running}}", &next]).stdout != b"true\n" {
        assert!(std::time::Instant::now() < deadline, "{next} never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert_eq!(
        leftovers_of(&name),
        vec![next.clone()],
        "the kill left the new container beside the old"
    );

    let run = t.exec(["deploy", "v1.0.0", "--yes"]).success();
    assert!(
        run.stderr.contains("putting the previous version back"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("already runs"), "{}", run.stdout);
    assert_eq!(inspect(&name, "{{.Id}}"), id_before);
    assert_eq!(leftovers_of(&name), Vec::<String>::new());
    // One container answers to the alias again.
    let on_alias = docker_ok(&[
        "ps",
        "-q",
        "--filter",
        &format!("network={}", proxy.network),
        "--filter",
        &format!("label={}", containers.label()),
    ]);
    assert_eq!(on_alias.lines().count(), 1, "{on_alias}");
    let history = t.exec(["history", "--output", "json"]).success().json();
    let last = history["operations"].as_array().unwrap().last().unwrap();
    assert_eq!(last["result"], "rolled-back-after-crash", "{history}");
}

#[test]
fn a_compose_service_behind_a_proxy_swaps_start_first_one_replica_at_a_time_and_keeps_its_labels() {
    let repo = Repo::new("zd-compose");
    repo.push(&AppImage::new("v1.0.0").boot(2));
    let v11 = repo.push(&AppImage::new("v1.1.0").boot(2));
    let proxy = Proxy::start();
    let compose = crate::harness::ComposeProject::new(
        "btzd",
        &format!(
            "version: \"2.4\"\nservices:\n  web:\n    image: {}:v1.0.0\nnetworks:\n  default:\n    external:\n      name: {}\n",
            repo.image(),
            proxy.network
        ),
        None,
    );
    let project = compose.name.clone();
    compose.run(&["up", "-d", "--scale", "web=2"]);
    wait_http(&proxy.url(), Duration::from_secs(30));
    let t = Test::new().repo(
        &repo,
        &format!(
            "[target]\nkind = \"compose\"\nproject = \"{project}\"\nname = \"web\"\n[health]\nhttp = \"{}\"\nport = 8080\ntimeout = \"30s\"\n",
            proxy.url()
        ),
    );
    let poller = Poller::start(&proxy.url());
    let run = t.exec(["deploy", "v1.1.0", "--yes"]).success();
    let traffic = poller.stop();
    assert!(run.stderr.contains("start-first"), "{}", run.stderr);
    assert!(traffic.failures.is_empty(), "{:?}\n{}", traffic.failures, run.stderr);
    for n in [1, 2] {
        let name = format!("{project}_web_{n}");
        assert_eq!(inspect(&name, "{{.Config.Image}}"), format!("{}@{v11}", repo.image()));
        for (label, value) in [
            ("com.docker.compose.project", project.as_str()),
            ("com.docker.compose.service", "web"),
            ("com.docker.compose.container-number", &n.to_string()),
        ] {
            assert_eq!(
                inspect(&name, &format!("{{{{index .Config.Labels \"{label}\"}}}}")),
                value
            );
        }
        assert_eq!(leftovers_of(&name), Vec::<String>::new());
    }
    // The replicas went one at a time: the first one's old container stopped before the second
    // one's new container started.
    let lines: Vec<&str> = run.stderr.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle}: {}", run.stderr))
    };
    assert!(
        at(&format!("starting {project}_web_1-backtrack-next"))
            < at(&format!("starting {project}_web_2-backtrack-next"))
    );
}

#[test]
fn an_emergency_on_a_start_first_target_with_the_image_present_loses_no_request() {
    let repo = Repo::new("zd-emergency");
    repo.push(&AppImage::new("v1.0.0").boot(2));
    repo.push(&AppImage::new("v1.1.0").boot(2));
    let proxy = Proxy::start();
    let containers = Containers::new();
    let name = run_behind(&proxy, &repo, "v1.0.0", &containers);
    let t = target(&repo, &name, &proxy, "");
    t.exec(["mark-good", "--yes"]).success(); // 1.0.0, kept on this host
    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    let plan = t.exec(["emergency", "--dry-run"]).success();
    assert!(
        plan.stdout.contains(&format!("--name {name}-backtrack-next")),
        "{}",
        plan.stdout
    );
    let poller = Poller::start(&proxy.url());
    let run = t.exec(["emergency", "--yes"]).success();
    let traffic = poller.stop();
    assert!(
        traffic.failures.is_empty(),
        "{} of {} requests failed: {:?}\n{}",
        traffic.failures.len(),
        traffic.requests,
        traffic.failures,
        run.stderr
    );
    assert_eq!(traffic.bodies.last().map(String::as_str), Some("1.0.0"), "{traffic:?}");
    assert!(!inspect(&name, "{{index .Config.Labels \"io.backtrack.emergency\"}}").is_empty());
    assert_eq!(leftovers_of(&name), vec![format!("{name}-backtrack-pre-emergency")]);
}
