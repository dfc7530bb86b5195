//! The ECR backend against a real ECR API emulator (`moto_server`, started by scripts/test-env
//! --ecr). Moto has no registry data plane and computes digests from layer digests, so images
//! here are manifests with distinct fake layers, put through the API; pulls are covered by the
//! unit test of the authorization hand-off.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_sdk_ecr::types::{ImageIdentifier, ImageTagMutability};

use crate::harness::{Test, unique};

const HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

fn endpoint() -> String {
    std::env::var("BACKTRACK_TEST_ECR_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5001".into())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client() -> aws_sdk_ecr::Client {
    let conf = aws_sdk_ecr::Config::builder()
        .behavior_version(aws_sdk_ecr::config::BehaviorVersion::latest())
        .region(aws_sdk_ecr::config::Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .credentials_provider(aws_sdk_ecr::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    aws_sdk_ecr::Client::from_conf(conf)
}

/// A repository of its own in the emulator.
struct EcrRepo {
    name: String,
}

impl EcrRepo {
    fn new(test: &str, mutability: ImageTagMutability) -> Self {
        let name = format!("bt-test/{}", unique(test));
        let rt = runtime();
        rt.block_on(async {
            client()
                .create_repository()
                .repository_name(&name)
                .image_tag_mutability(mutability)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "no ECR API emulator at {}: run `scripts/test-env --ecr` ({e:?})",
                        endpoint()
                    )
                });
        });
        Self { name }
    }

    /// Puts one image per entry; each gets a distinct fake layer, so a distinct digest.
    fn put(&self, images: &[(&[&str], u64)]) {
        let rt = runtime();
        rt.block_on(async {
            let c = client();
            let futures = images.iter().map(|(tags, seed)| {
                let c = c.clone();
                let name = self.name.clone();
                async move {
                    use sha2::Digest as _;
                    let h = |s: String| format!("sha256:{:x}", sha2::Sha256::digest(s.as_bytes()));
                    let manifest = serde_json::json!({
                        "schemaVersion": 2,
                        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 100, "digest": h(format!("config-{name}-{seed}"))},
                        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 1000 + seed, "digest": h(format!("layer-{name}-{seed}"))}],
                    })
                    .to_string();
                    for tag in *tags {
                        c.put_image().repository_name(&name).image_manifest(&manifest).image_tag(*tag).send().await.unwrap();
                    }
                }
            });
            let mut set = futures::stream::iter(futures).buffer_unordered(8);
            use futures::StreamExt;
            while set.next().await.is_some() {}
        });
    }

    fn tag_digest(&self, tag: &str) -> Option<String> {
        runtime().block_on(async {
            client()
                .describe_images()
                .repository_name(&self.name)
                .image_ids(ImageIdentifier::builder().image_tag(tag).build())
                .send()
                .await
                .ok()
                .and_then(|o| {
                    o.image_details()
                        .first()
                        .and_then(|d| d.image_digest().map(str::to_string))
                })
        })
    }

    fn tags(&self) -> Vec<String> {
        runtime().block_on(async {
            let out = client()
                .describe_images()
                .repository_name(&self.name)
                .send()
                .await
                .unwrap();
            let mut tags: Vec<String> = out
                .image_details()
                .iter()
                .flat_map(|d| d.image_tags().to_vec())
                .collect();
            tags.sort();
            tags.dedup();
            tags
        })
    }

    fn test(&self) -> Test {
        Test::new()
            .config(&format!(
                "[registry]\nurl = \"{HOST}\"\nrepository = \"{}\"\n[registry.ecr]\nendpoint_url = \"{}\"\n",
                self.name,
                endpoint()
            ))
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
    }
}

#[test]
fn ecr_versions_have_the_same_shape_as_oci() {
    let repo = EcrRepo::new("versions", ImageTagMutability::Mutable);
    repo.put(&[
        (&["v1.9.0"], 1),
        (&["v1.10.0", "latest"], 2),
        (&["v2.0.0-rc.1"], 3),
        (&["sha-abc"], 4),
    ]);
    let t = repo.test();
    let run = t.exec(["versions", "--all", "--output", "json"]).success();
    let json = run.json();
    let tags: Vec<&str> = json["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tag"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["v2.0.0-rc.1", "v1.10.0", "v1.9.0", "latest", "sha-abc"]);
    let row = &json["tags"][1];
    let mut keys: Vec<&String> = row.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "created",
            "description",
            "digest",
            "marks",
            "pushed",
            "revision",
            "size",
            "tag",
            "version"
        ]
    );
    assert!(row["pushed"].is_string(), "ECR says when it was pushed: {row}");
    assert!(row["size"].is_u64());
    assert_eq!(
        json["tags"][1]["digest"], json["tags"][3]["digest"],
        "latest and v1.10.0 are one image"
    );
}

#[test]
fn ecr_mark_good_retags_and_prune_deletes_by_tag() {
    let repo = EcrRepo::new("markprune", ImageTagMutability::Mutable);
    repo.put(&[
        (&["v1.0.0"], 1),
        (&["v1.1.0"], 2),
        (&["v1.2.0"], 3),
        (&["v1.3.0"], 4),
        (&["nightly"], 5),
    ]);
    let t = repo.test();
    t.exec(["mark-good", "v1.1.0"]).success();
    assert_eq!(repo.tag_digest("last_known_good"), repo.tag_digest("v1.1.0"));
    // Marking it again is a no-op, not an error ("already exists").
    t.exec(["mark-good", "v1.1.0"]).success();

    std::fs::write(t.dir.path().join("p.toml"), "[[keep]]\nnewest = 1\n").unwrap();
    let plan = t
        .exec(["prune", "--policy", "p.toml", "--dry-run", "--output", "json"])
        .success()
        .json();
    assert_eq!(plan["deleted"], 2, "{plan:#}");
    for d in plan["decisions"].as_array().unwrap() {
        assert!(d["pushed"].is_string(), "ECR's imagePushedAt: {d}");
    }
    let table = t.exec(["prune", "--policy", "p.toml", "--dry-run"]).success();
    let header = table.stdout.lines().next().unwrap_or_default().to_string();
    assert!(header.contains("PUSHED") && !header.contains("CREATED"), "{header}");
    assert!(!table.stdout.contains("garbage-collect"), "{}", table.stdout);
    t.exec(["prune", "--policy", "p.toml", "--yes"]).success();
    assert_eq!(repo.tags(), ["last_known_good", "nightly", "v1.1.0", "v1.3.0"]);
}

#[test]
fn ecr_immutable_tags_give_an_error_that_says_how_to_exempt_last_known_good() {
    let repo = EcrRepo::new("immutable", ImageTagMutability::Immutable);
    repo.put(&[(&["v1.0.0"], 1), (&["v1.1.0"], 2)]);
    let t = repo.test();
    t.exec(["mark-good", "v1.0.0"]).success();
    let run = t.exec(["mark-good", "v1.1.0"]).code(3);
    assert!(
        run.stderr.contains("the repository's tags are immutable"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("IMMUTABLE_WITH_EXCLUSION") && run.stderr.contains("filter=last_known_good"),
        "{}",
        run.stderr
    );
    assert_eq!(repo.tag_digest("last_known_good"), repo.tag_digest("v1.0.0"));
}

#[test]
fn ecr_listing_pages_over_more_than_a_thousand_images() {
    let repo = EcrRepo::new("paging", ImageTagMutability::Mutable);
    let tags: Vec<String> = (0..1100).map(|i| format!("v1.{}.{}", i / 100, i % 100)).collect();
    let images: Vec<(Vec<&str>, u64)> = tags
        .iter()
        .enumerate()
        .map(|(i, t)| (vec![t.as_str()], i as u64))
        .collect();
    let refs: Vec<(&[&str], u64)> = images.iter().map(|(t, s)| (t.as_slice(), *s)).collect();
    repo.put(&refs);
    let json = repo
        .test()
        .exec(["versions", "--limit", "0", "--output", "json"])
        .success()
        .json();
    assert_eq!(json["total_versions"], 1100);
    assert_eq!(json["tags"][0]["tag"], "v1.10.99");
    assert_eq!(json["tags"][1099]["tag"], "v1.0.0");
}

#[test]
fn ecr_errors_name_the_cause() {
    let repo = EcrRepo::new("errors", ImageTagMutability::Mutable);
    let missing = Test::new()
        .config(&format!(
            "[registry]\nurl = \"{HOST}\"\nrepository = \"{}-nope\"\n[registry.ecr]\nendpoint_url = \"{}\"\n",
            repo.name,
            endpoint()
        ))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test");
    let run = missing.exec(["versions"]).code(3);
    assert!(run.stderr.contains("it does not exist"), "{}", run.stderr);

    // No credentials anywhere: no env, no files, and instance metadata pointed at a closed port.
    let no_creds = Test::new()
        .config(&format!(
            "[registry]\nurl = \"{HOST}\"\nrepository = \"{}\"\n[registry.ecr]\nendpoint_url = \"{}\"\n",
            repo.name,
            endpoint()
        ))
        .env("AWS_ACCESS_KEY_ID", "")
        .env("AWS_SECRET_ACCESS_KEY", "")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1");
    let run = no_creds.exec(["versions"]).code(3);
    assert!(run.stderr.contains("no AWS credentials found"), "{}", run.stderr);
    assert!(run.stderr.contains("AWS_PROFILE"), "{}", run.stderr);
}

#[test]
fn an_oci_registry_run_makes_no_aws_call() {
    // Every AWS endpoint, instance metadata included, points at a listener that counts connections.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            if c.is_ok() {
                h.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let repo = crate::harness::Repo::new("noaws");
    repo.push_synthetic(&["v1.0.0"], "2026-01-01T00:00:00Z");
    let url = format!("http://{addr}");
    let t = Test::new()
        .repo(&repo, "")
        .env("AWS_ENDPOINT_URL", &url)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &url)
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &url);
    let start = std::time::Instant::now();
    t.exec(["versions"]).success();
    assert!(start.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(hits.load(Ordering::SeqCst), 0, "an OCI run touched an AWS endpoint");
}

#[test]
fn ecr_doctor_probes_batch_delete_without_deleting_anything() {
    let repo = EcrRepo::new("doctor", ImageTagMutability::Mutable);
    repo.put(&[(&["v1.0.0"], 1)]);
    let before = repo.tag_digest("v1.0.0");
    // last_known_good is not set: that is the one failure.
    let report = repo.test().exec(["doctor", "--output", "json"]).code(1).json();
    let check = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"))
            .clone()
    };
    for ok in ["registry", "credentials", "version tags", "clock"] {
        assert_eq!(check(ok)["mark"], "ok", "{ok}: {report}");
    }
    let deletes = check("deletes");
    assert_eq!(deletes["mark"], "ok", "{deletes}");
    assert!(
        deletes["detail"]
            .as_str()
            .unwrap()
            .contains("ecr:BatchDeleteImage allowed"),
        "{deletes}"
    );
    assert_eq!(check("last known good")["mark"], "fail");
    assert!(before.is_some());
    assert_eq!(repo.tag_digest("v1.0.0"), before, "nothing was deleted");
}
