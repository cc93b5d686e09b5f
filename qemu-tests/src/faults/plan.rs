//! The cuts of a campaign, generated without I/O: one per failpoint of the install path for a
//! loader, or random moments of an HTTP install replayable from a seed.

use imagebuilder::spec::Loader;
use kiln_boot::failpoint;
use std::fmt;

/// Where the power goes off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cut {
    /// A failpoint (`name@n`, action `poweroff`), armed for one phase of an update.
    Failpoint {
        phase: Phase,
        name: String,
        nth: u32,
    },
    /// QEMU is killed this many milliseconds after `install` was typed.
    Random { seed: u64, after_ms: u64 },
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cut::Failpoint { phase, name, nth } => write!(f, "{phase:?}: {name}@{nth}"),
            Cut::Random { seed, after_ms } => write!(f, "random {after_ms} ms (seed {seed})"),
        }
    }
}

/// When a failpoint is met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `kiln-updater install` (armed through `KILN_FAILPOINTS`).
    Install,
    /// mark-good at the first boot of a staged slot (armed through the one-shot file).
    Bless,
    /// `kiln-updater rollback` to the other good slot.
    Rollback,
    /// `reconcile` at the boot that follows a slot which used up its tries (armed through the
    /// one-shot file before installing a bundle whose initramfs panics).
    Reconcile,
}

/// The failpoint cuts for a boot backend: every failpoint that backend can meet, in each
/// phase it is met in.
pub fn failpoint_cuts(loader: Loader) -> Vec<Cut> {
    use Phase::*;
    let fp = |phase: Phase, name: &str, nth: u32| Cut::Failpoint {
        phase,
        name: name.to_string(),
        nth,
    };
    // State saves: install 1 after the clear, 2 after the stage; mark-good 1.
    let mut cuts = vec![
        fp(Install, "install.cleared", 1),
        fp(Install, "state.written", 1),
        fp(Install, "install.root-chunk", 1),
        fp(Install, "install.root-chunk", 40),
        fp(Install, "install.root-written", 1),
        fp(Install, "install.kernel-written", 1),
        fp(Install, "install.kernel-renamed", 1),
        fp(Install, "install.initrd-renamed", 1),
        fp(Install, "install.staged", 1),
        fp(Install, "state.written", 2),
    ];
    // The backend's own install points come while the target slot still has an entry for the
    // clear to remove (after the cuts above, it holds the staged version).
    match loader {
        Loader::SystemdBoot => cuts.extend([
            fp(Install, "sdboot.stale-removed", 1),
            fp(Install, "sdboot.entry-written", 1),
            fp(Install, "sdboot.entry-renamed", 1),
        ]),
        Loader::Grub => cuts.extend([
            fp(Install, "grub.env-written", 1),
            fp(Install, "grub.env-written", 2),
        ]),
    }
    cuts.extend([
        fp(Bless, "bless.committed", 1),
        fp(Bless, "state.written", 1),
        fp(Rollback, "rollback.committed", 1),
        fp(Reconcile, "reconcile.committed", 1),
    ]);
    match loader {
        // The bless renames the entry; the rollback rewrites the other's in place.
        Loader::SystemdBoot => cuts.extend([
            fp(Bless, "sdboot.entry-renamed", 1),
            fp(Rollback, "sdboot.entry-written", 1),
        ]),
        // grubenv is rewritten in place at the bless and the rollback.
        Loader::Grub => cuts.extend([
            fp(Bless, "grub.env-written", 1),
            fp(Rollback, "grub.env-written", 1),
        ]),
    }
    cuts
}

/// `n` random cuts from `seed`, spread over the first `span_ms` of an install.
pub fn random_cuts(seed: u64, n: usize, span_ms: u64) -> Vec<Cut> {
    (0..n as u64)
        .map(|i| {
            let s = seed.wrapping_add(i);
            Cut::Random {
                seed: s,
                after_ms: splitmix(s) % span_ms.max(1),
            }
        })
        .collect()
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Every failpoint name appears in the cuts of at least one backend.
pub fn unlisted_failpoints() -> Vec<&'static str> {
    let all: Vec<Cut> = failpoint_cuts(Loader::SystemdBoot)
        .into_iter()
        .chain(failpoint_cuts(Loader::Grub))
        .collect();
    failpoint::ALL
        .iter()
        .copied()
        .filter(|n| {
            !all.iter()
                .any(|c| matches!(c, Cut::Failpoint { name, .. } if name == n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_lists_cover_every_failpoint() {
        assert_eq!(unlisted_failpoints(), Vec::<&str>::new());
    }

    #[test]
    fn random_cuts_replay_from_their_seed() {
        let a = random_cuts(7, 5, 10_000);
        assert_eq!(a, random_cuts(7, 5, 10_000));
        assert_ne!(a, random_cuts(8, 5, 10_000));
        // cut i of seed s is cut 0 of seed s + i
        assert_eq!(a[3], random_cuts(10, 1, 10_000)[0]);
        assert!(a
            .iter()
            .all(|c| matches!(c, Cut::Random { after_ms, .. } if *after_ms < 10_000)));
    }
}
