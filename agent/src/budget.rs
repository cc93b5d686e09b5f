//! `maxUnavailable`: how many selected nodes may be upgrading at once.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("maxUnavailable {0:?}: expected a positive number or a percentage such as \"25%\"")]
pub struct BudgetError(pub String);

/// A count or a percentage of the selected nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MaxUnavailable {
    Count(u32),
    Percent(u32),
}

impl MaxUnavailable {
    /// Parses `"2"` or `"25%"`.
    pub fn parse(s: &str) -> Result<MaxUnavailable, BudgetError> {
        let bad = || BudgetError(s.to_string());
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let p: u32 = p.trim().parse().map_err(|_| bad())?;
            if p == 0 || p > 100 {
                return Err(bad());
            }
            return Ok(MaxUnavailable::Percent(p));
        }
        match t.parse::<u32>() {
            Ok(n) if n > 0 => Ok(MaxUnavailable::Count(n)),
            _ => Err(bad()),
        }
    }

    /// Nodes allowed in progress among `selected`: a percentage rounds down (as Kubernetes does
    /// for maxUnavailable) but never below one, so a rollout always progresses.
    pub fn resolve(self, selected: usize) -> usize {
        let n = match self {
            MaxUnavailable::Count(n) => n as usize,
            MaxUnavailable::Percent(p) => selected * p as usize / 100,
        };
        n.clamp(1, selected.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        assert_eq!(MaxUnavailable::parse("2"), Ok(MaxUnavailable::Count(2)));
        assert_eq!(
            MaxUnavailable::parse(" 25% "),
            Ok(MaxUnavailable::Percent(25))
        );
        for bad in ["0", "0%", "101%", "-1", "x", "", "2.5"] {
            assert!(MaxUnavailable::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(MaxUnavailable::Count(2).resolve(5), 2);
        assert_eq!(MaxUnavailable::Count(9).resolve(5), 5);
        assert_eq!(MaxUnavailable::Percent(25).resolve(10), 2);
        assert_eq!(MaxUnavailable::Percent(10).resolve(5), 1);
        assert_eq!(MaxUnavailable::Percent(100).resolve(7), 7);
        assert_eq!(MaxUnavailable::Count(1).resolve(0), 1);
    }
}
