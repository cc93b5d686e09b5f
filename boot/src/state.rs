//! The A/B state as a pure value. Methods only change the in-memory value and say so; a
//! backend (e.g. [`crate::systemd_boot::EntriesDir`]) reads it from and commits it to disk.
//! Transitions are guarded: the booted slot is never overwritten, and a slot is only staged
//! with a [`VerifiedSlot`], which exists only once its content matched the expected digest.

use crate::Slot;
use std::collections::BTreeMap;

/// Boot health of a slot that has a loader entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Blessed: boots without counting.
    Good,
    /// Staged: the loader counts tries; at zero left it falls back to the other slot.
    Pending { tries_left: u8, tries_done: u8 },
}

/// A slot with a loader entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotEntry {
    /// Image version the slot holds.
    pub version: String,
    /// Higher boots first (the loader sorts entries by it).
    pub priority: u32,
    pub health: Health,
}

impl SlotEntry {
    /// Whether the loader would still pick this entry.
    pub fn bootable(&self) -> bool {
        !matches!(self.health, Health::Pending { tries_left: 0, .. })
    }
}

/// Evidence that a slot's content was fully written and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSlot {
    slot: Slot,
    version: String,
}

impl VerifiedSlot {
    /// Succeeds only when the digest read back from the slot equals the expected one.
    pub fn check(
        slot: Slot,
        version: &str,
        expected_sha256: &str,
        actual_sha256: &str,
    ) -> Option<VerifiedSlot> {
        (!expected_sha256.is_empty() && expected_sha256 == actual_sha256).then(|| VerifiedSlot {
            slot,
            version: version.to_string(),
        })
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    #[error("slot {0} is the booted slot and cannot be changed")]
    Booted(Slot),
    #[error("slot {0} was not made unbootable before writing it")]
    NotCleared(Slot),
    #[error("slot {0} is not pending, nothing to bless")]
    NotPending(Slot),
    #[error("slot {0} has no good entry to roll back to")]
    NoGoodSlot(Slot),
    #[error("tries must be between 1 and 9")]
    Tries,
}

/// Loader entries of both slots (`None`: no entry, the slot is not bootable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootState {
    pub entries: BTreeMap<Slot, SlotEntry>,
}

impl BootState {
    /// The slot the loader boots next: the bootable entry with the highest priority.
    pub fn next_boot(&self) -> Option<Slot> {
        self.entries
            .iter()
            .filter(|(_, e)| e.bootable())
            .max_by_key(|(s, e)| (e.priority, std::cmp::Reverse(**s)))
            .map(|(s, _)| *s)
    }

    fn top_priority(&self) -> u32 {
        self.entries.values().map(|e| e.priority).max().unwrap_or(0)
    }

    /// In memory: removes `target`'s entry before its partition is written.
    pub fn clear(&mut self, target: Slot, booted: Slot) -> Result<(), TransitionError> {
        if target == booted {
            return Err(TransitionError::Booted(target));
        }
        self.entries.remove(&target);
        Ok(())
    }

    /// In memory: makes a verified, cleared slot the next boot, with `tries` counted tries.
    pub fn stage(
        &mut self,
        v: VerifiedSlot,
        booted: Slot,
        tries: u8,
    ) -> Result<(), TransitionError> {
        if v.slot == booted {
            return Err(TransitionError::Booted(v.slot));
        }
        if self.entries.contains_key(&v.slot) {
            return Err(TransitionError::NotCleared(v.slot));
        }
        if !(1..=9).contains(&tries) {
            return Err(TransitionError::Tries);
        }
        let priority = self.top_priority() + 1;
        self.entries.insert(
            v.slot,
            SlotEntry {
                version: v.version,
                priority,
                health: Health::Pending {
                    tries_left: tries,
                    tries_done: 0,
                },
            },
        );
        Ok(())
    }

    /// In memory: blesses the booted slot (drops its counter).
    pub fn bless(&mut self, booted: Slot) -> Result<(), TransitionError> {
        match self.entries.get_mut(&booted) {
            Some(e) if matches!(e.health, Health::Pending { .. }) => {
                e.health = Health::Good;
                Ok(())
            }
            _ => Err(TransitionError::NotPending(booted)),
        }
    }

    /// In memory: makes the other slot, which must be good, the next boot.
    pub fn rollback(&mut self, booted: Slot) -> Result<(), TransitionError> {
        let other = booted.other();
        let top = self.top_priority();
        match self.entries.get_mut(&other) {
            Some(e) if e.health == Health::Good => {
                e.priority = top + 1;
                Ok(())
            }
            _ => Err(TransitionError::NoGoodSlot(other)),
        }
    }

    /// A staged slot that is not the booted one and has no tries left: the loader fell back.
    pub fn failed_slot(&self, booted: Slot) -> Option<(Slot, &SlotEntry)> {
        let other = booted.other();
        self.entries
            .get(&other)
            .filter(|e| {
                !e.bootable() && e.priority > self.entries.get(&booted).map_or(0, |b| b.priority)
            })
            .map(|e| (other, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(version: &str, priority: u32) -> SlotEntry {
        SlotEntry {
            version: version.into(),
            priority,
            health: Health::Good,
        }
    }

    fn v(slot: Slot, version: &str) -> VerifiedSlot {
        VerifiedSlot::check(slot, version, "ab", "ab").unwrap()
    }

    #[test]
    fn update_cycle() {
        let mut s = BootState::default();
        s.entries.insert(Slot::A, good("1", 1));
        assert_eq!(s.next_boot(), Some(Slot::A));
        s.clear(Slot::B, Slot::A).unwrap();
        s.stage(v(Slot::B, "2"), Slot::A, 3).unwrap();
        assert_eq!(s.next_boot(), Some(Slot::B));
        s.bless(Slot::B).unwrap();
        assert_eq!(s.entries[&Slot::B].health, Health::Good);
        s.rollback(Slot::B).unwrap();
        assert_eq!(s.next_boot(), Some(Slot::A));
    }

    #[test]
    fn guards() {
        let mut s = BootState::default();
        s.entries.insert(Slot::A, good("1", 1));
        s.entries.insert(Slot::B, good("0", 0));
        assert_eq!(
            s.clear(Slot::A, Slot::A),
            Err(TransitionError::Booted(Slot::A))
        );
        assert_eq!(
            s.stage(v(Slot::B, "2"), Slot::A, 3),
            Err(TransitionError::NotCleared(Slot::B))
        );
        assert_eq!(
            s.stage(v(Slot::A, "2"), Slot::A, 3),
            Err(TransitionError::Booted(Slot::A))
        );
        s.clear(Slot::B, Slot::A).unwrap();
        assert_eq!(
            s.stage(v(Slot::B, "2"), Slot::A, 0),
            Err(TransitionError::Tries)
        );
        assert_eq!(s.bless(Slot::A), Err(TransitionError::NotPending(Slot::A)));
        assert_eq!(
            s.rollback(Slot::A),
            Err(TransitionError::NoGoodSlot(Slot::B))
        );
        assert!(VerifiedSlot::check(Slot::B, "2", "ab", "cd").is_none());
        assert!(VerifiedSlot::check(Slot::B, "2", "", "").is_none());
    }

    #[test]
    fn exhausted_tries_fall_back_and_are_reported() {
        let mut s = BootState::default();
        s.entries.insert(Slot::A, good("1", 1));
        s.entries.insert(
            Slot::B,
            SlotEntry {
                version: "3".into(),
                priority: 2,
                health: Health::Pending {
                    tries_left: 0,
                    tries_done: 3,
                },
            },
        );
        assert_eq!(s.next_boot(), Some(Slot::A));
        let (slot, e) = s.failed_slot(Slot::A).unwrap();
        assert_eq!((slot, e.version.as_str()), (Slot::B, "3"));
    }
}
