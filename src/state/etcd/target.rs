//! Where an etcd-backed state lives, as the configuration writes it:
//! `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`.

use std::fmt;
use std::net::Ipv6Addr;

/// The client port a member listens on when the URL names none.
pub const DEFAULT_PORT: u16 = 2379;
/// The longest prefix accepted (keys stay well under etcd's limits).
const MAX_PREFIX: usize = 128;

/// A parsed `etcd://` state URL. Guarantees: at least one endpoint, each
/// `http://HOST:PORT` with a valid host (DNS name, IPv4, or bracketed IPv6)
/// and a port in 1..=65535; the prefix is 1..=128 characters of
/// `A-Z a-z 0-9 . _ - /`, without a leading or trailing `/` or an empty
/// segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTarget {
    /// Client URLs, `http://HOST:PORT`, in the order written.
    pub endpoints: Vec<String>,
    /// The key prefix every record of this hub lives under.
    pub prefix: String,
}

impl fmt::Display for EtcdTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<&str> = self
            .endpoints
            .iter()
            .map(|e| e.strip_prefix("http://").unwrap_or(e))
            .collect();
        write!(f, "etcd://{}/{}", hosts.join(","), self.prefix)
    }
}

impl EtcdTarget {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`; the error says what
    /// is wrong in words fit for a configuration error.
    pub fn parse(s: &str) -> Result<EtcdTarget, String> {
        let rest = s.strip_prefix("etcd://").ok_or_else(|| {
            format!("{s:?} is not an etcd URL: write etcd://HOST:PORT[,HOST:PORT...]/PREFIX")
        })?;
        let (hosts, prefix) = rest
            .split_once('/')
            .ok_or_else(|| format!("{s:?} has no key prefix: add /PREFIX after the hosts"))?;
        if hosts.is_empty() {
            return Err(format!("{s:?} names no etcd member"));
        }
        let endpoints = hosts
            .split(',')
            .map(|h| endpoint(h).map_err(|why| format!("{s:?}: member {h:?} {why}")))
            .collect::<Result<Vec<_>, _>>()?;
        check_prefix(prefix).map_err(|why| format!("{s:?}: prefix {prefix:?} {why}"))?;
        Ok(EtcdTarget {
            endpoints,
            prefix: prefix.to_string(),
        })
    }

    /// The key prefix of the node records, `PREFIX/node/`.
    pub fn records_prefix(&self) -> String {
        format!("{}/node/", self.prefix)
    }
}

fn endpoint(h: &str) -> Result<String, &'static str> {
    let (host, port) = if let Some(v6) = h.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("has an unclosed '['")?;
        addr.parse::<Ipv6Addr>()
            .map_err(|_| "is not a valid IPv6 address")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("has junk after ']'")?),
        };
        (&h[..addr.len() + 2], port)
    } else {
        match h.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        }
    };
    if !host.starts_with('[') && !valid_host(host) {
        return Err("is not a valid host name or IPv4 address");
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err("has no valid port (1..=65535)"),
            Ok(p) => p,
        },
    };
    Ok(format!("http://{host}:{port}"))
}

/// RFC 1123 host name labels (an IPv4 address is one too).
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn check_prefix(p: &str) -> Result<(), &'static str> {
    if p.is_empty() || p.len() > MAX_PREFIX {
        return Err("must be 1 to 128 characters");
    }
    if !p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
    {
        return Err("may hold only A-Z a-z 0-9 . _ - /");
    }
    if p.split('/').any(str::is_empty) {
        return Err("may not start or end with '/' or hold '//'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_members_and_a_prefix() {
        let t = EtcdTarget::parse("etcd://10.99.0.11:2379,etcd-b:2380,[fd00::1]:2379/rotor/prod")
            .unwrap();
        assert_eq!(
            t.endpoints,
            [
                "http://10.99.0.11:2379",
                "http://etcd-b:2380",
                "http://[fd00::1]:2379"
            ]
        );
        assert_eq!(t.prefix, "rotor/prod");
        assert_eq!(t.records_prefix(), "rotor/prod/node/");
        assert_eq!(
            t.to_string(),
            "etcd://10.99.0.11:2379,etcd-b:2380,[fd00::1]:2379/rotor/prod"
        );
    }

    #[test]
    fn a_missing_port_is_etcds_client_port() {
        let t = EtcdTarget::parse("etcd://e1,[::1]/r").unwrap();
        assert_eq!(t.endpoints, ["http://e1:2379", "http://[::1]:2379"]);
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let e = |s: &str| EtcdTarget::parse(s).unwrap_err();
        assert!(e("http://e1:2379/r").contains("is not an etcd URL"));
        assert!(e("etcd://e1:2379").contains("has no key prefix"));
        assert!(e("etcd:///r").contains("names no etcd member"));
        assert!(e("etcd://e1:0/r").contains("member \"e1:0\" has no valid port"));
        assert!(e("etcd://e1:99999/r").contains("has no valid port"));
        assert!(e("etcd://e1,,e2/r").contains("member \"\" is not a valid host"));
        assert!(e("etcd://e_1/r").contains("is not a valid host"));
        assert!(e("etcd://[fd00::1/r").contains("unclosed"));
        assert!(e("etcd://[fd00::g]:1/r").contains("not a valid IPv6"));
        assert!(e("etcd://e1/").contains("must be 1 to 128"));
        assert!(e("etcd://e1/a//b").contains("'//'"));
        assert!(e("etcd://e1/a/").contains("end with '/'"));
        assert!(e("etcd://e1/a b").contains("may hold only"));
        assert!(e(&format!("etcd://e1/{}", "p".repeat(129))).contains("1 to 128"));
    }
}
