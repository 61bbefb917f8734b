//! What `airut check` reports about the container engine: which socket,
//! which engine and version, the negotiated API version, and whether it can
//! really run a container with airut's init as the entrypoint.
//!
//! The run check builds a tiny image `FROM scratch` holding only
//! `airut-init` and runs `airut-init --version` in it, under the same
//! capability and privilege settings as a task. That proves in one go that
//! the engine can build and run, and that the init is linked statically (a
//! dynamically linked init fails here exactly as it would in a task).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
    WaitContainerOptions,
};
use futures_util::StreamExt;
use tokio::time::Instant;

use super::LABEL_MANAGED;
use super::engine::{Engine, EngineError};
use super::image::ImageSpec;

/// How long the run check may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// What the probe found.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// The socket in use.
    pub socket: PathBuf,
    /// Where the socket came from.
    pub found_by: &'static str,
    /// Engine name and version, e.g. `Podman Engine 4.3.1`.
    pub engine: String,
    /// The negotiated API version.
    pub api_version: String,
    /// The run check: its wall time, or why it failed.
    pub run: Result<Duration, String>,
}

/// The `airut-init` binary shipped beside the running `airut`.
pub fn default_init_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("airut-init")))
        .unwrap_or_else(|| PathBuf::from("airut-init"))
}

/// Connects and checks; an engine that cannot be reached is an error, a
/// failed run check is in the report.
pub async fn probe(configured: Option<&Path>, init: &Path) -> Result<ProbeReport, EngineError> {
    let engine = Engine::connect(configured).await?;
    let version = engine.docker().version().await.ok();
    let engine_name = version
        .as_ref()
        .and_then(|v| {
            let comp = v.components.as_ref()?.first()?;
            Some(format!("{} {}", comp.name, comp.version))
        })
        .or_else(|| {
            version
                .as_ref()
                .and_then(|v| v.version.as_ref().map(|ver| format!("engine {ver}")))
        })
        .unwrap_or_else(|| "unknown engine".to_owned());
    let run = tokio::time::timeout(RUN_TIMEOUT, run_check(&engine, init))
        .await
        .unwrap_or_else(|_| Err(format!("no result within {RUN_TIMEOUT:?}")));
    Ok(ProbeReport {
        socket: engine.socket.clone(),
        found_by: engine.found_by,
        engine: engine_name,
        api_version: engine.api_version(),
        run,
    })
}

async fn run_check(engine: &Engine, init: &Path) -> Result<Duration, String> {
    let started = Instant::now();
    let bytes = std::fs::read(init).map_err(|e| {
        format!(
            "cannot read the init {}: {e} (build it with `cargo rustc --release --bin airut-init -- -C target-feature=+crt-static`)",
            init.display()
        )
    })?;
    let spec = ImageSpec {
        kind: "probe".to_owned(),
        dockerfile: b"FROM scratch\nCOPY airut-init /airut-init\n".to_vec(),
        context: BTreeMap::from([("airut-init".to_owned(), bytes)]),
    };
    let tag = spec.tag();
    let docker = engine.docker();
    let body = spec.context_tar().map_err(|e| e.to_string())?;
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(&tag)
        .rm(true)
        .labels(&HashMap::from([(LABEL_MANAGED, "1")]))
        .build();
    let mut build = docker.build_image(options, None, Some(bollard::body_full(body.into())));
    while let Some(item) = build.next().await {
        match item {
            Ok(info) => {
                if let Some(m) = info.error_detail.and_then(|d| d.message) {
                    return Err(format!("building the probe image failed: {m}"));
                }
            }
            Err(e) => return Err(format!("building the probe image failed: {e}")),
        }
    }
    let created = docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            ContainerCreateBody {
                image: Some(tag.clone()),
                entrypoint: Some(vec!["/airut-init".to_owned()]),
                cmd: Some(vec!["--version".to_owned()]),
                labels: Some(HashMap::from([(LABEL_MANAGED.to_owned(), "1".to_owned())])),
                host_config: Some(HostConfig {
                    cap_drop: Some(vec!["ALL".to_owned()]),
                    security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
                    network_mode: Some("none".to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("creating a container failed: {e}"))?;
    let outcome = async {
        docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
            .map_err(|e| format!("starting a container failed: {e}"))?;
        let code = match docker
            .wait_container(&created.id, None::<WaitContainerOptions>)
            .next()
            .await
        {
            Some(Ok(r)) => r.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(format!("waiting for the container failed: {e}")),
            None => return Err("the engine never reported the exit".to_owned()),
        };
        if code == 0 {
            Ok(started.elapsed())
        } else {
            Err(format!(
                "the init exited with {code} in a FROM scratch image: is {} linked statically?",
                init.display()
            ))
        }
    }
    .await;
    let _ = docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
    outcome
}
