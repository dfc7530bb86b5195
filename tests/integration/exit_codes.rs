//! The README's exit-code table, walked: for every code it lists, a scenario against the real
//! services (Docker Engine, the Distribution registry) that exits with it, so the table stays
//! true. A code added to the README without a scenario here fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::{AppImage, Containers, OwnRegistry, Repo, Run, Test, docker, unique};

/// A bcrypt line for user `ci` (password `ci-secret`), for a registry that wants credentials.
const HTPASSWD: &str = "ci:$2b$12$osA6IjKEnVJDsMQ8YfiRQ.VID6VJ/Dinz2.BT8eZE39p/qUU/z1.O";

/// The codes in README.md's "Exit codes" table.
fn readme_codes() -> BTreeSet<i32> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Exit codes")
        .nth(1)
        .expect("README has an Exit codes section");
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.trim_matches('|').split('|').next()?.trim().parse().ok())
        .collect()
}

/// Asserts the exit code and that stderr says `says`.
fn expect(codes: &mut BTreeMap<i32, Vec<String>>, scenario: &str, run: Run, code: i32, says: &str) {
    assert_eq!(
        run.code, code,
        "{scenario}: want exit {code}\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains(says),
        "{scenario}: stderr lacks {says:?}:\n{}",
        run.stderr
    );
    codes.entry(code).or_default().push(scenario.to_string());
}

#[test]
fn the_readme_exit_code_table_is_true_for_every_code() {
    let mut seen: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let repo = Repo::new("exitcodes");
    repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0").crash(1));
    repo.push(&AppImage::new("v1.2.0"));
    repo.push_synthetic(&["v0.1.0"], "2020-01-01T00:00:00Z");
    let containers = Containers::new();
    // The target keeps a bind mount, so that restoring it can be made to fail (code 7).
    let data = tempfile::tempdir().unwrap();
    let mount = format!("type=bind,src={},dst=/data", data.path().display());
    let (name, port) = crate::harness::run_app(&format!("{}:v1.0.0", repo.image()), &containers, &["--mount", &mount]);
    let target = |health: &str, timeout: &str| {
        format!(
            "[target]\nkind = \"container\"\nname = \"{name}\"\n[health]\nhttp = \"http://127.0.0.1:{port}{health}\"\ntimeout = \"{timeout}\"\n"
        )
    };
    let t = Test::new().repo(&repo, &target("/health", "20s"));

    // 0 ok.
    expect(&mut seen, "versions", t.exec(["versions"]), 0, "");

    // 1 error: validation of what runs now failed.
    let bad_probe = Test::new().repo(&repo, &target("/no-such-page", "2s"));
    expect(
        &mut seen,
        "validate, probe failing",
        bad_probe.exec(["validate"]),
        1,
        "",
    );

    // 2 usage: bad flags, a flag that means nothing for the command, a target that does not
    // exist, prune without a policy, a lifecycle file that does not parse.
    expect(
        &mut seen,
        "unknown flag",
        t.exec(["versions", "--no-such-flag"]),
        2,
        "--no-such-flag",
    );
    expect(
        &mut seen,
        "--output json completions",
        t.exec(["--output", "json", "completions", "bash"]),
        2,
        "--output json does not apply",
    );
    let missing = Test::new().repo(
        &repo,
        &format!("[target]\nkind = \"container\"\nname = \"{}\"\n", unique("bt-nosuch")),
    );
    expect(
        &mut seen,
        "missing target container",
        missing.exec(["deploy", "v1.2.0"]),
        2,
        "no such container",
    );
    expect(
        &mut seen,
        "prune without a policy",
        t.exec(["prune", "--dry-run"]),
        2,
        "--policy FILE",
    );
    let lifecycle = t.dir.path().join("lifecycle.json");
    std::fs::write(&lifecycle, "{\"rules\": [\n  {\"rulePriority\": 1,}\n]}").unwrap();
    expect(
        &mut seen,
        "malformed ECR lifecycle policy",
        t.exec(["policy", "import-ecr", lifecycle.to_str().unwrap()]),
        2,
        &format!("{}:2:22: not an ECR lifecycle policy", lifecycle.display()),
    );

    // 3 registry: unreachable, and unauthorized (the hint names the docker config in use).
    let down = Test::new().config("[registry]\nurl = \"127.0.0.1:1\"\nrepository = \"app\"\n");
    expect(
        &mut seen,
        "registry down",
        down.exec(["versions"]),
        3,
        "reach registry 127.0.0.1:1",
    );
    let own = OwnRegistry::start_with(true, Some(HTPASSWD));
    let locked_out = Test::new().config(&format!("[registry]\nurl = \"{}\"\nrepository = \"app\"\n", own.addr));
    let docker_config = locked_out.dir.path().join("docker-config").join("config.json");
    expect(
        &mut seen,
        "registry wants credentials",
        locked_out.exec(["versions"]),
        3,
        &format!("$DOCKER_CONFIG/config.json, here {}", docker_config.display()),
    );

    // 4 no such version.
    expect(&mut seen, "no such version", t.exec(["deploy", "v9.9.9"]), 4, "");

    // 11 a drill whose candidate would not roll back (here: names nothing in the registry).
    expect(
        &mut seen,
        "drill of a missing version",
        t.exec(["drill", "v9.9.9"]),
        11,
        "",
    );

    // 6 validation failed and the previous version was restored.
    expect(
        &mut seen,
        "crashing version",
        t.exec(["deploy", "v1.1.0"]),
        6,
        "previous version was restored",
    );

    // 5 another backtrack holds the lock.
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(t.target_state_dir(&name).join("lock"))
        .unwrap();
    lock.try_lock().unwrap();
    expect(&mut seen, "lock held", t.exec(["mark-good", "v1.0.0"]), 5, "");
    drop(lock);

    // 8 partly done: one delete of a prune fails (v1.1.0), the other is done (v0.1.0).
    let proxy = FailingDeletes::start(repo.tag_digest("v1.1.0").unwrap());
    let through_proxy = Test::new().config(&format!(
        "[registry]\nurl = \"{}\"\nrepository = \"{}\"\n",
        proxy.addr, repo.name
    ));
    std::fs::write(
        through_proxy.dir.path().join("p.toml"),
        "[protect]\ntags = [\"v1.0.0\"]\n[[keep]]\nnewest = 1\n",
    )
    .unwrap();
    expect(
        &mut seen,
        "prune with a failing delete",
        through_proxy.exec(["prune", "--policy", "p.toml", "--yes"]),
        8,
        "1 of 2 done, 1 failed",
    );

    // 9 the Docker Engine is unreachable.
    let no_engine = Test::new()
        .repo(&repo, &target("/health", "20s"))
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    expect(
        &mut seen,
        "engine unreachable",
        no_engine.exec(["deploy", "v1.2.0"]),
        9,
        "docker engine",
    );

    // 10 the remote host cannot be reached: nothing listens where the ssh:// address points.
    let closed = crate::harness::free_port();
    let no_host = Test::new().config(&format!(
        "[registry]\nurl = \"{}\"\nrepository = \"none\"\n[target]\nkind = \"container\"\nname = \"web\"\nhost = \"ssh://nobody@127.0.0.1:{closed}\"\n",
        crate::harness::registry()
    ));
    expect(
        &mut seen,
        "remote host unreachable",
        no_host.exec(["status"]),
        10,
        "127.0.0.1",
    );
    // ... and a tcp:// engine over TLS whose folder lacks the CA (read before any connection).
    let no_ca = tempfile::tempdir().unwrap();
    let tls = Test::new()
        .config(&format!(
            "[registry]\nurl = \"{}\"\nrepository = \"none\"\n[target]\nkind = \"container\"\nname = \"web\"\nhost = \"tcp://127.0.0.1:{closed}\"\n",
            crate::harness::registry()
        ))
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", no_ca.path().to_str().unwrap());
    expect(
        &mut seen,
        "TLS engine without its CA file",
        tls.exec(["status"]),
        10,
        "ca.pem: no such file",
    );

    // 130 interrupted before anything was changed: Ctrl-C at the picker (after a deploy, so
    // that there is a previous version to offer).
    t.exec(["deploy", "v1.2.0"]).success();
    let (screen, code, _) = t.on_terminal("rollback", &[("[previous", "\x03")]);
    assert_eq!(code, 130, "{screen}");
    seen.entry(130).or_default().push("Ctrl-C at the picker".into());

    // 7 validation failed and restoring failed too: the bind mount's source goes away once the
    // swap has set the running container aside, so neither the new version nor the set-aside
    // container can start (whichever moment the swap is at, the previous one cannot come back).
    let slow_fail = Test::new().repo(&repo, &target("/no-such-page", "8s"));
    let child = slow_fail
        .command()
        .args(["deploy", "v1.0.0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let set_aside = format!("{name}-backtrack-prev");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !docker(&["inspect", &set_aside]).status.success() {
        assert!(Instant::now() < deadline, "the swap never set {name} aside");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_dir_all(data.path()).unwrap();
    let out = child.wait_with_output().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    };
    expect(&mut seen, "restore fails", run, 7, "a person must act");
    docker(&["rm", "-f", &set_aside]);

    let covered: BTreeSet<i32> = seen.keys().copied().collect();
    assert_eq!(covered, readme_codes(), "README codes vs scenarios: {seen:#?}");
}

/// An HTTP proxy in front of the real registry that answers every DELETE of one digest with a
/// server error (a fault the registry will not produce on demand) and forwards the rest.
struct FailingDeletes {
    addr: String,
}

impl FailingDeletes {
    fn start(bad_digest: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let bad = bad_digest.clone();
                std::thread::spawn(move || forward(conn, &bad));
            }
        });
        Self { addr }
    }
}

fn forward(conn: TcpStream, bad_digest: &str) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let (status, reply_headers, body) = if method == "DELETE" && path.ends_with(bad_digest) {
        (
            500,
            vec![("Content-Type".to_string(), "application/json".to_string())],
            br#"{"errors":[{"code":"UNKNOWN","message":"disk on fire"}]}"#.to_vec(),
        )
    } else {
        let client = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut req = client.request(
            method.parse().unwrap(),
            format!("http://{}{path}", crate::harness::registry()),
        );
        for (k, v) in &headers {
            if !["host", "connection", "content-length"].contains(&k.to_ascii_lowercase().as_str()) {
                req = req.header(k, v);
            }
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let kept: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter(|(k, _)| !["connection", "content-length", "transfer-encoding"].contains(&k.as_str()))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        (status, kept, resp.bytes().unwrap().to_vec())
    };
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in reply_headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut conn = conn;
    let _ = conn.write_all(out.as_bytes());
    if method != "HEAD" {
        let _ = conn.write_all(&body);
    }
}
