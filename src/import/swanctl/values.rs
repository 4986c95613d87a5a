//! swanctl.conf value syntaxes the importer reads: address lists, traffic
//! selectors, times, booleans and marks. Each parser returns the reason a
//! value cannot be translated, naming the value (these keys never hold
//! secrets).

use std::net::IpAddr;
use std::time::Duration;

use rotor_xfrm::IpNet;

/// One side's IKE address (`local_addrs` / `remote_addrs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addr {
    /// Exactly one IP address.
    One(IpAddr),
    /// Unset, `%any`, `%any4` or `%any6`: whichever address the peer uses.
    Any,
}

/// Reads an address list as rotor needs it: one literal IP address, or any.
pub fn addr(key: &str, value: &str) -> Result<Addr, String> {
    let items: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let one = match items.as_slice() {
        [] => return Ok(Addr::Any),
        [one] => *one,
        more => {
            return Err(format!(
                "{key} = {value} names {} addresses; rotor needs exactly one address per side",
                more.len()
            ));
        }
    };
    if matches!(one, "%any" | "%any4" | "%any6") {
        return Ok(Addr::Any);
    }
    if one.contains('/') || is_range(one) {
        return Err(format!(
            "{key} = {one} is a range of addresses, not one host: rotor needs each node's own \
             address (write one connection per node)"
        ));
    }
    one.parse::<IpAddr>()
        .map(Addr::One)
        .map_err(|_| format!("{key} = {one} is a host name: rotor needs the node's IP address"))
}

/// `A-B` with both ends IP addresses.
fn is_range(s: &str) -> bool {
    s.split_once('-').is_some_and(|(a, b)| {
        a.trim().parse::<IpAddr>().is_ok() && b.trim().parse::<IpAddr>().is_ok()
    })
}

/// One traffic selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ts {
    /// `dynamic`: the side's own (outer) address.
    Dynamic,
    /// A subnet (or one address, as a host prefix).
    Net(IpNet),
}

/// Reads `local_ts` / `remote_ts` (unset: `dynamic`).
pub fn traffic_selectors(key: &str, value: Option<&str>) -> Result<Vec<Ts>, String> {
    let Some(value) = value else {
        return Ok(vec![Ts::Dynamic]);
    };
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item.contains('[') {
            return Err(format!(
                "{key} = {item} selects by protocol or port: rotor's policies protect all \
                 traffic between the subnets"
            ));
        }
        if item == "dynamic" {
            out.push(Ts::Dynamic);
        } else if is_range(item) {
            return Err(format!(
                "{key} = {item} is an address range: rotor takes subnets (ADDRESS/PREFIX)"
            ));
        } else {
            let net = IpNet::parse(item)
                .ok_or_else(|| format!("{key} = {item} is not a subnet (ADDRESS/PREFIX)"))?;
            out.push(Ts::Net(net));
        }
    }
    if out.is_empty() {
        out.push(Ts::Dynamic);
    }
    Ok(out)
}

/// A strongSwan time: a whole number with an optional unit `s`, `m`, `h` or
/// `d` (seconds without one).
pub fn time(key: &str, value: &str) -> Result<Duration, String> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    let n: Option<u64> = num.parse().ok();
    match n.and_then(|n| n.checked_mul(scale)).filter(|_| scale > 0) {
        Some(secs) => Ok(Duration::from_secs(secs)),
        None => Err(format!(
            "{key} = {v} is not a time (a whole number with s, m, h or d)"
        )),
    }
}

/// strongSwan's booleans (`yes`, `true`, `enabled`, `1` and their opposites).
pub fn boolean(key: &str, value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "enabled" | "1" => Ok(true),
        "no" | "false" | "disabled" | "0" => Ok(false),
        _ => Err(format!("{key} = {value} is not yes or no")),
    }
}

/// Whether a mark or interface id (`VALUE[/MASK]`, decimal or `0x` hex) is
/// zero, i.e. not set.
pub fn is_zero(value: &str) -> bool {
    let v = value.split('/').next().unwrap_or("").trim();
    let n = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse::<u64>().ok(),
    };
    n == Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_one_any_or_the_reason() {
        assert_eq!(
            addr("remote_addrs", "192.0.2.1").unwrap(),
            Addr::One("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            addr("remote_addrs", " fd00::2 ").unwrap(),
            Addr::One("fd00::2".parse().unwrap())
        );
        for any in ["", "%any", "%any6", " , "] {
            assert_eq!(addr("remote_addrs", any).unwrap(), Addr::Any, "{any:?}");
        }
        let e = addr("remote_addrs", "10.77.0.0/16").unwrap_err();
        assert!(e.contains("range of addresses"), "{e}");
        let e = addr("remote_addrs", "10.0.0.1-10.0.0.9").unwrap_err();
        assert!(e.contains("range of addresses"), "{e}");
        let e = addr("remote_addrs", "sun.example.org").unwrap_err();
        assert!(e.contains("host name"), "{e}");
        let e = addr("remote_addrs", "192.0.2.1, 192.0.2.2").unwrap_err();
        assert!(e.contains("names 2 addresses"), "{e}");
    }

    #[test]
    fn traffic_selectors_subnets_dynamic_and_refusals() {
        assert_eq!(
            traffic_selectors("local_ts", None).unwrap(),
            vec![Ts::Dynamic]
        );
        let v = traffic_selectors("local_ts", Some("10.1.0.0/16, dynamic,192.0.2.7")).unwrap();
        assert_eq!(
            v,
            vec![
                Ts::Net(IpNet::parse("10.1.0.0/16").unwrap()),
                Ts::Dynamic,
                Ts::Net(IpNet::parse("192.0.2.7/32").unwrap())
            ]
        );
        let e = traffic_selectors("local_ts", Some("10.1.0.0/16[tcp/443]")).unwrap_err();
        assert!(e.contains("protocol or port"), "{e}");
        let e = traffic_selectors("local_ts", Some("10.1.0.1-10.1.0.5")).unwrap_err();
        assert!(e.contains("address range"), "{e}");
        let e = traffic_selectors("local_ts", Some("10.1.0.0/33")).unwrap_err();
        assert!(e.contains("not a subnet"), "{e}");
    }

    #[test]
    fn times_in_strongswan_units() {
        assert_eq!(
            time("rekey_time", "5400").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            time("rekey_time", "90m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(time("rekey_time", "1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            time("rekey_time", "2d").unwrap(),
            Duration::from_secs(172_800)
        );
        for bad in [
            "",
            "h",
            "1.5h",
            "1w",
            "99999999999999999999",
            "18446744073709551615d",
        ] {
            assert!(time("rekey_time", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn booleans_and_zero_marks() {
        assert!(boolean("x", "Yes").unwrap());
        assert!(!boolean("x", "disabled").unwrap());
        assert!(boolean("x", "maybe").is_err());
        for z in ["0", "0/0x00000000", "0x0", "0/0xffffffff"] {
            assert!(is_zero(z), "{z}");
        }
        for nz in ["1", "0x10/0xff", "%unique", "%same"] {
            assert!(!is_zero(nz), "{nz}");
        }
    }
}
