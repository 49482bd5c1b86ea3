//! Kubernetes-style durations (`90m`, `2160h`, `30d`) and byte sizes (`512Ki`, `4Mi`).
//!
//! Both parse from the strings people write in YAML and print back in the shortest exact form,
//! so a value survives a round trip through a status file or a CRD unchanged in meaning.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A length of time written as a sequence of `<number><unit>` parts: `90s`, `1h30m`, `30d`.
///
/// Units are `ms`, `s`, `m`, `h` and `d` (24 hours). A bare number is refused: the unit is
/// what tells a reader whether `30` means seconds or days.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("a duration cannot be empty (write e.g. `90m`, `12h` or `30d`)")]
    Empty,
    #[error("`{0}` has no unit: write e.g. `{0}s`, `{0}m`, `{0}h` or `{0}d`")]
    MissingUnit(String),
    #[error("`{input}` is not a duration: unknown unit `{unit}` (use ms, s, m, h or d)")]
    UnknownUnit { input: String, unit: String },
    #[error("`{0}` is not a duration (write e.g. `90m`, `1h30m`, `2160h` or `30d`)")]
    Malformed(String),
    #[error("`{0}` is too long a duration")]
    Overflow(String),
}

impl Duration {
    /// A duration of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// A duration of whole hours.
    pub const fn from_hours(hours: u64) -> Self {
        Self::from_secs(hours * 3600)
    }

    /// The standard library value.
    pub const fn as_std(self) -> std::time::Duration {
        self.0
    }

    /// Whole seconds, rounded down.
    pub const fn as_secs(self) -> u64 {
        self.0.as_secs()
    }

    /// True for a zero length.
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<std::time::Duration> for Duration {
    fn from(value: std::time::Duration) -> Self {
        Self(value)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim();
        if text.is_empty() {
            return Err(DurationError::Empty);
        }
        if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(DurationError::MissingUnit(text.to_owned()));
        }
        let mut total_ms: u128 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(DurationError::Malformed(text.to_owned()));
            }
            let number: f64 = rest[..digits]
                .parse()
                .map_err(|_| DurationError::Malformed(text.to_owned()))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let ms_per_unit: f64 = match unit {
                "ms" => 1.0,
                "s" => 1_000.0,
                "m" => 60_000.0,
                "h" => 3_600_000.0,
                "d" => 86_400_000.0,
                "" => return Err(DurationError::MissingUnit(text.to_owned())),
                other => {
                    return Err(DurationError::UnknownUnit {
                        input: text.to_owned(),
                        unit: other.to_owned(),
                    });
                }
            };
            let part = (number * ms_per_unit).round();
            // 10^15 ms is about 31,700 years: far beyond any certificate or schedule.
            if !part.is_finite() || part > 1e15 {
                return Err(DurationError::Overflow(text.to_owned()));
            }
            total_ms += part as u128;
        }
        let ms = u64::try_from(total_ms).map_err(|_| DurationError::Overflow(text.to_owned()))?;
        Ok(Self(std::time::Duration::from_millis(ms)))
    }
}

impl fmt::Display for Duration {
    /// The shortest exact form: `30d`, `1h30m`, `90s`, `250ms`; zero prints as `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("d", 86_400_000u128),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$",
        })
    }
}

/// A number of bytes written as a Kubernetes quantity: `512Ki`, `4Mi`, `1Gi`, `64k`, `1000000`.
///
/// Binary suffixes (`Ki`, `Mi`, `Gi`) are powers of 1024, decimal ones (`k`, `M`, `G`) powers
/// of 1000, as in Kubernetes resource quantities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(u64);

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    #[error("`{0}` is not a size (write e.g. `512Ki`, `4Mi` or a number of bytes)")]
    Malformed(String),
    #[error("`{input}` has an unknown suffix `{suffix}` (use Ki, Mi, Gi, k, M or G)")]
    UnknownSuffix { input: String, suffix: String },
    #[error("`{0}` is too large")]
    Overflow(String),
}

impl ByteSize {
    /// A size in bytes.
    pub const fn from_bytes(bytes: u64) -> Self {
        Self(bytes)
    }

    /// A size in kibibytes.
    pub const fn from_kib(kib: u64) -> Self {
        Self(kib * 1024)
    }

    /// A size in mebibytes.
    pub const fn from_mib(mib: u64) -> Self {
        Self(mib * 1024 * 1024)
    }

    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim();
        let digits = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        if digits == 0 {
            return Err(ByteSizeError::Malformed(text.to_owned()));
        }
        let number: u64 = text[..digits]
            .parse()
            .map_err(|_| ByteSizeError::Overflow(text.to_owned()))?;
        let multiplier: u64 = match &text[digits..] {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            "k" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            suffix => {
                return Err(ByteSizeError::UnknownSuffix {
                    input: text.to_owned(),
                    suffix: suffix.to_owned(),
                });
            }
        };
        number
            .checked_mul(multiplier)
            .map(Self)
            .ok_or_else(|| ByteSizeError::Overflow(text.to_owned()))
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary suffix that divides the value exactly, else plain bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (suffix, size) in [
            ("Ti", 1u64 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ] {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{suffix}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 512Ki, 4Mi or a number of bytes")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // The bare marker, as k8s-openapi's IntOrString: kube's structural rewriter would empty
        // an `anyOf: [integer, string]` form.
        json_schema!({ "x-kubernetes-int-or-string": true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_kubernetes_style_strings() {
        assert_eq!("90m".parse::<Duration>().unwrap().as_secs(), 5400);
        assert_eq!("2160h".parse::<Duration>().unwrap().as_secs(), 2160 * 3600);
        assert_eq!("30d".parse::<Duration>().unwrap().as_secs(), 30 * 86400);
        assert_eq!("1h30m".parse::<Duration>().unwrap().as_secs(), 5400);
        assert_eq!("1.5h".parse::<Duration>().unwrap().as_secs(), 5400);
        assert_eq!(
            "250ms".parse::<Duration>().unwrap().as_std(),
            std::time::Duration::from_millis(250)
        );
    }

    #[test]
    fn durations_refuse_missing_or_unknown_units() {
        assert_eq!(
            "30".parse::<Duration>(),
            Err(DurationError::MissingUnit("30".into()))
        );
        assert!(matches!(
            "3w".parse::<Duration>(),
            Err(DurationError::UnknownUnit { unit, .. }) if unit == "w"
        ));
        assert_eq!("".parse::<Duration>(), Err(DurationError::Empty));
        assert!("h".parse::<Duration>().is_err());
        assert!("1h-5m".parse::<Duration>().is_err());
    }

    #[test]
    fn durations_print_their_shortest_exact_form() {
        for (input, shown) in [
            ("2160h", "90d"),
            ("90m", "1h30m"),
            ("0s", "0s"),
            ("1500ms", "1s500ms"),
        ] {
            assert_eq!(input.parse::<Duration>().unwrap().to_string(), shown);
        }
    }

    #[test]
    fn sizes_parse_binary_and_decimal_suffixes() {
        assert_eq!("512Ki".parse::<ByteSize>().unwrap().bytes(), 512 * 1024);
        assert_eq!("4Mi".parse::<ByteSize>().unwrap().bytes(), 4 << 20);
        assert_eq!("64k".parse::<ByteSize>().unwrap().bytes(), 64_000);
        assert_eq!("1000".parse::<ByteSize>().unwrap().bytes(), 1000);
        assert!(matches!(
            "4MB".parse::<ByteSize>(),
            Err(ByteSizeError::UnknownSuffix { suffix, .. }) if suffix == "MB"
        ));
        assert!("Mi".parse::<ByteSize>().is_err());
        assert!("99999999999Ti".parse::<ByteSize>().is_err());
    }

    #[test]
    fn sizes_print_the_largest_exact_binary_suffix() {
        assert_eq!(ByteSize::from_kib(512).to_string(), "512Ki");
        assert_eq!(ByteSize::from_mib(4).to_string(), "4Mi");
        assert_eq!(ByteSize::from_bytes(1000).to_string(), "1000");
    }
}
