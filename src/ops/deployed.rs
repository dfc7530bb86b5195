//! What the target runs now, read from the Docker Engine: its containers (or a Swarm service's
//! tasks) and the digest and version each carries.

use serde::Serialize;

use crate::adapters::docker::swarm::{ServiceView, TaskView};
use crate::adapters::docker::{ContainerView, Engine, EngineError, LABEL_EMERGENCY, LABEL_TAG, LABEL_VERSION};
use crate::domain::digest::Digest;
use crate::domain::image::{ImageRef, LABEL_VERSION as OCI_VERSION};
use crate::domain::version::parse_version;
use crate::settings::TargetSettings;

/// The image backtrack wrote into the spec along with its version and tag labels: a spec whose
/// image is another was changed by someone else, and those labels no longer describe it.
pub const LABEL_IMAGE: &str = "io.backtrack.image";

/// One container of the target and what it runs.
#[derive(Debug, Clone, Serialize)]
pub struct Deployed {
    pub container: ContainerView,
    pub digest: Option<Digest>,
    pub image: ImageRef,
    /// The release's service it belongs to (`[target] names`); `None` for one service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// The repository (`host/path`, as the engine names it) a release's service comes from:
/// `repository`'s host with the member's own path, when it has one.
pub fn member_repository(repository: &str, member: &crate::settings::Member) -> String {
    match (&member.repository, repository.split_once('/')) {
        (Some(own), Some((host, _))) => format!("{host}/{own}"),
        (Some(own), None) => own.clone(),
        (None, _) => repository.to_string(),
    }
}

/// The version a container carries: the tag backtrack deployed, else the image's version label,
/// else a `*_VERSION` environment variable (the seed's `AGENTRADER_VERSION` convention).
pub fn carried_version(c: &ContainerView) -> Option<String> {
    if let Some(v) = c.labels.get(LABEL_VERSION) {
        return Some(v.clone());
    }
    image_version(c)
}

/// The version the image itself says it is (label or env), ignoring backtrack's own labels.
pub fn image_version(c: &ContainerView) -> Option<String> {
    for key in [OCI_VERSION, "version"] {
        if let Some(v) = c.labels.get(key).and_then(|v| parse_version(v)) {
            return Some(v.to_string());
        }
    }
    c.env.iter().find_map(|e| {
        let (k, v) = e.split_once('=')?;
        (k.ends_with("_VERSION") || k == "VERSION")
            .then(|| parse_version(v))?
            .map(|v| v.to_string())
    })
}

/// What `read` and a swap's plan will ask of an engine across a network, to read ahead as its
/// connection starts (`Engine::negotiate_ahead`): a container target's containers by name (a
/// release's, each service's), and the local images of every repository (whether the image to
/// pull is there). A compose service's containers are found by a listing first, and a Swarm
/// service's images are on its nodes: neither is read ahead.
pub fn read_ahead(target: &TargetSettings, repository: &str) -> crate::adapters::docker::ahead::ReadAhead {
    use crate::settings::TargetKind;
    let services = if target.is_release() {
        target
            .members
            .iter()
            .map(|m| (m.name.clone(), member_repository(repository, m)))
            .collect()
    } else {
        vec![(target.name.clone(), repository.to_string())]
    };
    let (containers, repositories) = services.into_iter().unzip();
    match target.kind {
        TargetKind::Container => crate::adapters::docker::ahead::ReadAhead {
            containers,
            repositories,
        },
        TargetKind::Compose => crate::adapters::docker::ahead::ReadAhead {
            containers: Vec::new(),
            repositories,
        },
        TargetKind::Swarm => crate::adapters::docker::ahead::ReadAhead::default(),
    }
}

/// Reads the target's containers, with the digest each runs: the digest pinned in its image
/// reference, else the local image's repo digest for `repository`.
///
/// A release's services are read each with its repository, in order, every entry naming its
/// service.
pub async fn read(engine: &Engine, target: &TargetSettings, repository: &str) -> anyhow::Result<Vec<Deployed>> {
    if target.is_release() {
        let reads = futures::future::join_all(target.members.iter().map(|m| async move {
            let mut entries = Box::pin(read(engine, &target.member(m), &member_repository(repository, m))).await?;
            for e in &mut entries {
                e.service = Some(m.name.clone());
            }
            anyhow::Ok(entries)
        }))
        .await;
        let mut out = Vec::new();
        for r in reads {
            out.extend(r?);
        }
        return Ok(out);
    }
    if target.kind == crate::settings::TargetKind::Swarm {
        return service_entries(engine, target).await;
    }
    let containers = engine.target_containers(target).await?;
    let mut out = Vec::with_capacity(containers.len());
    for c in containers {
        let digest = match c.pinned_digest() {
            Some(d) => Some(d),
            None => repo_digest(engine, &c.image_id, repository).await,
        };
        let version = carried_version(&c);
        let tag = c.labels.get(LABEL_TAG).cloned().or_else(|| {
            c.image_ref
                .rsplit_once(':')
                .filter(|(_, t)| !t.contains('/') && !c.image_ref.contains('@'))
                .map(|(_, t)| t.to_string())
        });
        out.push(Deployed {
            image: ImageRef {
                tag,
                version,
                digest: digest.clone(),
            },
            digest,
            container: c,
            service: None,
        });
    }
    Ok(out)
}

/// The digest of the local image as pushed to `name` (`host/repository`): an exact match first,
/// else the same repository under another host name (a mirror, or `localhost` for `127.0.0.1`):
/// a manifest digest names the same content in any registry.
async fn repo_digest(engine: &Engine, image_id: &str, name: &str) -> Option<Digest> {
    let image = engine.image(image_id).await.ok()??;
    let repo_digests = image.repo_digests.unwrap_or_default();
    let parsed: Vec<(&str, Digest)> = repo_digests
        .iter()
        .filter_map(|rd| {
            let (repo, digest) = rd.rsplit_once('@')?;
            Some((repo, Digest::parse(digest).ok()?))
        })
        .collect();
    let path = name.split_once('/').map_or(name, |(_, p)| p);
    parsed
        .iter()
        .find(|(repo, _)| *repo == name)
        .or_else(|| {
            parsed
                .iter()
                .find(|(repo, _)| repo.split_once('/').is_some_and(|(_, p)| p == path))
        })
        .map(|(_, d)| d.clone())
}

/// The service of the target.
pub async fn service(engine: &Engine, target: &TargetSettings) -> Result<ServiceView, EngineError> {
    engine.service(&target.name, target.stack.as_deref()).await
}

/// What the service runs: one entry per task Swarm wants running (each with the image its own
/// spec names, so a half-done update shows both versions), or the service's spec when it has
/// no task (scaled to zero).
pub async fn service_entries(engine: &Engine, target: &TargetSettings) -> anyhow::Result<Vec<Deployed>> {
    let svc = service(engine, target).await?;
    let tasks = engine.service_tasks(&svc).await?;
    Ok(entries(&svc, &tasks))
}

/// Each Swarm service of `target` (a release's, or the one) as a target of its own, read at once:
/// the service and what it runs, each entry naming its service in a release.
pub async fn services_of(
    engine: &Engine,
    target: &TargetSettings,
) -> anyhow::Result<Vec<(TargetSettings, ServiceView, Vec<Deployed>)>> {
    let reads = target.services().into_iter().map(|t| async move {
        let svc = service(engine, &t).await?;
        let mut entries = entries(&svc, &engine.service_tasks(&svc).await?);
        if target.is_release() {
            for d in &mut entries {
                d.service = Some(t.name.clone());
            }
        }
        anyhow::Ok((t, svc, entries))
    });
    futures::future::try_join_all(reads).await
}

/// [`service_entries`] from a service and its tasks already read.
pub fn entries(svc: &ServiceView, tasks: &[TaskView]) -> Vec<Deployed> {
    let live: Vec<&TaskView> = tasks.iter().filter(|t| t.desired == "running").collect();
    if live.is_empty() {
        return vec![spec_entry(svc)];
    }
    live.into_iter().map(|t| entry(task_container(t))).collect()
}

/// What the service's spec names (image, version, tag), read as a task's would be.
pub fn spec_entry(svc: &ServiceView) -> Deployed {
    entry(ContainerView {
        name: svc.name.clone(),
        id: svc.id.clone(),
        image_ref: svc.image.clone(),
        image_id: String::new(),
        state: "no tasks".into(),
        health: None,
        restart_count: 0,
        labels: svc.container_labels(),
        env: svc.container_env(),
    })
}

/// A task's (or the spec's) container view as what runs: backtrack's labels count only beside the
/// image they were written with.
pub(crate) fn entry(mut view: ContainerView) -> Deployed {
    // A `docker service update --image` by hand keeps the spec's labels: backtrack's version and
    // tag labels count only beside the image they were written with.
    if view.labels.get(LABEL_IMAGE) != Some(&view.image_ref) {
        for key in [LABEL_IMAGE, LABEL_VERSION, LABEL_TAG, LABEL_EMERGENCY] {
            view.labels.remove(key);
        }
    }
    let digest = view.pinned_digest();
    let tag = view.labels.get(LABEL_TAG).cloned().or_else(|| tag_of(&view.image_ref));
    let version = carried_version(&view).or_else(|| {
        tag.as_deref()
            .and_then(crate::domain::version::parse_version)
            .map(|v| v.to_string())
    });
    Deployed {
        image: ImageRef {
            tag,
            version,
            digest: digest.clone(),
        },
        digest,
        container: view,
        service: None,
    }
}

/// The tag of `repo[:port]/path:tag[@digest]`, if it names one.
pub(crate) fn tag_of(image: &str) -> Option<String> {
    let name = image.split_once('@').map_or(image, |(n, _)| n);
    let (_, tag) = name.rsplit_once(':')?;
    (!tag.contains('/')).then(|| tag.to_string())
}

pub(crate) fn task_container(t: &TaskView) -> ContainerView {
    ContainerView {
        name: t.name.clone(),
        id: t.container_id.clone().unwrap_or_else(|| t.id.clone()),
        image_ref: t.image.clone(),
        image_id: String::new(),
        state: t.state.clone(),
        health: None,
        restart_count: 0,
        labels: t.labels.clone(),
        env: t.env.clone(),
    }
}
