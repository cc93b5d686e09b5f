//! The node agent at run time: keeps a connection to the API server (outbound only; backoff
//! 1 s → 60 s with one log line per attempt), watches its own Node for a target, drives the
//! state machine ([`crate::node`]) committing each state on persist before acting on it, and
//! beats a heartbeat. Local work (staging, flipping) goes through [`Device`].

use crate::backoff::{Backoff, Health};
use crate::crd::{DrainPolicy, OSUpgrade};
use crate::node::{self, Action, Event, State, StateFile, Target};
use crate::protocol;
use crate::rollout::Phase;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, WatchEvent, WatchParams};
use kube::Client;
use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

/// The slots on this machine (kiln-updater).
pub trait Device: Send + Sync + 'static {
    /// The running version and whether the booted slot is blessed.
    fn running(&self) -> impl Future<Output = Result<(String, bool), DeviceError>> + Send;
    /// Download and verify the target's bundle into the inactive slot, without making it
    /// boot; any bundle but the target's version (and manifest digest, when pinned) is refused
    /// before the slot is touched.
    fn stage(&self, target: &Target) -> impl Future<Output = Result<(), DeviceError>> + Send;
    /// Make the staged slot boot next (with a try counter) and reboot.
    fn flip_and_reboot(&self) -> impl Future<Output = Result<(), DeviceError>> + Send;
}

/// Why the device could not do what the agent asked.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The updater could not be run at all.
    #[error("{program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed: the command and the last line of its error output.
    #[error("{command}: {message}")]
    Failed { command: String, message: String },
    /// Its status could not be read.
    #[error("kiln-updater status --json: {0}")]
    Status(String),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("agent state: {0}")]
    State(#[from] node::StateError),
    #[error("{0}")]
    Device(#[from] DeviceError),
}

pub struct Agent<D: Device> {
    pub client: Client,
    pub node: String,
    pub device: D,
    pub file: StateFile,
    pub state: State,
    /// Where the API server is, for log lines.
    pub server: String,
    pub heartbeat: Duration,
    /// This boot's id (`/proc/sys/kernel/random/boot_id`).
    boot_id: String,
    /// A new boot not yet told to the state machine: the boot id differs from the one recorded
    /// when the last boot was told (a restart of the agent process alone is not a boot).
    booted: bool,
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

impl<D: Device> Agent<D> {
    pub fn new(
        client: Client,
        node: &str,
        device: D,
        file: StateFile,
        server: &str,
        boot_id: &str,
    ) -> Result<Self, Error> {
        let state = file.load()?;
        let booted = file.last_boot()?.as_deref() != Some(boot_id);
        Ok(Agent {
            client,
            node: node.into(),
            device,
            file,
            state,
            server: server.into(),
            heartbeat: protocol::HEARTBEAT_INTERVAL,
            boot_id: boot_id.into(),
            booted,
        })
    }

    /// Whether this boot is still to be told to the state machine.
    pub fn new_boot(&self) -> bool {
        self.booted
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// Runs forever: sessions with the API server, reconnecting with backoff.
    pub async fn run(&mut self) {
        let mut backoff = Backoff::default();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.session(&mut backoff, &mut attempt).await {
                Ok(()) => {}
                Err(e) => {
                    let d = backoff.next_delay();
                    tracing::info!(
                        "API server {} not usable ({}); attempt {attempt} failed, next in {} s",
                        self.server,
                        describe(&e),
                        d.as_secs()
                    );
                    tokio::time::sleep(d).await;
                }
            }
        }
    }

    /// One connection: the Node is read, pending work resumed, then its changes are watched
    /// while a heartbeat runs beside. Returns on the first API error.
    async fn session(&mut self, backoff: &mut Backoff, attempt: &mut u32) -> Result<(), Error> {
        let n = self.nodes().get(&self.node).await?;
        if *attempt > 1 {
            tracing::info!("connected to {} after {attempt} attempts", self.server);
        } else {
            tracing::info!("connected to {}", self.server);
        }
        backoff.reset();
        *attempt = 0;
        let hb = tokio::spawn(heartbeat(
            self.client.clone(),
            self.node.clone(),
            self.heartbeat,
            health_of(&self.state),
        ));
        let r = self.watch(n).await;
        hb.abort();
        r
    }

    async fn watch(&mut self, first: Node) -> Result<(), Error> {
        // After a boot the state machine decides (a resumed stage or drain, the end of an
        // upgrade); otherwise, or when it has nothing to do, the current state's actions are
        // redone (all idempotent) so what a lost connection interrupted completes.
        let mut acted = 0;
        if self.booted {
            let (version, blessed) = self.device.running().await?;
            acted = self.apply(Event::Booted { version, blessed }).await?;
            // After the state it led to is committed: a crash before this tells the same boot
            // again, which each state takes as nothing new or redoes idempotently (a stage, a
            // drain).
            self.file.record_boot(&self.boot_id)?;
            self.booted = false;
        }
        if acted == 0 {
            let pending = node::resume(&self.state);
            self.act_all(pending).await?;
        }
        let mut rv = first.metadata.resource_version.clone().unwrap_or_default();
        self.on_node(&first).await?;
        loop {
            let wp = WatchParams::default()
                .fields(&format!("metadata.name={}", self.node))
                .timeout(290);
            let mut events = self.nodes().watch(&wp, &rv).await?.boxed();
            while let Some(ev) = events.try_next().await? {
                match ev {
                    WatchEvent::Added(n) | WatchEvent::Modified(n) => {
                        rv = n.metadata.resource_version.clone().unwrap_or_default();
                        self.on_node(&n).await?;
                    }
                    WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                    WatchEvent::Deleted(_) => {}
                    WatchEvent::Error(e) => {
                        // 410 Gone: our resourceVersion is too old; read the node again.
                        let n = self.nodes().get(&self.node).await?;
                        tracing::debug!("watch error {}: re-read the node", e.code);
                        rv = n.metadata.resource_version.clone().unwrap_or_default();
                        self.on_node(&n).await?;
                    }
                }
            }
            // The watch timed out: a blessing may have happened meanwhile.
            self.check_blessed().await?;
        }
    }

    async fn check_blessed(&mut self) -> Result<(), Error> {
        if matches!(self.state, State::Verifying(_)) {
            let (version, blessed) = self.device.running().await?;
            self.apply(Event::Booted { version, blessed }).await?;
        }
        Ok(())
    }

    async fn on_node(&mut self, n: &Node) -> Result<(), Error> {
        self.check_blessed().await?;
        let Some((version, bundle_url)) = protocol::target_of(n) else {
            return Ok(());
        };
        let osupgrade = n
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(protocol::OSUPGRADE))
            .cloned();
        let t = Target {
            version,
            bundle_url,
            osupgrade,
            manifest_digest: None,
        };
        if !node::takes_targets(&self.state, &t) {
            return Ok(());
        }
        let (running, _) = self.device.running().await?;
        if running == t.version {
            // Nothing to do for it but say so (even if its OSUpgrade is gone by now).
            return self.apply(Event::AlreadyRunning(t)).await.map(drop);
        }
        // Checked against the OSUpgrade it names before anything is done for it.
        let osu = match &t.osupgrade {
            Some(name) => {
                Api::<OSUpgrade>::all(self.client.clone())
                    .get_opt(name)
                    .await?
            }
            None => None,
        };
        let labels = n.metadata.labels.clone().unwrap_or_default();
        let ev = match crate::admit::admit(&t, osu.as_ref(), &labels) {
            Err(why) => {
                tracing::info!("refusing target {}: {why}", t.version);
                Event::Refused(t, why)
            }
            Ok(t) => Event::NewTarget(t),
        };
        self.apply(ev).await.map(drop)
    }

    /// Feeds an event through the state machine: the new state is committed before its actions
    /// run; actions' results are fed back.
    /// Returns how many actions ran.
    pub async fn apply(&mut self, ev: Event) -> Result<usize, Error> {
        let mut queue = VecDeque::from([ev]);
        let mut n = 0;
        while let Some(ev) = queue.pop_front() {
            let (next, actions) = node::step(&self.state, &ev);
            if next != self.state {
                self.file.commit(&next)?;
                self.state = next;
            }
            for a in actions {
                n += 1;
                if let Some(ev) = self.act(a).await? {
                    queue.push_back(ev);
                }
            }
        }
        Ok(n)
    }

    async fn act_all(&mut self, actions: Vec<Action>) -> Result<(), Error> {
        for a in actions {
            if let Some(ev) = self.act(a).await? {
                self.apply(ev).await?;
            }
        }
        Ok(())
    }

    fn target(&self) -> Option<Target> {
        node::target(&self.state).cloned()
    }

    async fn drain_policy(&self) -> DrainPolicy {
        let Some(name) = self.target().and_then(|t| t.osupgrade) else {
            return DrainPolicy::default();
        };
        match Api::<OSUpgrade>::all(self.client.clone()).get(&name).await {
            Ok(o) => o.spec.drain,
            Err(e) => {
                tracing::warn!("reading OSUpgrade {name}: {e}; draining with the defaults");
                DrainPolicy::default()
            }
        }
    }

    /// Runs one action; returns the event it produced.
    async fn act(&mut self, a: Action) -> Result<Option<Event>, Error> {
        Ok(match a {
            Action::Stage(t) => {
                tracing::info!("staging {} from {}", t.version, t.bundle_url);
                Some(match self.device.stage(&t).await {
                    Ok(()) => Event::Staged,
                    Err(e) => Event::StageFailed(e.to_string()),
                })
            }
            Action::Cordon => {
                crate::drain::cordon(&self.client, &self.node).await?;
                None
            }
            Action::Drain => {
                let policy = self.drain_policy().await;
                Some(
                    match crate::drain::drain(&self.client, &self.node, &policy).await {
                        Ok(d) => {
                            tracing::info!(
                                "drained ({} evicted, {} skipped)",
                                d.evicted.len(),
                                d.skipped.len()
                            );
                            Event::Drained
                        }
                        Err(crate::drain::DrainError::Kube(e)) => return Err(e.into()),
                        Err(e) => Event::DrainFailed(e.to_string()),
                    },
                )
            }
            Action::FlipAndReboot => {
                tracing::info!("switching to the staged slot and rebooting");
                match self.device.flip_and_reboot().await {
                    Ok(()) => None,
                    Err(e) => Some(Event::FlipFailed(e.to_string())),
                }
            }
            Action::Uncordon => {
                crate::drain::uncordon(&self.client, &self.node).await?;
                None
            }
            Action::Report(phase) => {
                self.report(&phase).await?;
                None
            }
        })
    }

    async fn report(&self, phase: &Phase) -> Result<(), Error> {
        let (running, _) = self.device.running().await?;
        let target = self.target().map(|t| t.version).unwrap_or_default();
        let pp = PatchParams::default();
        let nodes = self.nodes();
        nodes
            .patch(
                &self.node,
                &pp,
                &Patch::Merge(protocol::report_patch(&running, &target, phase)),
            )
            .await?;
        nodes
            .patch_status(
                &self.node,
                &pp,
                &Patch::Strategic(protocol::condition_patch(
                    &running,
                    &target,
                    phase,
                    &now_rfc3339(),
                )),
            )
            .await?;
        Ok(())
    }
}

/// An error for a log line: its message and, when not already in it, its root cause (for a
/// refused connection kube only says "client error (Connect)").
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let top = e.to_string();
    let mut root = e;
    while let Some(s) = root.source() {
        root = s;
    }
    let cause = root.to_string();
    if top.contains(&cause) {
        top
    } else {
        format!("{top}: {cause}")
    }
}

fn health_of(s: &State) -> Health {
    match s {
        State::Failed { .. } | State::RolledBack(_) => Health::Degraded,
        _ => Health::Healthy,
    }
}

/// Patches the heartbeat every `every` (the first one at once). A failed beat is logged; the
/// session's own calls notice a lost connection.
pub async fn heartbeat(client: Client, node: String, every: Duration, health: Health) {
    let nodes: Api<Node> = Api::all(client);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let p = protocol::heartbeat_patch(&now_rfc3339(), health);
        if let Err(e) = nodes
            .patch(&node, &PatchParams::default(), &Patch::Merge(p))
            .await
        {
            tracing::warn!("heartbeat: {e}");
        }
    }
}
