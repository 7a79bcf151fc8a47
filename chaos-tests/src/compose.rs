//! A Docker Compose project driven through the `docker` CLI: bring a compose file up under a
//! project name of its own, find its `nodeN` services, and do to their containers what an
//! operator's bad day does (kill, pause, cut from the network, restart). Both Compose v2
//! (`docker compose`) and v1 (`docker-compose`) work.
//!
//! Every project is named `<prefix><pid>` and its published ports bind to a loopback address of
//! its own (`SWITCHBOARD_HOST_IP`), so it never collides with a cluster the operator runs from
//! the same file. Dropping a [`Compose`] takes the project down with its volumes; projects left
//! by a process that died are swept on the next start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::Command;

/// Bound of any one `docker` command.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
/// Grace period `docker restart` gives a container before it SIGKILLs it.
const STOP_GRACE_SECS: u32 = 20;

/// `down` arguments: containers, networks and volumes, with a short stop grace.
const DOWN_ARGS: [&str; 5] = ["down", "-v", "--remove-orphans", "-t", "5"];

/// The default image the compose files name (`SWITCHBOARD_IMAGE` overrides it).
pub const DEFAULT_IMAGE: &str = "switchboard:dev";

/// Runs `docker` with `args`; returns stdout, or an error carrying stderr.
pub async fn docker(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("docker").args(args)).await
}

async fn run(command: &mut Command) -> anyhow::Result<String> {
    command
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let shown = format!("{:?}", command.as_std());
    let output = tokio::time::timeout(DOCKER_TIMEOUT, command.output())
        .await
        .map_err(|_| anyhow::anyhow!("{shown} took longer than {DOCKER_TIMEOUT:?}"))?
        .map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
    if !output.status.success() {
        anyhow::bail!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Why container drills cannot run here, or `None` when a Docker engine answers.
pub async fn unavailable() -> Option<String> {
    match docker(&["version", "--format", "{{.Server.Version}}"]).await {
        Ok(_) => match compose_command().await {
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        },
        Err(e) => Some(format!("no Docker engine answers: {e}")),
    }
}

/// `docker compose` when the v2 plugin is there, else `docker-compose`.
async fn compose_command() -> anyhow::Result<Vec<String>> {
    if docker(&["compose", "version"]).await.is_ok() {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    if run(Command::new("docker-compose").arg("version"))
        .await
        .is_ok()
    {
        return Ok(vec!["docker-compose".into()]);
    }
    anyhow::bail!("neither `docker compose` nor `docker-compose` is installed")
}

/// A loopback address of this process's own for published ports: 127.77.x.y from the pid.
pub fn private_loopback() -> String {
    let pid = std::process::id();
    format!("127.77.{}.{}", (pid >> 8) % 250 + 1, pid % 250 + 1)
}

/// A node service of the project: `nodeN`.
#[derive(Debug, Clone)]
pub struct Service {
    pub node_id: u64,
    pub name: String,
    pub container: String,
    /// The address peers use (`--advertise`).
    pub advertise: String,
    /// Where the host reaches its gRPC port (published).
    pub published: String,
}

/// One network a container was on, to connect it back.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub network: String,
    pub aliases: Vec<String>,
}

/// A running compose project.
#[derive(Debug)]
pub struct Compose {
    command: Vec<String>,
    pub project: String,
    pub file: PathBuf,
    pub host_ip: String,
    image: String,
    down_on_drop: bool,
}

impl Compose {
    /// Brings `file` up as project `<prefix><pid>`, with its ports on a private loopback
    /// address. Fails with what to do when the image is missing.
    pub async fn up(file: &Path, prefix: &str, image: Option<&str>) -> anyhow::Result<Self> {
        if let Some(why) = unavailable().await {
            anyhow::bail!("container drills need Docker: {why}");
        }
        let image = image.unwrap_or(DEFAULT_IMAGE).to_owned();
        if docker(&["image", "inspect", "--format", "{{.Id}}", &image])
            .await
            .is_err()
        {
            anyhow::bail!("image {image} is missing: build it with deploy/image/build.sh");
        }
        let file = std::fs::canonicalize(file)
            .map_err(|e| anyhow::anyhow!("compose file {}: {e}", file.display()))?;
        let command = compose_command().await?;
        sweep(&command, &file, prefix).await;
        let compose = Self {
            command,
            project: format!("{prefix}{}", std::process::id()),
            file,
            host_ip: private_loopback(),
            image,
            down_on_drop: true,
        };
        compose.run(&["up", "-d"]).await?;
        Ok(compose)
    }

    /// Leaves the project running when dropped (for inspection after a run).
    pub fn keep(&mut self) {
        self.down_on_drop = false;
    }

    /// The shell command that takes this project down by hand.
    pub fn down_command(&self) -> String {
        format!(
            "SWITCHBOARD_HOST_IP={} {} -p {} -f {} down -v",
            self.host_ip,
            self.command.join(" "),
            self.project,
            self.file.display()
        )
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = project_command(&self.command, &self.project, &self.file, args);
        command
            .env("SWITCHBOARD_HOST_IP", &self.host_ip)
            .env("SWITCHBOARD_IMAGE", &self.image);
        command
    }

    /// Runs a compose subcommand on this project.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        run(&mut self.command(args)).await
    }

    /// The `nodeN` services with their containers and addresses.
    pub async fn services(&self) -> anyhow::Result<BTreeMap<u64, Service>> {
        let mut services = BTreeMap::new();
        for name in self.run(&["ps", "--services"]).await?.lines() {
            let name = name.trim();
            let Some(node_id) = name
                .strip_prefix("node")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let container = self.run(&["ps", "-q", name]).await?.trim().to_owned();
            if container.is_empty() {
                anyhow::bail!("service {name} has no container");
            }
            let args = container_args(&container).await?;
            let advertise = flag_value(&args, "--advertise")
                .ok_or_else(|| anyhow::anyhow!("service {name} has no --advertise"))?;
            let port = advertise
                .rsplit_once(':')
                .map(|(_, p)| p.to_owned())
                .ok_or_else(|| anyhow::anyhow!("service {name}: --advertise {advertise}"))?;
            let published = docker(&["port", &container, &format!("{port}/tcp")]).await?;
            let published = published
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with(&self.host_ip))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "service {name}: port {port} is not published on {}",
                        self.host_ip
                    )
                })?
                .to_owned();
            services.insert(
                node_id,
                Service {
                    node_id,
                    name: name.to_owned(),
                    container,
                    advertise,
                    published,
                },
            );
        }
        if services.is_empty() {
            anyhow::bail!("{} defines no nodeN service", self.file.display());
        }
        Ok(services)
    }

    pub async fn kill(&self, container: &str) -> anyhow::Result<()> {
        docker(&["kill", container]).await.map(drop)
    }

    /// Starts a stopped container; nothing when it runs.
    pub async fn start(&self, container: &str) -> anyhow::Result<()> {
        docker(&["start", container]).await.map(drop)
    }

    pub async fn pause(&self, container: &str) -> anyhow::Result<()> {
        docker(&["pause", container]).await.map(drop)
    }

    /// Unpauses a paused container; nothing when it is not paused.
    pub async fn unpause(&self, container: &str) -> anyhow::Result<()> {
        let state = self.state(container).await?;
        if state == "paused" {
            docker(&["unpause", container]).await?;
        }
        Ok(())
    }

    /// `running`, `paused`, `exited`, ...
    pub async fn state(&self, container: &str) -> anyhow::Result<String> {
        Ok(
            docker(&["inspect", "--format", "{{.State.Status}}", container])
                .await?
                .trim()
                .to_owned(),
        )
    }

    /// Disconnects the container from every network; returns how to connect it back.
    pub async fn disconnect(&self, container: &str) -> anyhow::Result<Vec<Attachment>> {
        let networks = container_networks(container).await?;
        let mut attachments = Vec::new();
        for (network, settings) in networks {
            let aliases = settings["Aliases"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        // The short container id is added back by the engine itself.
                        .filter(|alias| !container.starts_with(alias.as_str()))
                        .collect()
                })
                .unwrap_or_default();
            docker(&["network", "disconnect", "--force", &network, container]).await?;
            attachments.push(Attachment { network, aliases });
        }
        Ok(attachments)
    }

    /// Connects the container back to the networks [`Compose::disconnect`] returned.
    pub async fn connect(&self, container: &str, attachments: &[Attachment]) -> anyhow::Result<()> {
        for attachment in attachments {
            let mut args = vec!["network", "connect"];
            for alias in &attachment.aliases {
                args.push("--alias");
                args.push(alias);
            }
            args.push(&attachment.network);
            args.push(container);
            docker(&args).await?;
        }
        Ok(())
    }

    /// `docker restart`: SIGTERM, up to the grace period, then start again.
    pub async fn restart(&self, container: &str) -> anyhow::Result<()> {
        docker(&["restart", "-t", &STOP_GRACE_SECS.to_string(), container])
            .await
            .map(drop)
    }

    /// Waits until the container's health check says healthy.
    pub async fn wait_healthy(&self, container: &str, within: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < within {
            last = docker(&["inspect", "--format", "{{.State.Health.Status}}", container])
                .await?
                .trim()
                .to_owned();
            if last == "healthy" {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        anyhow::bail!("container {container} not healthy within {within:?} (last: {last})")
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if !self.down_on_drop {
            return;
        }
        let mut command = self.command(&DOWN_ARGS).into_std();
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let _ = command.status();
    }
}

/// The networks a container is on, by name, with the engine's settings for each.
pub async fn container_networks(
    container: &str,
) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
    let networks = docker(&[
        "inspect",
        "--format",
        "{{json .NetworkSettings.Networks}}",
        container,
    ])
    .await?;
    Ok(serde_json::from_str(networks.trim())?)
}

/// The arguments a container's entrypoint runs with.
pub async fn container_args(container: &str) -> anyhow::Result<Vec<String>> {
    let args = docker(&["inspect", "--format", "{{json .Args}}", container]).await?;
    Ok(serde_json::from_str(args.trim())?)
}

/// `<compose> -p project -f file args...`.
fn project_command(compose: &[String], project: &str, file: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(&compose[0]);
    command
        .args(&compose[1..])
        .args(["-p", project, "-f"])
        .arg(file)
        .args(args);
    command
}

/// `--flag value` or `--flag=value` in `args`.
pub fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let inline = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, arg)| {
        if arg == flag {
            args.get(i + 1).cloned()
        } else {
            arg.strip_prefix(&inline).map(str::to_owned)
        }
    })
}

/// Takes down projects `<prefix><pid>` whose process is gone.
async fn sweep(command: &[String], file: &Path, prefix: &str) {
    let Ok(labels) = docker(&[
        "ps",
        "-a",
        "--format",
        "{{.Label \"com.docker.compose.project\"}}",
    ])
    .await
    else {
        return;
    };
    let mut stale: Vec<&str> = labels
        .lines()
        .map(str::trim)
        .filter(|project| {
            project.strip_prefix(prefix).is_some_and(|pid| {
                !pid.is_empty()
                    && pid.chars().all(|c| c.is_ascii_digit())
                    && !Path::new(&format!("/proc/{pid}")).exists()
            })
        })
        .collect();
    stale.sort_unstable();
    stale.dedup();
    for project in stale {
        match run(&mut project_command(command, project, file, &DOWN_ARGS)).await {
            Ok(_) => eprintln!("removed compose project {project} left by a process that is gone"),
            Err(e) => eprintln!("could not remove stale compose project {project}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_are_found_in_both_spellings() {
        let args: Vec<String> = ["serve", "--node-id", "2", "--advertise", "node2:7101"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(
            flag_value(&args, "--advertise").as_deref(),
            Some("node2:7101")
        );
        let args = vec!["--advertise=node3:7103".to_owned()];
        assert_eq!(
            flag_value(&args, "--advertise").as_deref(),
            Some("node3:7103")
        );
        assert_eq!(flag_value(&args, "--listen"), None);
    }

    #[test]
    fn private_loopback_is_in_127_slash_8() {
        let ip: std::net::Ipv4Addr = private_loopback().parse().expect("an address");
        assert!(ip.is_loopback());
    }
}
