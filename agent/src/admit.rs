//! The agent's own check of a target before it acts on it (pure). The Node's annotations say
//! which OSUpgrade handed the target out; that OSUpgrade must exist, select this node and name
//! the same version and bundle. Otherwise the target is refused: an annotation written by
//! anyone but the operator of a live OSUpgrade (a stolen credential, a stale leftover) never
//! drains or reboots a node. The admitted target carries the OSUpgrade's manifest digest,
//! which kiln-updater then requires of the bundle.

use crate::crd::OSUpgrade;
use crate::node::Target;
use std::collections::BTreeMap;

/// Whether `s` has the form of a manifest digest (`sha256:` and 64 lowercase hex digits), as
/// kiln-updater's `--expect-manifest` requires (`kiln_updater::bundle::expected`; the agent
/// does not link the updater's library, only runs its binary).
pub fn is_manifest_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// `t` as handed out on the Node, checked against the OSUpgrade it names (`osu`: `None` when
/// no such OSUpgrade exists) and this node's labels.
pub fn admit(
    t: &Target,
    osu: Option<&OSUpgrade>,
    labels: &BTreeMap<String, String>,
) -> Result<Target, String> {
    let Some(name) = &t.osupgrade else {
        return Err(format!(
            "target {} names no OSUpgrade (annotation kiln.dev/osupgrade)",
            t.version
        ));
    };
    let Some(o) = osu else {
        return Err(format!(
            "target {} names OSUpgrade {name}, which does not exist",
            t.version
        ));
    };
    let spec = &o.spec;
    if let Some((k, v)) = spec
        .node_selector
        .iter()
        .find(|(k, v)| labels.get(*k) != Some(*v))
    {
        return Err(format!(
            "OSUpgrade {name} does not select this node (it needs label {k}={v})"
        ));
    }
    if spec.target_version != t.version || spec.bundle_url != t.bundle_url {
        return Err(format!(
            "OSUpgrade {name} names {} from {}, not {} from {}",
            spec.target_version, spec.bundle_url, t.version, t.bundle_url
        ));
    }
    if let Some(d) = &spec.manifest_digest {
        if !is_manifest_digest(d) {
            return Err(format!(
                "OSUpgrade {name}: spec.manifestDigest {d:?} is not sha256: and 64 lowercase hex digits"
            ));
        }
    }
    Ok(Target {
        manifest_digest: spec.manifest_digest.clone(),
        ..t.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::OSUpgradeSpec;

    fn osu(selector: &[(&str, &str)], digest: Option<&str>) -> OSUpgrade {
        OSUpgrade::new(
            "os-2",
            OSUpgradeSpec {
                target_version: "2.0.0".into(),
                bundle_url: "http://repo/2".into(),
                node_selector: selector
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                max_unavailable: "1".into(),
                drain: Default::default(),
                manifest_digest: digest.map(str::to_string),
                maintenance_window: None,
            },
        )
    }

    fn handed(version: &str, url: &str, osupgrade: Option<&str>) -> Target {
        Target {
            version: version.into(),
            bundle_url: url.into(),
            osupgrade: osupgrade.map(str::to_string),
            manifest_digest: None,
        }
    }

    #[test]
    fn only_a_target_its_osupgrade_names_for_this_node() {
        let labels: BTreeMap<String, String> = [("pool".to_string(), "w".to_string())].into();
        let d = format!("sha256:{}", "ab".repeat(32));
        let t = handed("2.0.0", "http://repo/2", Some("os-2"));
        let ok = admit(&t, Some(&osu(&[("pool", "w")], Some(&d))), &labels).unwrap();
        assert_eq!(ok.manifest_digest.as_deref(), Some(d.as_str()));
        assert_eq!(ok.version, "2.0.0");

        let why = |t: &Target, o: Option<&OSUpgrade>| admit(t, o, &labels).unwrap_err();
        assert!(why(&handed("2.0.0", "http://repo/2", None), None).contains("names no OSUpgrade"));
        assert!(why(&t, None).contains("does not exist"));
        assert!(why(&t, Some(&osu(&[("pool", "db")], None))).contains("needs label pool=db"));
        let e = why(
            &handed("9.9.9", "http://repo/2", Some("os-2")),
            Some(&osu(&[], None)),
        );
        assert!(
            e.contains("names 2.0.0 from http://repo/2, not 9.9.9"),
            "{e}"
        );
        let e = why(
            &handed("2.0.0", "http://evil/2", Some("os-2")),
            Some(&osu(&[], None)),
        );
        assert!(e.contains("not 2.0.0 from http://evil/2"), "{e}");
        assert!(why(&t, Some(&osu(&[], Some("sha256:AB")))).contains("manifestDigest"));
    }
}
