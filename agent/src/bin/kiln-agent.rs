//! kiln-agent: the node agent baked into Kiln images. Connects out to the API server named by
//! a kubeconfig, watches this node's Node object for an OS target handed out by kiln-operator,
//! and upgrades through kiln-updater (stage, cordon, drain, flip, reboot, report).

use anyhow::{Context, Result};
use clap::Parser;
use kiln_agent::backoff::Backoff;
use kiln_agent::daemon::Agent;
use kiln_agent::node::StateFile;
use kiln_agent::updater::Updater;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "kiln-agent",
    version,
    about = "Kiln node agent: cluster-triggered OS upgrades"
)]
struct Cli {
    /// Credentials and address of the API server.
    #[arg(long, default_value = "/etc/kiln/kubeconfig")]
    kubeconfig: PathBuf,
    /// This node's name in the cluster (default: the hostname).
    #[arg(long)]
    node: Option<String>,
    /// The agent's state (on persist, so it survives reboots).
    #[arg(long, default_value = "/var/lib/kiln-agent/state.json")]
    state: PathBuf,
    #[arg(long, default_value = "/usr/bin/kiln-updater")]
    updater: PathBuf,
    /// Where this boot's id is read (a new id is a boot). Tests that run agents as host
    /// processes point it at a file their stand-in device rewrites on each "reboot".
    #[arg(long, default_value = "/proc/sys/kernel/random/boot_id", hide = true)]
    boot_id_file: PathBuf,
}

/// A client from the kubeconfig (no connection yet): the server URL and the client.
async fn client(path: &Path) -> Result<(String, Client)> {
    if !path.exists() {
        anyhow::bail!("{} does not exist yet", path.display());
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .permissions(),
    );
    kiln_agent::credentials::check_private(mode)
        .map_err(|why| anyhow::anyhow!("{} {why}", path.display()))?;
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let mut cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("{}: not a usable kubeconfig", path.display()))?;
    // Retries (PodDisruptionBudget refusals, lost connections) are the agent's own, bounded
    // by its deadlines and backoff.
    cfg.default_retry = false;
    cfg.connect_timeout = Some(Duration::from_secs(10));
    cfg.read_timeout = Some(Duration::from_secs(300));
    let server = cfg.cluster_url.to_string();
    Ok((server, Client::try_from(cfg)?))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    kiln_agent::console::init();
    let cli = Cli::parse();
    let node = cli.node.clone().unwrap_or_else(hostname);
    if let Some(dir) = cli.state.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    tracing::info!("node {node}, kubeconfig {}", cli.kubeconfig.display());
    // The kubeconfig may arrive later (provisioning): wait for it with the same backoff. A node
    // not configured for a cluster is not failing, so the same reason is logged once, not per
    // attempt (the console stays quiet).
    let mut backoff = Backoff::default();
    let mut last = String::new();
    let (server, client) = loop {
        match client(&cli.kubeconfig).await {
            Ok(c) => break c,
            Err(e) => {
                let why = kiln_agent::daemon::describe(e.as_ref());
                if why != last {
                    tracing::info!(
                        "no API client yet ({why}); checking again with backoff up to 60 s"
                    );
                    last = why;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    };
    let device = Updater { bin: cli.updater };
    let boot_id = std::fs::read_to_string(&cli.boot_id_file)
        .with_context(|| format!("reading {}", cli.boot_id_file.display()))?
        .trim()
        .to_string();
    let mut agent = Agent::new(
        client,
        &node,
        device,
        StateFile::new(&cli.state),
        &server,
        &boot_id,
    )?;
    agent.run().await;
    Ok(())
}
