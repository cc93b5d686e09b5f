//! kiln-operator: reconciles OSUpgrade objects (a Deployment in the cluster; in-cluster
//! credentials, or $KUBECONFIG). `kiln-operator crd` prints deploy/crd.yaml.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use kiln_agent::crd::OSUpgrade;
use kiln_agent::operator;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "kiln-operator",
    version,
    about = "Roll OS upgrades out over a cluster's nodes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the OSUpgrade CustomResourceDefinition (deploy/crd.yaml).
    Crd,
    /// Run the controller (the default).
    Run,
}

struct Ctx {
    client: Client,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ReconcileError(#[from] operator::Error);

async fn reconcile(o: Arc<OSUpgrade>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let out = operator::reconcile(&ctx.client, &o, now).await?;
    Ok(Action::requeue(out.requeue))
}

fn error_policy(_: Arc<OSUpgrade>, e: &ReconcileError, _: Arc<Ctx>) -> Action {
    tracing::warn!("reconcile failed: {e}");
    Action::requeue(Duration::from_secs(15))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().cmd.unwrap_or(Cmd::Run) {
        Cmd::Crd => print!("{}", kiln_agent::crd::crd_yaml()),
        Cmd::Run => {
            let client = Client::try_default()
                .await
                .context("connecting to the API server (in-cluster or $KUBECONFIG)")?;
            let api: Api<OSUpgrade> = Api::all(client.clone());
            Controller::new(api, watcher::Config::default())
                .run(reconcile, error_policy, Arc::new(Ctx { client }))
                .for_each(|r| async move {
                    if let Err(e) = r {
                        tracing::debug!("{e}");
                    }
                })
                .await;
        }
    }
    Ok(())
}
