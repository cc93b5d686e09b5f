//! deploy/: the CRD matches the Rust types (regenerate with `kiln-operator crd >
//! deploy/crd.yaml`), and every manifest parses as the Kubernetes object it claims to be (into
//! k8s-openapi's types, compared back as JSON so a misspelt field is not silently dropped);
//! RBAC grants what the code calls and nothing more.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kiln_agent::crd::OSUpgrade;
use kube::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::PathBuf;

fn deploy(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn docs(name: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(&deploy(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// Parses `v` as `T` and checks nothing was dropped on the way.
fn typed<T: DeserializeOwned + serde::Serialize>(v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
    assert_eq!(
        &serde_json::to_value(&t).unwrap(),
        v,
        "fields lost in parsing"
    );
    t
}

#[test]
fn the_crd_is_generated_from_the_types() {
    let on_disk = deploy("crd.yaml");
    assert_eq!(
        on_disk,
        kiln_agent::crd::crd_yaml(),
        "deploy/crd.yaml drifted from agent/src/crd.rs: run `cargo run -p kiln-agent --bin kiln-operator -- crd > deploy/crd.yaml`"
    );
    let d = docs("crd.yaml");
    assert_eq!(d.len(), 1);
    let crd: CustomResourceDefinition = typed(&d[0]);
    assert_eq!(crd, OSUpgrade::crd());
    assert_eq!(crd.spec.scope, "Cluster");
    let v = &crd.spec.versions[0];
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let cols: Vec<&str> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        cols,
        [
            "Target",
            "Phase",
            "Selected",
            "Updated",
            "InProgress",
            "Failed",
            "Age"
        ]
    );
}

#[test]
fn the_example_is_a_valid_osupgrade() {
    let d = docs("osupgrade-example.yaml");
    let o: OSUpgrade = serde_json::from_value(d[0].clone()).unwrap();
    assert_eq!(o.spec.target_version, "2.0.0");
    assert_eq!(o.spec.max_unavailable, "2");
    assert!(kiln_agent::admit::is_manifest_digest(
        o.spec.manifest_digest.as_deref().unwrap()
    ));
    kiln_agent::budget::MaxUnavailable::parse(&o.spec.max_unavailable).unwrap();
    let w = o.spec.maintenance_window.unwrap();
    kiln_agent::window::Window::parse(&w.days, &w.start, w.duration_minutes).unwrap();
}

fn role(d: &[Value], name: &str) -> ClusterRole {
    let v = d
        .iter()
        .find(|v| v["kind"] == "ClusterRole" && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no ClusterRole {name}"));
    typed(v)
}

/// Every (apiGroup, resource, verb) a role grants.
fn grants(r: &ClusterRole) -> Vec<String> {
    let mut g = vec![];
    for rule in r.rules.iter().flatten() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for grp in rule.api_groups.iter().flatten() {
            for res in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    assert_ne!(v, "*", "no wildcards");
                    g.push(format!("{grp}/{res}:{v}"));
                }
            }
        }
    }
    g.sort();
    g
}

#[test]
fn rbac_parses_and_is_least_privilege() {
    let d = docs("rbac.yaml");
    for v in &d {
        match v["kind"].as_str().unwrap() {
            "Namespace" => drop(typed::<Namespace>(v)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(v)),
            "ClusterRole" => drop(typed::<ClusterRole>(v)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(v)),
            k => panic!("unexpected {k} in rbac.yaml"),
        }
    }
    // Exactly the calls operator.rs makes.
    assert_eq!(
        grants(&role(&d, "kiln-operator")),
        [
            "/nodes:list",
            "/nodes:patch",
            "kiln.dev/osupgrades/status:patch",
            "kiln.dev/osupgrades:get",
            "kiln.dev/osupgrades:list",
            "kiln.dev/osupgrades:watch",
        ]
    );
    // Exactly the calls daemon.rs and drain.rs make: evictions, never pod deletion.
    assert_eq!(
        grants(&role(&d, "kiln-agent")),
        [
            "/nodes/status:patch",
            "/nodes:get",
            "/nodes:patch",
            "/nodes:watch",
            "/pods/eviction:create",
            "/pods:get",
            "/pods:list",
            "kiln.dev/osupgrades:get",
        ]
    );
    // Creating upgrades gives no power over nodes or pods.
    let admin = grants(&role(&d, "kiln-upgrade-admin"));
    assert!(
        admin.iter().all(|g| g.starts_with("kiln.dev/osupgrades:")),
        "{admin:?}"
    );
    assert!(admin.contains(&"kiln.dev/osupgrades:create".to_string()));
    // Bindings point at roles that exist.
    for b in d.iter().filter(|v| v["kind"] == "ClusterRoleBinding") {
        let b: ClusterRoleBinding = typed(b);
        role(&d, &b.role_ref.name);
    }
}

#[test]
fn the_operator_deployment_parses_and_uses_its_service_account() {
    let d = docs("operator.yaml");
    let dep: Deployment = typed(&d[0]);
    let spec = dep.spec.unwrap().template.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("kiln-operator"));
    assert_eq!(
        spec.containers[0].args.as_deref(),
        Some(&["run".to_string()][..])
    );
}

#[test]
fn the_agent_policy_parses_and_binds_each_policy_to_deny() {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    // What it allows and refuses is checked against a real API server (tests/cluster.rs).
    let d = docs("agent-policy.yaml");
    let policies: Vec<ValidatingAdmissionPolicy> = d
        .iter()
        .filter(|v| v["kind"] == "ValidatingAdmissionPolicy")
        .map(typed)
        .collect();
    let bindings: Vec<ValidatingAdmissionPolicyBinding> = d
        .iter()
        .filter(|v| v["kind"] == "ValidatingAdmissionPolicyBinding")
        .map(typed)
        .collect();
    assert_eq!((policies.len(), bindings.len(), d.len()), (2, 2, 4));
    for p in &policies {
        let name = p.metadata.name.as_deref().unwrap();
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.failure_policy.as_deref(), Some("Fail"), "{name}");
        let m = spec.match_conditions.as_ref().unwrap();
        assert_eq!(
            m[0].expression, "'kiln:agents' in request.userInfo.groups",
            "{name} applies to the agents only"
        );
        let b = bindings
            .iter()
            .find(|b| b.spec.as_ref().unwrap().policy_name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} has no binding"));
        assert_eq!(
            b.spec.as_ref().unwrap().validation_actions.as_deref(),
            Some(&["Deny".to_string()][..])
        );
    }
}
