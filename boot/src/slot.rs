use std::fmt;
use std::str::FromStr;

/// One of the two root slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    A,
    B,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown slot {0:?}: expected `a` or `b`")]
pub struct SlotParseError(pub String);

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// Lower-case name used on the kernel command line (`kiln.slot=a`) and in paths.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// GPT partition label of the slot's root.
    pub fn partlabel(self) -> &'static str {
        match self {
            Slot::A => "root-a",
            Slot::B => "root-b",
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Slot {
    type Err = SlotParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a" | "A" => Ok(Slot::A),
            "b" | "B" => Ok(Slot::B),
            other => Err(SlotParseError(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_other() {
        for s in Slot::ALL {
            assert_eq!(s.name().parse::<Slot>().unwrap(), s);
            assert_ne!(s.other(), s);
            assert_eq!(s.other().other(), s);
        }
        assert_eq!("c".parse::<Slot>(), Err(SlotParseError("c".into())));
    }
}
