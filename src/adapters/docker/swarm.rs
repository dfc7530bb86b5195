//! Swarm services through a manager's Engine API: find the target's service (by name, or by its
//! stack's `com.docker.stack.namespace` label), read its spec, update status and tasks (with the
//! node each runs on and the host-mode ports it publishes), and update its spec with registry
//! credentials for the workers, as `docker service update --with-registry-auth` does.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ServiceSpec, Task};
use bollard::query_parameters::{
    ListNodesOptions, ListServicesOptionsBuilder, ListTasksOptionsBuilder, LogsOptionsBuilder,
    UpdateServiceOptionsBuilder,
};
use futures::StreamExt;
use serde::Serialize;

use super::{Engine, EngineError, short_error};
use crate::adapters::registry::PullAuth;
use crate::domain::digest::Digest;

/// Whether a service update was refused for naming a version the service has moved past.
fn out_of_sequence(e: &bollard::errors::Error) -> bool {
    e.to_string().contains("update out of sequence")
}

/// The label `docker stack deploy` puts on the services of a stack.
pub const LABEL_STACK: &str = "com.docker.stack.namespace";

/// A service as the manager reports it.
#[derive(Debug, Clone)]
pub struct ServiceView {
    pub id: String,
    pub name: String,
    /// The object version an update must name (optimistic concurrency).
    pub version: u64,
    pub spec: ServiceSpec,
    /// `TaskTemplate.ContainerSpec.Image` (Swarm stores it pinned: `repo:tag@sha256:…`).
    pub image: String,
    /// Desired replicas; `None` for a global service.
    pub replicas: Option<u64>,
    /// `UpdateStatus.State` (`updating`, `completed`, `paused`, `rollback_started`, …), if any.
    pub update_state: Option<String>,
    pub update_message: Option<String>,
    /// When the last update started (tells a new update's status from an older one's).
    pub update_started: Option<String>,
}

impl ServiceView {
    /// The manifest digest the spec pins, if it pins one.
    pub fn pinned_digest(&self) -> Option<Digest> {
        pinned(&self.image)
    }

    /// The labels of the spec's containers (backtrack keeps its version and tag there).
    pub fn container_labels(&self) -> HashMap<String, String> {
        self.spec
            .task_template
            .as_ref()
            .and_then(|t| t.container_spec.as_ref())
            .and_then(|c| c.labels.clone())
            .unwrap_or_default()
    }

    pub fn container_env(&self) -> Vec<String> {
        self.spec
            .task_template
            .as_ref()
            .and_then(|t| t.container_spec.as_ref())
            .and_then(|c| c.env.clone())
            .unwrap_or_default()
    }
}

/// The digest pinned in an image reference (`repo:tag@sha256:…`).
pub fn pinned(image: &str) -> Option<Digest> {
    image.rsplit_once('@').and_then(|(_, d)| Digest::parse(d).ok())
}

/// One task of a service: a replica slot on a node.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    pub id: String,
    /// `SERVICE.SLOT` (replicated) or `SERVICE.NODE` (global), as `docker service ps` names it.
    pub name: String,
    pub node_id: String,
    /// The node's hostname, else its id.
    pub node: String,
    /// The node's address (`Status.Addr`), where its host-mode ports are published.
    pub node_addr: Option<String>,
    /// What Swarm wants (`running`, `shutdown`).
    pub desired: String,
    /// Where it is (`starting` until its HEALTHCHECK passes, `running`, `failed`, …).
    pub state: String,
    /// Swarm's error for the task (e.g. `task: non-zero exit (137): dockerexec: unhealthy container`).
    pub error: Option<String>,
    pub image: String,
    /// The labels and environment of the task's container spec.
    pub labels: HashMap<String, String>,
    pub env: Vec<String>,
    pub container_id: Option<String>,
    /// Host-mode published ports: (container port, host port).
    pub ports: Vec<(u16, u16)>,
    pub updated_at: Option<String>,
}

impl TaskView {
    pub fn digest(&self) -> Option<Digest> {
        pinned(&self.image)
    }

    /// The host ports this task publishes for `container_port`, in host mode: usually one, but
    /// Docker 20.10 may give the IPv4 and the IPv6 binding different random ports, and the task's
    /// port status does not say which is which.
    pub fn host_ports(&self, container_port: u16) -> Vec<u16> {
        self.ports
            .iter()
            .filter(|(t, _)| *t == container_port)
            .map(|(_, p)| *p)
            .collect()
    }
}

/// What an update changes besides the image, when the user overrides the service's own config.
#[derive(Debug, Clone, Default)]
pub struct UpdateOverrides {
    pub parallelism: Option<u64>,
    /// `start-first` or `stop-first`.
    pub order: Option<String>,
    /// Replace every task even when the spec's image does not change (`--force`).
    pub force: bool,
}

impl Engine {
    /// Finds the service `name` (in `stack`, when given: `STACK_NAME` or `NAME` among the
    /// services labelled with that stack).
    pub async fn service(&self, name: &str, stack: Option<&str>) -> Result<ServiceView, EngineError> {
        let not_found = || EngineError::ServiceNotFound {
            name: name.to_string(),
            stack: stack.map(str::to_string),
        };
        let service = match stack {
            None => match self.docker.inspect_service(name, None).await {
                Ok(s) => s,
                Err(e) if super::is_not_found(&e) => return Err(not_found()),
                Err(e) => return Err(self.swarm_err(&format!("inspect swarm service {name}"), &e)),
            },
            Some(stack) => {
                let list = self.list_stack(stack).await?;
                let full = format!("{stack}_{name}");
                let named = |s: &&bollard::models::Service, n: &str| {
                    s.spec.as_ref().and_then(|sp| sp.name.as_deref()) == Some(n)
                };
                list.iter()
                    .find(|s| named(s, &full))
                    .or_else(|| list.iter().find(|s| named(s, name)))
                    .cloned()
                    .ok_or_else(not_found)?
            }
        };
        let spec = service.spec.clone().unwrap_or_default();
        let image = spec
            .task_template
            .as_ref()
            .and_then(|t| t.container_spec.as_ref())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let replicas = spec
            .mode
            .as_ref()
            .and_then(|m| m.replicated.as_ref())
            .map(|r| r.replicas.unwrap_or(1).max(0) as u64);
        let update = service.update_status.as_ref();
        Ok(ServiceView {
            id: service.id.clone().unwrap_or_default(),
            name: spec.name.clone().unwrap_or_else(|| name.to_string()),
            version: service.version.as_ref().and_then(|v| v.index).unwrap_or(0),
            image,
            replicas,
            update_state: update
                .and_then(|u| u.state)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty()),
            update_message: update.and_then(|u| u.message.clone()),
            update_started: update.and_then(|u| u.started_at.as_ref()).map(|d| d.to_string()),
            spec,
        })
    }

    /// The services of `stack` (by its label): each one's name in the stack file and the image
    /// its spec names.
    pub async fn stack_services(&self, stack: &str) -> Result<Vec<(String, String)>, EngineError> {
        let list = self.list_stack(stack).await?;
        let prefix = format!("{stack}_");
        Ok(list
            .iter()
            .filter_map(|s| {
                let spec = s.spec.as_ref()?;
                let name = spec.name.as_deref()?;
                let image = spec.task_template.as_ref()?.container_spec.as_ref()?.image.clone()?;
                Some((name.strip_prefix(&prefix).unwrap_or(name).to_string(), image))
            })
            .collect())
    }

    /// The services labelled with `stack` (what `docker stack deploy` made).
    async fn list_stack(&self, stack: &str) -> Result<Vec<bollard::models::Service>, EngineError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_STACK}={stack}")])]);
        let opts = ListServicesOptionsBuilder::default().filters(&filters).build();
        self.docker
            .list_services(Some(opts))
            .await
            .map_err(|e| self.swarm_err(&format!("list the services of stack {stack}"), &e))
    }

    /// The service's tasks (current and recent history), newest first within a slot, each with
    /// its node's name and address.
    pub async fn service_tasks(&self, service: &ServiceView) -> Result<Vec<TaskView>, EngineError> {
        let filters = HashMap::from([("service", vec![service.id.clone()])]);
        let opts = ListTasksOptionsBuilder::default().filters(&filters).build();
        let (tasks, nodes) = tokio::join!(
            self.docker.list_tasks(Some(opts)),
            self.docker.list_nodes(None::<ListNodesOptions>)
        );
        let tasks = tasks.map_err(|e| self.swarm_err(&format!("list the tasks of {}", service.name), &e))?;
        let nodes = nodes.map_err(|e| self.swarm_err("list the swarm's nodes", &e))?;
        let nodes: HashMap<String, (String, Option<String>)> = nodes
            .into_iter()
            .filter_map(|n| {
                let id = n.id?;
                let host = n.description.and_then(|d| d.hostname).unwrap_or_else(|| id.clone());
                Some((id, (host, n.status.and_then(|s| s.addr))))
            })
            .collect();
        let mut out: Vec<TaskView> = tasks.into_iter().map(|t| task_view(&service.name, t, &nodes)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| b.updated_at.cmp(&a.updated_at)));
        Ok(out)
    }

    /// Updates the service to `spec`, naming the version it was read at. Credentials go to the
    /// workers with the update (`--with-registry-auth`). Returns the manager's warnings.
    ///
    /// Swarm moves a service's version by itself too (an update or rollback of its own that
    /// finishes bumps it): an update "out of sequence" whose service still has the spec it was
    /// read with is sent again once, at the version it has now. One whose spec changed meanwhile
    /// (by hand) is refused as it was.
    pub async fn update_service(
        &self,
        service: &ServiceView,
        spec: ServiceSpec,
        auth: Option<&PullAuth>,
    ) -> Result<Vec<String>, EngineError> {
        let update = |version: u64, spec: ServiceSpec| async move {
            let opts = UpdateServiceOptionsBuilder::default().version(version as i32).build();
            self.docker
                .update_service(&service.id, spec, opts, super::credentials(auth))
                .await
        };
        let failed = |e: &bollard::errors::Error| self.swarm_err(&format!("update swarm service {}", service.name), e);
        let response = match update(service.version, spec.clone()).await {
            Ok(r) => r,
            Err(e) if out_of_sequence(&e) => {
                let now = self
                    .docker
                    .inspect_service(&service.id, None)
                    .await
                    .map_err(|e| failed(&e))?;
                let version = now.version.as_ref().and_then(|v| v.index).unwrap_or(0);
                if now.spec.as_ref() != Some(&service.spec) || version == service.version {
                    return Err(failed(&e));
                }
                tracing::debug!(
                    "{}: the service moved to version {version} by itself; updating again",
                    service.name
                );
                update(version, spec).await.map_err(|e| failed(&e))?
            }
            Err(e) => return Err(failed(&e)),
        };
        Ok(response.warnings.unwrap_or_default())
    }

    /// The last `n` lines a task wrote (through the manager's log broker), bounded in time; empty
    /// when they cannot be read.
    pub async fn task_logs_tail(&self, task_id: &str, n: usize) -> Vec<String> {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&n.to_string())
            .build();
        let read = async {
            let mut stream = self.docker.task_logs(task_id, Some(opts));
            let mut out = String::new();
            while let Some(Ok(chunk)) = stream.next().await {
                out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
            out
        };
        match tokio::time::timeout(Duration::from_secs(3), read).await {
            Ok(out) => out.lines().map(str::to_string).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// A Swarm API error, told apart when the engine is no manager.
    fn swarm_err(&self, action: &str, e: &bollard::errors::Error) -> EngineError {
        let message = short_error(e);
        if message.contains("not a swarm manager") || message.contains("not part of a swarm") {
            return EngineError::NotManager {
                host: self.host.clone(),
                message,
            };
        }
        EngineError::Other {
            action: action.to_string(),
            message,
        }
    }
}

fn task_view(service: &str, t: Task, nodes: &HashMap<String, (String, Option<String>)>) -> TaskView {
    let node_id = t.node_id.clone().unwrap_or_default();
    let (node, node_addr) = nodes.get(&node_id).cloned().unwrap_or_else(|| (node_id.clone(), None));
    let status = t.status.clone().unwrap_or_default();
    let mut ports: Vec<(u16, u16)> = status
        .port_status
        .as_ref()
        .and_then(|p| p.ports.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            Some((
                u16::try_from(p.target_port?).ok()?,
                u16::try_from(p.published_port?).ok()?,
            ))
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    let container = t.spec.clone().and_then(|s| s.container_spec).unwrap_or_default();
    let name = match t.slot {
        Some(slot) => format!("{service}.{slot}"),
        None => format!("{service}.{node_id}"),
    };
    TaskView {
        id: t.id.clone().unwrap_or_default(),
        name,
        node_id,
        node,
        node_addr,
        desired: t.desired_state.map(|s| s.to_string()).unwrap_or_default(),
        state: status.state.map(|s| s.to_string()).unwrap_or_default(),
        error: status.err.filter(|e| !e.is_empty()),
        image: container.image.unwrap_or_default(),
        labels: container.labels.unwrap_or_default(),
        env: container.env.unwrap_or_default(),
        container_id: status.container_status.and_then(|c| c.container_id),
        ports,
        updated_at: t.updated_at.map(|d| d.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{EndpointPortConfig, PortStatus, TaskStatus};

    use super::*;

    #[test]
    fn a_task_publishing_ipv4_and_ipv6_on_different_ports_offers_both() {
        let port = |published| EndpointPortConfig {
            target_port: Some(8080),
            published_port: Some(published),
            ..Default::default()
        };
        let task = Task {
            slot: Some(1),
            status: Some(TaskStatus {
                port_status: Some(PortStatus {
                    ports: Some(vec![port(32819), port(32818), port(32819)]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let view = task_view("web", task, &HashMap::new());
        assert_eq!(view.host_ports(8080), vec![32818, 32819]);
        assert!(view.host_ports(9090).is_empty());
    }

    #[test]
    fn only_an_update_out_of_sequence_is_sent_again() {
        let refused = |message: &str| bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: message.to_string(),
        };
        assert!(out_of_sequence(&refused(
            "rpc error: code = Unknown desc = update out of sequence"
        )));
        assert!(!out_of_sequence(&refused(
            "rpc error: code = InvalidArgument desc = bad spec"
        )));
        assert!(!out_of_sequence(&refused("service web not found")));
    }
}
