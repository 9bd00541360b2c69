//! Human byte sizes: `512MiB`, `2GiB`, `300MB`, `1.5G`, `4096`.
//!
//! The rules, chosen to match what operators type into `kubectl` and `docker`:
//!
//! | suffix                     | multiplier          |
//! |----------------------------|---------------------|
//! | none, `B`                  | 1                   |
//! | `KB` `MB` `GB` `TB`        | 1000^n (SI)         |
//! | `KiB` `MiB` `GiB` `TiB`    | 1024^n (binary)     |
//! | `Ki` `Mi` `Gi` `Ti`        | 1024^n (Kubernetes) |
//! | `K` `M` `G` `T`            | 1024^n (docker, rclone) |
//!
//! Suffixes are case-insensitive and may be separated from the number by
//! spaces. Fractions are allowed (`1.5G`); the result is rounded down to a
//! whole byte. Negative numbers, empty strings, unknown suffixes and values
//! above `u64::MAX` are errors that quote the input.

use std::fmt;

/// A parsed byte count that prints in binary units (`1.5 GiB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

impl std::str::FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(ByteSize)
    }
}

/// Why a size string was rejected. The message quotes the input.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SizeError {
    input: String,
    reason: &'static str,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid size {:?}: {} (expected e.g. 512MiB, 2GiB, 300MB, 1.5G or a plain byte count)",
            self.input, self.reason
        )
    }
}

impl std::error::Error for SizeError {}

/// Parses a human size string into bytes. See the [module docs](self) for
/// the accepted forms.
///
/// ```
/// use headroom_governor::parse_size;
/// assert_eq!(parse_size("512MiB").unwrap(), 512 * 1024 * 1024);
/// assert_eq!(parse_size("300MB").unwrap(), 300_000_000);
/// assert_eq!(parse_size("1.5G").unwrap(), 1024 * 1024 * 1024 * 3 / 2);
/// assert!(parse_size("12 parsecs").is_err());
/// ```
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = |reason| SizeError {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() {
        return Err(err(if s.starts_with('-') {
            "sizes cannot be negative"
        } else {
            "no number"
        }));
    }
    let multiplier: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(err("unknown unit")),
    };
    if let Ok(whole) = number.parse::<u64>() {
        return whole
            .checked_mul(multiplier)
            .ok_or_else(|| err("too large"));
    }
    if !number.contains('.') {
        // All digits, yet not a u64.
        return Err(err("too large"));
    }
    if number.matches('.').count() != 1 || number == "." {
        return Err(err("malformed number"));
    }
    let value: f64 = number.parse().map_err(|_| err("malformed number"))?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(err("too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        let cases = [
            ("0", 0),
            ("4096", 4096),
            ("4096B", 4096),
            ("512MiB", 512 << 20),
            ("512mib", 512 << 20),
            ("512Mi", 512 << 20),
            ("512M", 512 << 20),
            ("2GiB", 2 << 30),
            ("2 GiB", 2 << 30),
            ("300MB", 300_000_000),
            ("1.5G", 3 << 29),
            ("0.5KiB", 512),
            ("1TB", 1_000_000_000_000),
            ("  64k ", 64 << 10),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_bad_sizes_with_the_input_in_the_message() {
        for (input, reason) in [
            ("", "empty"),
            ("MiB", "no number"),
            ("-5MiB", "negative"),
            ("12 parsecs", "unknown unit"),
            ("1.2.3G", "malformed"),
            ("99999999999999999999", "too large"),
            ("20000000000T", "too large"),
        ] {
            let e = parse_size(input).unwrap_err().to_string();
            assert!(e.contains(&format!("{input:?}")), "{e}");
            assert!(e.contains(reason), "{input}: {e}");
        }
    }

    #[test]
    fn display_uses_binary_units() {
        assert_eq!(ByteSize(17).to_string(), "17 B");
        assert_eq!(ByteSize(512 << 20).to_string(), "512.0 MiB");
        assert_eq!(ByteSize(3 << 29).to_string(), "1.5 GiB");
    }
}
