//! The value types of the configuration files. Each checks its value while it
//! is deserialized, so a bad value is refused before any other check runs, and
//! the error carries the key it was written under (the loader tracks the path
//! with `serde_path_to_error`).
//!
//! The bounds themselves are the `pub const`s of [`super`]; they are repeated
//! in `docs/configuration.md`.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use rotor_xfrm::IpNet;
use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::DEFAULT_PORT;

const MS_PER_S: u64 = 1_000;
const MS_PER_M: u64 = 60 * MS_PER_S;
const MS_PER_H: u64 = 60 * MS_PER_M;
const MS_PER_D: u64 = 24 * MS_PER_H;

/// Why a duration string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DurationError {
    /// Not digits followed by a unit.
    Syntax,
    /// Digits followed by something that is not a unit.
    Unit,
    /// More milliseconds than a `u64` holds.
    Overflow,
}

/// Parses `500ms`, `10s`, `5m`, `1h` or `2d` into milliseconds, with checked
/// arithmetic: a value too large for a `u64` of milliseconds is
/// [`DurationError::Overflow`], never a wrapped or saturated number.
pub(crate) fn parse_ms(s: &str) -> Result<u64, DurationError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(DurationError::Syntax);
    }
    let scale = match unit {
        "ms" => 1,
        "s" => MS_PER_S,
        "m" => MS_PER_M,
        "h" => MS_PER_H,
        "d" => MS_PER_D,
        "" => return Err(DurationError::Syntax),
        _ if unit
            .trim_start()
            .starts_with(|c: char| c.is_ascii_alphabetic()) =>
        {
            return Err(DurationError::Unit);
        }
        _ => return Err(DurationError::Syntax),
    };
    // `num` is all ASCII digits, so the only way to fail is overflow.
    let n: u64 = num.parse().map_err(|_| DurationError::Overflow)?;
    n.checked_mul(scale).ok_or(DurationError::Overflow)
}

/// Formats milliseconds in the largest unit that divides them exactly, so
/// the text parses back to the same value (`7d`, `90s`, `1500ms`).
pub(crate) fn fmt_ms(ms: u64) -> String {
    for (unit, scale) in [
        ("d", MS_PER_D),
        ("h", MS_PER_H),
        ("m", MS_PER_M),
        ("s", MS_PER_S),
    ] {
        if ms != 0 && ms.is_multiple_of(scale) {
            return format!("{}{unit}", ms / scale);
        }
    }
    format!("{ms}ms")
}

/// A duration in `MIN_MS..=MAX_MS` milliseconds, written as a string such as
/// `"10s"`. Anything else (a number, a bad unit, a value out of bounds or too
/// large for any clock) is refused with the bound it broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BoundedDuration<const MIN_MS: u64, const MAX_MS: u64>(pub Duration);

impl<'de, const MIN_MS: u64, const MAX_MS: u64> Deserialize<'de>
    for BoundedDuration<MIN_MS, MAX_MS>
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const A: u64, const B: u64>;
        impl<const A: u64, const B: u64> Visitor<'_> for V<A, B> {
            type Value = BoundedDuration<A, B>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a duration from {} to {} written as a string, e.g. \"10s\"",
                    fmt_ms(A),
                    fmt_ms(B)
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                let too_long =
                    || E::custom(format!("{s:?} is more than the maximum, {}", fmt_ms(B)));
                let ms = match parse_ms(s) {
                    Ok(ms) => ms,
                    Err(DurationError::Overflow) => return Err(too_long()),
                    Err(DurationError::Unit) => {
                        return Err(E::custom(format!(
                            "{s:?} has no known unit (write a number and one of ms, s, m, h, d, e.g. 10s)"
                        )));
                    }
                    Err(DurationError::Syntax) => {
                        return Err(E::custom(format!(
                            "{s:?} is not a duration (write a whole number and a unit, e.g. 500ms, 10s, 5m, 1h)"
                        )));
                    }
                };
                if ms < A {
                    return Err(E::custom(format!(
                        "{s:?} is less than the minimum, {}",
                        fmt_ms(A)
                    )));
                }
                if ms > B {
                    return Err(too_long());
                }
                Ok(BoundedDuration(Duration::from_millis(ms)))
            }
        }
        d.deserialize_str(V::<MIN_MS, MAX_MS>)
    }
}

/// An integer in `MIN..=MAX`, stored as `T` (which holds every value of the
/// range). A negative, out-of-range or non-integer value is refused with the
/// range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BoundedInt<T, const MIN: u64, const MAX: u64>(pub T);

impl<'de, T: TryFrom<u64>, const MIN: u64, const MAX: u64> Deserialize<'de>
    for BoundedInt<T, MIN, MAX>
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const A: u64, const B: u64>(PhantomData<T>);
        impl<T: TryFrom<u64>, const A: u64, const B: u64> Visitor<'_> for V<T, A, B> {
            type Value = BoundedInt<T, A, B>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an integer in {A}..={B}")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                if !(A..=B).contains(&v) {
                    return Err(E::custom(format!("{v} is outside {A}..={B}")));
                }
                T::try_from(v)
                    .map(BoundedInt)
                    .map_err(|_| E::custom(format!("{v} is outside {A}..={B}")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("{v} is outside {A}..={B}"))),
                }
            }
        }
        d.deserialize_u64(V::<T, MIN, MAX>(PhantomData))
    }
}

/// Size of the ESP AES keys: 128 or 256 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyBits(pub u16);

impl<'de> Deserialize<'de> for KeyBits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyBits;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("128 or 256")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyBits, E> {
                match v {
                    128 => Ok(KeyBits(128)),
                    256 => Ok(KeyBits(256)),
                    v => Err(E::custom(format!("{v} is not 128 or 256"))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyBits, E> {
                match i64::try_from(v) {
                    Ok(v) => self.visit_i64(v),
                    Err(_) => Err(E::custom(format!("{v} is not 128 or 256"))),
                }
            }
        }
        d.deserialize_i64(V)
    }
}

/// Longest peer name, in bytes.
pub const NAME_MAX: usize = 64;

/// A peer name: 1 to [`NAME_MAX`] characters of `A-Z a-z 0-9 - _ .`, the
/// first a letter or digit. The name is bound into every derived key, forms
/// the node's default socket path (`/run/rotor/NAME.sock`), is one
/// whitespace-free column of `rotor status`, and is given on the command line
/// (`rotor rotate --node NAME`, where a leading `-` would read as an option).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Name(pub String);

fn name_problem(s: &str) -> Option<&'static str> {
    const RULE: &str =
        "must be 1-64 characters of A-Z a-z 0-9 - _ . starting with a letter or digit";
    let ok = !s.is_empty()
        && s.len() <= NAME_MAX
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    (!ok).then_some(RULE)
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match name_problem(&s) {
            Some(rule) => Err(de::Error::custom(format!("{s:?} {rule}"))),
            None => Ok(Name(s)),
        }
    }
}

/// Why `a` cannot be the outer address of an ESP peer, if it cannot.
fn host_problem(a: IpAddr) -> Option<&'static str> {
    if a.is_unspecified() {
        Some("is the unspecified address; name the host's own address")
    } else if a.is_multicast() {
        Some("is a multicast address; ESP SAs need a unicast peer")
    } else if a == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("is the broadcast address; ESP SAs need a unicast peer")
    } else {
        None
    }
}

/// The outer (unicast) address of a hub or node: IPv4 or IPv6, neither
/// unspecified, multicast nor broadcast, since it is an SA endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HostAddr(pub IpAddr);

impl<'de> Deserialize<'de> for HostAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let a: IpAddr = s
            .parse()
            .map_err(|_| de::Error::custom(format!("{s:?} is not an IPv4 or IPv6 address")))?;
        match host_problem(a) {
            Some(p) => Err(de::Error::custom(format!("{s:?} {p}"))),
            None => Ok(HostAddr(a)),
        }
    }
}

/// Where the Prometheus metrics are served: `ADDR:PORT`, `[V6]:PORT`, or a
/// bare port, which means loopback (`127.0.0.1:PORT`). Port 0 is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MetricsListen(pub SocketAddr);

impl<'de> Deserialize<'de> for MetricsListen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let sa = match (s.parse::<SocketAddr>(), s.parse::<u16>()) {
            (Ok(sa), _) => sa,
            (_, Ok(port)) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            _ => {
                return Err(de::Error::custom(format!(
                    "{s:?} is not ADDRESS:PORT or a port (e.g. \"127.0.0.1:9474\", \"[::1]:9474\" or \"9474\")"
                )));
            }
        };
        if sa.port() == 0 {
            return Err(de::Error::custom(format!(
                "{s:?} has port 0; use a port in 1..=65535"
            )));
        }
        Ok(MetricsListen(sa))
    }
}

/// The hub's control address as a node writes it: `ADDR:PORT`, `[V6]:PORT`,
/// a bare address, `NAME:PORT` or a bare DNS name (port [`DEFAULT_PORT`]
/// when none is given). An address obeys [`HostAddr`]'s rules, a name is a
/// valid DNS host name (RFC 1123 labels), and the port is not 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HubEndpoint {
    /// A literal address.
    Addr(SocketAddr),
    /// A DNS name and port, resolved at start and again when the hub
    /// stops answering.
    Name(String, u16),
}

impl<'de> Deserialize<'de> for HubEndpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let endpoint = match (s.parse::<SocketAddr>(), s.parse::<IpAddr>()) {
            (Ok(sa), _) => HubEndpoint::Addr(sa),
            (_, Ok(a)) => HubEndpoint::Addr(SocketAddr::new(a, DEFAULT_PORT)),
            _ => {
                let (host, port) = match s.rsplit_once(':') {
                    Some((h, p)) => match p.parse::<u16>() {
                        Ok(p) => (h, p),
                        Err(_) => {
                            return Err(de::Error::custom(format!(
                                "{s:?}: {p:?} is not a port (1..=65535)"
                            )));
                        }
                    },
                    None => (s.as_str(), DEFAULT_PORT),
                };
                if let Some(p) = dns_name_problem(host) {
                    return Err(de::Error::custom(format!(
                        "{s:?} is neither ADDRESS:PORT nor NAME:PORT ({p}; e.g. \"10.9.0.1:4820\", \"[fd00::1]:4820\" or \"vpn.example.com:4820\")"
                    )));
                }
                HubEndpoint::Name(host.to_ascii_lowercase(), port)
            }
        };
        if endpoint.port() == 0 {
            return Err(de::Error::custom(format!(
                "{s:?} has port 0; use a port in 1..=65535"
            )));
        }
        if let HubEndpoint::Addr(sa) = endpoint
            && let Some(p) = host_problem(sa.ip())
        {
            return Err(de::Error::custom(format!("{s:?} {p}")));
        }
        Ok(endpoint)
    }
}

impl HubEndpoint {
    /// The control port.
    pub fn port(&self) -> u16 {
        match self {
            HubEndpoint::Addr(sa) => sa.port(),
            HubEndpoint::Name(_, p) => *p,
        }
    }
}

/// Why `host` is not a DNS host name (RFC 1123: dot-separated labels of
/// letters, digits and inner hyphens, each 1-63 bytes, 253 in all, the last
/// label not all digits), or `None`.
fn dns_name_problem(host: &str) -> Option<&'static str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return Some("a host name has 1 to 253 characters");
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Some("each dot-separated label of a host name has 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Some("a host name has only letters, digits, hyphens and dots");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("a label of a host name neither starts nor ends with a hyphen");
        }
    }
    if host
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Some("the last label of a host name is not all digits (a malformed address?)");
    }
    None
}

/// A subnet `ADDRESS/PREFIX` (a bare address is a host prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Subnet(pub IpNet);

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        IpNet::parse(&s)
            .map(Subnet)
            .ok_or_else(|| de::Error::custom(format!("{s:?} is not ADDRESS/PREFIX")))
    }
}

/// A network interface name as the kernel takes it: 1 to 15 bytes, no
/// `/`, `:`, white space or NUL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IfName(pub String);

impl<'de> Deserialize<'de> for IfName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = (1..=15).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
        if ok {
            Ok(IfName(s))
        } else {
            Err(de::Error::custom(format!(
                "{s:?} is not an interface name (1-15 characters, no '/', ':' or space)"
            )))
        }
    }
}

/// Where a hub keeps its records when not in files:
/// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX` ([`EtcdTarget::parse`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StateUrl(pub crate::state::etcd::EtcdTarget);

impl<'de> Deserialize<'de> for StateUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::state::etcd::EtcdTarget::parse(&s)
            .map(StateUrl)
            .map_err(de::Error::custom)
    }
}

/// A file path: not empty, no NUL byte (no system call could take it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FilePath(pub PathBuf);

impl<'de> Deserialize<'de> for FilePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(de::Error::custom("must not be empty"));
        }
        if s.contains('\0') {
            return Err(de::Error::custom(format!("{s:?} contains a NUL byte")));
        }
        Ok(FilePath(PathBuf::from(s)))
    }
}

/// ESP mode as written in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ModeName {
    /// Host to host.
    Transport,
    /// Subnet to subnet.
    Tunnel,
}
