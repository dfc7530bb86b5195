//! Reads sent ahead to an engine across a network, so a remote rollback's plan waits on no round
//! trip of its own: the target's containers (and the backups a swap leaves) and the local images
//! of its repositories go out as the SSH connection's session starts, beside the lock request and
//! the engine's `/_ping`, and the plan finds the answers here. Plus what never changes: the
//! config of an image by its content address, kept on disk between runs.
//!
//! **An answer read ahead stands only until something changes on the engine**: every call that
//! changes a container forgets the containers, every pull or image removal the image list, and a
//! lock whose journal was written moments before forgets both (another run may have changed the
//! target between these reads and the lock, `Engine::forget_ahead`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bollard::models::{ContainerInspectResponse, ImageConfig};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::BACKUP_SUFFIX;
use super::pipeline::enc;

/// What to read ahead: the target's container names (each read with its backup), and the
/// repositories (`host/path`) whose local images are listed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadAhead {
    pub containers: Vec<String>,
    pub repositories: Vec<String>,
}

impl ReadAhead {
    /// The paths to GET (relative to the API's base), and what each answers for.
    pub(crate) fn requests(&self) -> Vec<(Key, String)> {
        let mut out = Vec::new();
        for name in &self.containers {
            for n in [name.clone(), format!("{name}{BACKUP_SUFFIX}")] {
                out.push((Key::Container(n.clone()), format!("/containers/{}/json", enc(&n))));
            }
        }
        if !self.repositories.is_empty() {
            let filters = serde_json::json!({ "reference": self.repositories }).to_string();
            out.push((Key::Images, format!("/images/json?filters={}", enc(&filters))));
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.repositories.is_empty()
    }
}

/// What one read ahead answers for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Container(String),
    Images,
}

/// One answer read ahead: a container (`None`: there is none by that name) or the image list.
/// The outer `None` of [`Pending`]: no usable answer (asked again when needed).
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Container(Option<Box<ContainerInspectResponse>>),
    Images(Vec<Listed>),
}

/// A local image as the list names it: only what presence needs.
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct Listed {
    #[serde(rename = "RepoDigests", default)]
    repo_digests: Option<Vec<String>>,
}

/// An answer still on its way, or come.
pub(crate) type Pending = Shared<BoxFuture<'static, Option<Answer>>>;

/// The answers read ahead for one engine, until forgotten.
#[derive(Default)]
pub(crate) struct Early {
    answers: Mutex<HashMap<Key, Pending>>,
    /// The repositories the image list holds.
    repositories: Vec<String>,
}

impl Early {
    pub(crate) fn new(answers: HashMap<Key, Pending>, repositories: Vec<String>) -> Self {
        Self {
            answers: Mutex::new(answers),
            repositories,
        }
    }

    fn get(&self, key: &Key) -> Option<Pending> {
        self.answers.lock().ok()?.get(key).cloned()
    }

    /// The container `name` as read ahead: `Some(None)` when there was none; `None` when it was
    /// not read ahead (or is forgotten, or the read failed).
    pub(crate) async fn container(&self, name: &str) -> Option<Option<ContainerInspectResponse>> {
        match self.get(&Key::Container(name.to_string()))?.await? {
            Answer::Container(c) => Some(c.map(|c| *c)),
            Answer::Images(_) => None,
        }
    }

    /// Whether `reference` (`repo@sha256:…`) is a local image, from the list read ahead; `None`
    /// when that list cannot say (not read, forgotten, failed, another repository, or not a
    /// reference by digest).
    pub(crate) async fn present(&self, reference: &str) -> Option<bool> {
        let (repo, digest) = reference.split_once('@')?;
        if !digest.starts_with("sha256:") || !self.repositories.iter().any(|r| r == repo) {
            return None;
        }
        match self.get(&Key::Images)?.await? {
            Answer::Images(list) => Some(
                list.iter()
                    .any(|i| i.repo_digests.iter().flatten().any(|d| d == reference)),
            ),
            Answer::Container(_) => None,
        }
    }

    pub(crate) fn forget_containers(&self) {
        if let Ok(mut a) = self.answers.lock() {
            a.retain(|k, _| *k == Key::Images);
        }
    }

    pub(crate) fn forget_images(&self) {
        if let Ok(mut a) = self.answers.lock() {
            a.remove(&Key::Images);
        }
    }
}

/// Parses one answer read ahead from its status and body.
pub(crate) fn answer(key: &Key, status: u16, body: &[u8]) -> Option<Answer> {
    match (key, status) {
        (Key::Container(_), 200) => serde_json::from_slice(body)
            .ok()
            .map(|c| Answer::Container(Some(Box::new(c)))),
        (Key::Container(_), 404) => Some(Answer::Container(None)),
        (Key::Images, 200) => serde_json::from_slice(body).ok().map(Answer::Images),
        _ => None,
    }
}

/// Starts every read of `ahead` with `get` (a GET of a path: its status and body), each on the
/// runtime at once, and hands back their answers to come.
pub(crate) fn start<F>(ahead: &ReadAhead, get: F) -> HashMap<Key, Pending>
where
    F: Fn(String) -> BoxFuture<'static, Option<(u16, Vec<u8>)>>,
{
    ahead
        .requests()
        .into_iter()
        .map(|(key, path)| {
            let asked = get(path);
            let k = key.clone();
            let task = tokio::spawn(async move {
                let (status, body) = asked.await?;
                answer(&k, status, &body)
            });
            let pending: Pending = async move { task.await.ok().flatten() }.boxed().shared();
            (key, pending)
        })
        .collect()
}

/// Image configs by content address, on disk between runs: an image id names its config's
/// bytes, so what is kept can never be out of date. Only ids of the form `sha256:<64 hex>`.
#[derive(Debug, Clone)]
pub struct ConfigCache {
    dir: PathBuf,
}

impl ConfigCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, id: &str) -> Option<PathBuf> {
        let hex = id.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| self.dir.join(format!("{hex}.json")))
    }

    pub fn get(&self, id: &str) -> Option<ImageConfig> {
        let bytes = std::fs::read(self.path(id)?).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Keeps `config` under `id` (written whole: a temporary file renamed into place).
    pub fn put(&self, id: &str, config: &ImageConfig) {
        let Some(path) = self.path(id) else { return };
        if path.exists() || std::fs::create_dir_all(&self.dir).is_err() {
            return;
        }
        let Ok(bytes) = serde_json::to_vec(config) else { return };
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ahead(containers: &[&str], repositories: &[&str]) -> ReadAhead {
        ReadAhead {
            containers: containers.iter().map(|s| s.to_string()).collect(),
            repositories: repositories.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn each_container_is_read_with_its_backup_and_the_repositories_in_one_list() {
        let reqs = ahead(
            &["web", "worker"],
            &["127.0.0.1:5000/shop/web", "127.0.0.1:5000/shop/worker"],
        )
        .requests();
        let paths: Vec<&str> = reqs.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(
            paths[..4],
            [
                "/containers/web/json",
                "/containers/web-backtrack-prev/json",
                "/containers/worker/json",
                "/containers/worker-backtrack-prev/json"
            ]
        );
        assert_eq!(reqs[4].0, Key::Images);
        assert!(
            reqs[4]
                .1
                .starts_with("/images/json?filters=%7B%22reference%22%3A%5B%22127.0.0.1%3A5000%2Fshop%2Fweb%22"),
            "{}",
            reqs[4].1
        );
        assert!(ahead(&[], &[]).requests().is_empty());
        assert!(ahead(&[], &[]).is_empty());
    }

    #[test]
    fn answers_are_a_container_none_for_404_and_nothing_usable_otherwise() {
        let key = Key::Container("web".into());
        assert!(matches!(
            answer(&key, 200, br#"{"Id":"abc","Name":"/web"}"#),
            Some(Answer::Container(Some(c))) if c.id.as_deref() == Some("abc")
        ));
        assert!(matches!(answer(&key, 404, b"{}"), Some(Answer::Container(None))));
        assert!(answer(&key, 500, b"{}").is_none());
        assert!(answer(&key, 200, b"not json").is_none());
        // Untagged images list RepoTags (and may list RepoDigests) as null.
        let list = br#"[{"Id":"sha256:1","RepoTags":null,"RepoDigests":["r/a@sha256:aa"]},{"Id":"sha256:2","RepoDigests":null}]"#;
        assert!(matches!(answer(&Key::Images, 200, list), Some(Answer::Images(l)) if l.len() == 2));
    }

    fn ready(answer: Option<Answer>) -> Pending {
        async move { answer }.boxed().shared()
    }

    #[tokio::test]
    async fn what_was_read_ahead_stands_until_forgotten() {
        let listed: Vec<Listed> =
            serde_json::from_str(r#"[{"RepoDigests":["127.0.0.1:5000/shop/web@sha256:aa"]},{"RepoDigests":null}]"#)
                .unwrap();
        let early = Early::new(
            HashMap::from([
                (
                    Key::Container("web".into()),
                    ready(answer(&Key::Container("web".into()), 200, br#"{"Id":"abc"}"#)),
                ),
                (
                    Key::Container("web-backtrack-prev".into()),
                    ready(Some(Answer::Container(None))),
                ),
                (Key::Container("gone".into()), ready(None)),
                (Key::Images, ready(Some(Answer::Images(listed)))),
            ]),
            vec!["127.0.0.1:5000/shop/web".to_string()],
        );
        assert!(early.container("web").await.unwrap().is_some());
        assert!(early.container("web-backtrack-prev").await.unwrap().is_none());
        // A read that failed, or one never made, says nothing.
        assert!(early.container("gone").await.is_none());
        assert!(early.container("other").await.is_none());
        assert_eq!(early.present("127.0.0.1:5000/shop/web@sha256:aa").await, Some(true));
        assert_eq!(early.present("127.0.0.1:5000/shop/web@sha256:bb").await, Some(false));
        assert_eq!(early.present("127.0.0.1:5000/shop/web:v1").await, None);
        // Another repository's images were not listed.
        assert_eq!(early.present("127.0.0.1:5000/shop/api@sha256:aa").await, None);
        early.forget_containers();
        assert!(early.container("web").await.is_none());
        assert_eq!(early.present("127.0.0.1:5000/shop/web@sha256:aa").await, Some(true));
        early.forget_images();
        assert_eq!(early.present("127.0.0.1:5000/shop/web@sha256:aa").await, None);
    }

    #[test]
    fn image_configs_are_kept_by_content_address_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ConfigCache::new(dir.path().join("configs"));
        let id = format!("sha256:{}", "a".repeat(64));
        assert!(cache.get(&id).is_none());
        let config = ImageConfig {
            cmd: Some(vec!["httpd".into()]),
            ..Default::default()
        };
        cache.put(&id, &config);
        assert_eq!(cache.get(&id).unwrap().cmd, config.cmd);
        // Not a content address: never kept.
        cache.put("web:latest", &config);
        cache.put("sha256:short", &config);
        assert_eq!(std::fs::read_dir(cache.dir()).unwrap().count(), 1);
    }
}
