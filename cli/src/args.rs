//! Parsers of command-line values (clap `value_parser`s).

use serde::de::value::{Error as ValueError, StrDeserializer};
use serde::de::DeserializeOwned;

/// Parses a value of a configuration enum ([`kvtier::config::ExecutorKind`],
/// [`kvtier_core::PolicyKind`], ...) as the configuration file spells it, so a flag accepts
/// exactly what the TOML accepts, from the one `serde` definition of the enum.
pub fn config_value<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    T::deserialize(StrDeserializer::<ValueError>::new(text)).map_err(|e| e.to_string())
}

/// Parses a size: a number with an optional binary unit (`K`, `M`, `G`, `T`; `KiB`, `MB`... all
/// mean powers of 1024), e.g. `1G`, `512M`, `2MiB`, `4096`, `1.5G`. Zero is refused.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        u => return Err(format!("size {t:?}: unknown unit {u:?} (use K, M, G or T)")),
    };
    let value: f64 = num.parse().map_err(|_| format!("size {t:?}: not a number"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("size {t:?} is out of range"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use kvtier_core::PolicyKind;

    use super::*;
    use kvtier::config::ExecutorKind;

    #[test]
    fn sizes() {
        for (text, bytes) in [
            ("1G", 1 << 30),
            ("512M", 512 << 20),
            ("2MiB", 2 << 20),
            ("4096", 4096),
            ("1.5k", 1536),
            ("256kb", 256 << 10),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["12X", "", "K", "0K", "64Q", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_values_are_spelled_as_in_the_toml() {
        assert_eq!(config_value::<PolicyKind>("arc"), Ok(PolicyKind::Arc));
        assert_eq!(config_value::<ExecutorKind>("uring"), Ok(ExecutorKind::Uring));
        let err = config_value::<PolicyKind>("ARC").unwrap_err();
        assert!(err.contains("lru") && err.contains("arc"), "{err}");
        assert!(config_value::<ExecutorKind>("fast").is_err());
    }
}
