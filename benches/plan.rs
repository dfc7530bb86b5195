//! Benchmark: the retention plan for 5,000 versions (no network), target under 0.5 s, printed
//! beside a baseline measured in the same run: parsing and semver-sorting the same 5,000 tags,
//! the least any semver-aware plan must do.
//!
//! Run: `cargo bench --bench plan`

use std::time::{Duration, Instant};

use backtrack::domain::digest::Digest;
use backtrack::domain::retention::{Facts, ImageEntry, Policy, plan};
use backtrack::domain::version::partition_tags;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let images: Vec<ImageEntry> = (0..5000u64)
        .map(|i| {
            let mut tags = vec![format!("v{}.{}.{}", i / 1000, (i / 50) % 20, i % 50)];
            if i % 97 == 0 {
                tags.push(format!("sha-{i:07x}"));
            }
            if i % 13 == 0 {
                tags[0].push_str("-rc.1");
            }
            ImageEntry {
                digest: Digest::parse(&format!("sha256:{i:064x}")).unwrap(),
                tags,
                pushed: Some(now - chrono::Duration::hours(i as i64)),
                created: None,
                size: Some(10_000_000),
            }
        })
        .collect();
    let policy: Policy = toml::from_str(include_str!("../retention-policies/default.toml")).unwrap();
    let facts = Facts {
        deployed: [images[4000].digest.clone()].into(),
        recent_deployments: images[3990..4000].iter().map(|i| i.digest.clone()).collect(),
        other_targets: Default::default(),
        now,
    };
    let tags: Vec<String> = images.iter().flat_map(|i| i.tags.clone()).collect();

    let runs = 11;
    let mut base = Vec::new();
    let mut planned = Vec::new();
    let mut deleted = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let (v, o) = partition_tags(tags.iter().map(String::as_str));
        std::hint::black_box((v, o));
        base.push(t.elapsed());
        let t = Instant::now();
        let p = plan(&policy, &images, &facts);
        planned.push(t.elapsed());
        deleted = p.deleted;
    }
    let (b, p) = (median(base), median(planned));
    println!("retention plan: 5,000 versions, retention-policies/default.toml, median of {runs}");
    println!(
        "{:<46} {:>10} {:>10} {:>8} {:>10} result",
        "figure", "value", "baseline", "ratio", "target"
    );
    println!(
        "{:<46} {:>9.1}ms {:>10} {:>8} {:>10} (baseline)",
        "parse + semver-sort 5,000 tags",
        b.as_secs_f64() * 1e3,
        "",
        "",
        ""
    );
    println!(
        "{:<46} {:>9.1}ms {:>9.1}ms {:>7.1}x {:>10} {}",
        format!("plan ({deleted} to delete)"),
        p.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        p.as_secs_f64() / b.as_secs_f64(),
        "< 500ms",
        if p < Duration::from_millis(500) { "PASS" } else { "MISS" }
    );
}
