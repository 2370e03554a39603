//! Human units on the command line: sizes ("128", "1MiB", "64MB") and
//! durations ("20ms", "30s", "2m").

use std::time::Duration;

/// Parses a byte size. A bare number is taken in `default_unit` bytes (for
/// example 1 MiB for `--size 128`). Units: B, KB/KiB, MB/MiB, GB/GiB, TB/TiB
/// (decimal and binary spellings are both read as binary multiples of 1024,
/// as memory tools conventionally do), case-insensitive.
pub fn parse_size(text: &str, default_unit: u64) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "{text:?} is not a size (expected e.g. 128, 512KiB, 1MiB, 4GiB)"
        ));
    }
    let value: f64 = num.parse().map_err(|_| format!("{text:?} is not a size"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" => default_unit,
        "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "{text:?}: unknown size unit {other:?} (use B, KiB, MiB, GiB or TiB)"
            ))
        }
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration with a unit: ns, us, ms, s, m, h. A bare number is
/// taken in `default_unit`.
pub fn parse_duration(text: &str, default_unit: Duration) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "{text:?} is not a duration (expected e.g. 20ms, 30s, 2m)"
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration"))?;
    let secs = match unit.trim() {
        "" => value * default_unit.as_secs_f64(),
        "ns" => value / 1e9,
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "{text:?}: unknown duration unit {other:?} (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units_and_a_default_unit() {
        assert_eq!(parse_size("128", 1 << 20), Ok(128 << 20));
        assert_eq!(parse_size("1MiB", 1), Ok(1 << 20));
        assert_eq!(parse_size("64mb", 1), Ok(64 << 20));
        assert_eq!(parse_size("512 KiB", 1), Ok(512 << 10));
        assert_eq!(parse_size("1.5GiB", 1), Ok(3 << 29));
        assert!(parse_size("MiB", 1).is_err());
        assert!(parse_size("12parsecs", 1).is_err());
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(
            parse_duration("20ms", Duration::from_secs(1)),
            Ok(Duration::from_millis(20))
        );
        assert_eq!(
            parse_duration("30s", Duration::from_secs(1)),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(
            parse_duration("2m", Duration::from_secs(1)),
            Ok(Duration::from_secs(120))
        );
        assert_eq!(
            parse_duration("100", Duration::from_millis(1)),
            Ok(Duration::from_millis(100))
        );
        assert!(parse_duration("soon", Duration::from_secs(1)).is_err());
        assert!(parse_duration("3 fortnights", Duration::from_secs(1)).is_err());
    }
}

/// A duration flag value that prints the way it is typed ("30s", "100ms"),
/// so clap can show library defaults without restating them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s, Duration::from_secs(1)).map(HumanDuration)
    }
}

impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        if ms % 3_600_000 == 0 && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// A size flag value (a bare number is MiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanSize(pub u64);

impl std::str::FromStr for HumanSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_size(s, 1 << 20).map(HumanSize)
    }
}

impl std::fmt::Display for HumanSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        if b % (1 << 30) == 0 && b > 0 {
            write!(f, "{}GiB", b >> 30)
        } else if b % (1 << 20) == 0 {
            write!(f, "{}MiB", b >> 20)
        } else if b % (1 << 10) == 0 {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

#[cfg(test)]
mod human_tests {
    use super::*;

    #[test]
    fn human_values_print_as_typed() {
        assert_eq!(HumanDuration(Duration::from_secs(30)).to_string(), "30s");
        assert_eq!(
            HumanDuration(Duration::from_millis(100)).to_string(),
            "100ms"
        );
        assert_eq!(HumanDuration(Duration::from_secs(600)).to_string(), "10m");
        assert_eq!(
            "20ms".parse::<HumanDuration>(),
            Ok(HumanDuration(Duration::from_millis(20)))
        );
        assert_eq!("128".parse::<HumanSize>(), Ok(HumanSize(128 << 20)));
        assert_eq!(HumanSize(12 << 30).to_string(), "12GiB");
    }
}
