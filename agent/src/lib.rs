//! Upgrades triggered from the Kubernetes cluster (issue 6), the parts that need no API server:
//!
//! - [`budget`]: `maxUnavailable` as a number or a percentage of the selected nodes;
//! - [`window`]: maintenance windows (weekdays and a UTC time range, possibly past midnight);
//! - [`rollout`]: the operator's pure planner — which nodes get the target next, when the
//!   rollout stops — computed only from what the nodes report, so a restarted operator resumes
//!   without scheduling a node twice;
//! - [`node`]: the node agent's state machine (stage, cordon, drain, flip, verify) with its
//!   state committed to persist so a reboot in the middle resumes it;
//! - [`admit`]: the agent's check of a target against the OSUpgrade it names;
//! - [`credentials`]: the agent's kubeconfig must be private to its owner;
//! - [`console`]: the agent's console lines, one write each;
//! - [`backoff`]: reconnect backoff (1 s → 60 s) and the heartbeat's healthy / degraded /
//!   offline classification.

pub mod admit;
pub mod backoff;
pub mod budget;
pub mod console;
pub mod crd;
pub mod credentials;
pub mod daemon;
pub mod drain;
pub mod node;
pub mod operator;
pub mod protocol;
pub mod rollout;
pub mod updater;
pub mod window;
