use super::*;

fn t(v: &str) -> Target {
    Target {
        version: v.into(),
        bundle_url: format!("http://repo/{v}"),
        osupgrade: None,
        manifest_digest: None,
    }
}

fn booted(v: &str, blessed: bool) -> Event {
    Event::Booted {
        version: v.into(),
        blessed,
    }
}

#[test]
fn a_rollback_while_verifying_a_failed_flip_and_a_target_already_run() {
    // Booted the new slot, never blessed; the loader went back to 1.
    let (s, a) = step(&State::Verifying(t("2")), &booted("1", true));
    assert_eq!(s, State::RolledBack(t("2")));
    assert_eq!(a, vec![Action::Uncordon, Action::Report(Phase::RolledBack)]);
    // Still on 2 and not yet blessed: keep waiting.
    assert_eq!(
        step(&State::Verifying(t("2")), &booted("2", false)).1,
        vec![]
    );
    // activate failed: no reboot into an unflipped slot, the node is given back.
    let (s, a) = step(&State::Rebooting(t("2")), &Event::FlipFailed("boom".into()));
    assert!(matches!(s, State::Failed { .. }));
    assert_eq!(a[0], Action::Uncordon);
    // A node handed the version it runs is done without staging or draining.
    let (s, a) = step(&State::Idle, &Event::AlreadyRunning(t("2")));
    assert_eq!(s, State::Done(t("2")));
    assert_eq!(a, vec![Action::Uncordon, Action::Report(Phase::Done)]);
    assert_eq!(
        step(&State::Staging(t("3")), &Event::AlreadyRunning(t("2"))).1,
        vec![]
    );
    assert_eq!(resume(&State::Idle), vec![Action::Report(Phase::Idle)]);
}

#[test]
fn a_refused_target_fails_without_staging_and_only_once() {
    let ev = Event::Refused(t("2"), "no OSUpgrade".into());
    let (s, a) = step(&State::Idle, &ev);
    let reason = "target refused: no OSUpgrade".to_string();
    assert_eq!(
        s,
        State::Failed {
            target: t("2"),
            reason: reason.clone()
        }
    );
    assert_eq!(a, vec![Action::Report(Phase::Failed(reason))]);
    assert_eq!(step(&s, &ev), (s.clone(), vec![]));
    // Checked again, and taken once its OSUpgrade admits it.
    assert!(takes_targets(&s, &t("2")));
    let (s2, a) = step(&s, &Event::NewTarget(t("2")));
    assert_eq!(s2, State::Staging(t("2")));
    assert_eq!(a[1], Action::Stage(t("2")));
    // Other failures are not retried without a change.
    let drained = State::Failed {
        target: t("2"),
        reason: "drain failed: x".into(),
    };
    assert!(!takes_targets(&drained, &t("2")));
    assert_eq!(step(&drained, &Event::NewTarget(t("2"))).1, vec![]);
    // Never in the middle of an upgrade.
    assert_eq!(step(&State::Draining(t("3")), &ev).1, vec![]);
    assert!(!takes_targets(&State::Draining(t("3")), &t("2")));
    assert!(!takes_targets(&State::Done(t("2")), &t("2")));
    assert!(takes_targets(&State::Done(t("2")), &t("3")));
}

#[test]
fn happy_path_stages_before_cordon_and_flips_after_the_drain() {
    let (s, a) = step(&State::Idle, &Event::NewTarget(t("2")));
    assert_eq!(
        a,
        vec![Action::Report(Phase::Staging), Action::Stage(t("2"))]
    );
    let (s, a) = step(&s, &Event::Staged);
    assert_eq!(
        a,
        vec![
            Action::Report(Phase::Draining),
            Action::Cordon,
            Action::Drain
        ]
    );
    let (s, a) = step(&s, &Event::Drained);
    assert_eq!(
        a,
        vec![Action::Report(Phase::Rebooting), Action::FlipAndReboot]
    );
    let (s, a) = step(&s, &booted("2", false));
    assert_eq!(
        (s.clone(), a),
        (
            State::Verifying(t("2")),
            vec![Action::Report(Phase::Verifying)]
        )
    );
    let (s, a) = step(&s, &booted("2", true));
    assert_eq!(s, State::Done(t("2")));
    assert_eq!(a, vec![Action::Uncordon, Action::Report(Phase::Done)]);
    // The same target again: nothing.
    assert_eq!(step(&s, &Event::NewTarget(t("2"))), (s.clone(), vec![]));
}

#[test]
fn a_failed_drain_uncordons_without_flipping() {
    let s = State::Draining(t("2"));
    let (s, a) = step(
        &s,
        &Event::DrainFailed("PodDisruptionBudget refused until 300 s".into()),
    );
    assert!(matches!(s, State::Failed { .. }));
    assert_eq!(a[0], Action::Uncordon);
    assert!(!a.contains(&Action::FlipAndReboot));
    // A failed target is not retried; a new one is.
    assert_eq!(step(&s, &Event::NewTarget(t("2"))).1, vec![]);
    assert_eq!(
        step(&s, &Event::NewTarget(t("3"))).0,
        State::Staging(t("3"))
    );
}

#[test]
fn booting_the_old_version_after_the_flip_is_a_rollback() {
    let s = State::Rebooting(t("2"));
    let (s, a) = step(&s, &booted("1", true));
    assert_eq!(s, State::RolledBack(t("2")));
    assert_eq!(a, vec![Action::Uncordon, Action::Report(Phase::RolledBack)]);
}

#[test]
fn mid_upgrade_reboots_resume_from_the_committed_state() {
    let d = tempfile::tempdir().unwrap();
    let f = StateFile::new(&d.path().join("agent.json"));
    assert_eq!(f.load().unwrap(), State::Idle);
    // Staged, cordoned, draining — then the power goes.
    let (s, _) = step(&State::Idle, &Event::NewTarget(t("2")));
    let (s, _) = step(&s, &Event::Staged);
    f.commit(&s).unwrap();
    let after = f.load().unwrap();
    assert_eq!(after, State::Draining(t("2")));
    let (s, a) = step(&after, &booted("1", true));
    assert_eq!(s, State::Draining(t("2")));
    assert_eq!(
        a,
        vec![
            Action::Report(Phase::Draining),
            Action::Cordon,
            Action::Drain
        ]
    );
    // Drained, flipped, rebooted into 2: the committed Rebooting state meets the new boot.
    let (s, _) = step(&s, &Event::Drained);
    f.commit(&s).unwrap();
    let (s, a) = step(&f.load().unwrap(), &booted("2", true));
    assert_eq!(s, State::Done(t("2")));
    assert_eq!(a, vec![Action::Uncordon, Action::Report(Phase::Done)]);
    assert!(!d.path().join("agent.json.tmp").exists());
    std::fs::write(&f.path, "{").unwrap();
    assert!(f.load().unwrap_err().to_string().contains("agent.json"));
}

#[test]
fn the_same_boot_rebooting_flips_again_and_the_boot_id_is_kept_apart() {
    // The agent restarted before the reboot: no boot decides, the flip is asked again.
    assert_eq!(
        resume(&State::Rebooting(t("2"))),
        vec![Action::Report(Phase::Rebooting), Action::FlipAndReboot]
    );
    let d = tempfile::tempdir().unwrap();
    let f = StateFile::new(&d.path().join("agent.json"));
    assert_eq!(f.last_boot().unwrap(), None);
    f.commit(&State::Rebooting(t("2"))).unwrap();
    f.record_boot("6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
        .unwrap();
    assert_eq!(
        f.last_boot().unwrap().as_deref(),
        Some("6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
    );
    assert_eq!(f.load().unwrap(), State::Rebooting(t("2")));
}
