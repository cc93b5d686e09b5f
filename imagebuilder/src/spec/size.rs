//! Sizes in a spec: `"256M"`, `"1GiB"` or a byte count.

use super::MIB;
use serde::{Deserialize, Deserializer};

/// Parses `"256M"`, `"256MiB"`, `"1G"`, `"1GiB"` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mul = match unit.trim() {
        "" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => MIB,
        "G" | "GiB" => 1 << 30,
        _ => return Err(format!("invalid size unit in {s:?} (use K, M or G)")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Int(u64),
    Str(String),
}

fn to_size(r: SizeRepr) -> Result<u64, String> {
    let n = match r {
        SizeRepr::Int(n) => n,
        SizeRepr::Str(s) => parse_size(&s)?,
    };
    if n == 0 || n % MIB != 0 {
        return Err(format!("size {n} must be a positive whole number of MiB"));
    }
    Ok(n)
}

pub(super) fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    to_size(SizeRepr::deserialize(d)?).map_err(serde::de::Error::custom)
}

pub(super) fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<SizeRepr>::deserialize(d)?
        .map(to_size)
        .transpose()
        .map_err(serde::de::Error::custom)
}
