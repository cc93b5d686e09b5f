//! The CI sample of the power-cut campaign: every failpoint systemd-boot meets, once (install,
//! boot-time bless, rollback, reconcile after a failed slot), each followed by a boot of the
//! same disk and the invariant checks of `qemu_tests::faults`. Two disks, so the two halves run
//! in parallel. The full campaign with random cuts and both backends:
//! `cargo xtask faults --cuts N`.

use imagebuilder::spec::Loader;
use qemu_tests::faults::{self, Campaign, Cut, Phase};

fn chain(cuts: Vec<Cut>) {
    let mut c = Campaign::start(Loader::SystemdBoot).unwrap_or_else(|e| panic!("{e}"));
    let outcomes: Vec<_> = cuts.iter().map(|cut| c.cut(cut)).collect();
    let table = faults::table(&outcomes);
    println!("{table}");
    if outcomes.iter().any(|o| !o.valid()) {
        let log = c.log.join("\n");
        let lines: Vec<&str> = log.lines().collect();
        panic!(
            "{table}\nconsole around the failures:\n{}",
            lines[lines.len().saturating_sub(150)..].join("\n")
        );
    }
}

fn is_install(c: &Cut) -> bool {
    matches!(
        c,
        Cut::Failpoint {
            phase: Phase::Install,
            ..
        }
    )
}

#[test]
fn power_cut_at_every_install_failpoint_systemd_boot() {
    let cuts = faults::failpoint_cuts(Loader::SystemdBoot);
    chain(cuts.into_iter().filter(is_install).collect());
}

#[test]
fn power_cut_at_every_bless_rollback_reconcile_failpoint_systemd_boot() {
    let cuts = faults::failpoint_cuts(Loader::SystemdBoot);
    chain(cuts.into_iter().filter(|c| !is_install(c)).collect());
}
