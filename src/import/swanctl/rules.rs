//! What the importer does with each swanctl.conf setting of a connection, an
//! authentication round and a child: read it, ignore it (it concerns only
//! IKE, or rotor decides it otherwise; the import report lists it), or refuse
//! it unless it has its default value. A key missing from these tables is
//! refused as unknown: swanctl refuses unknown settings too, so a typo never
//! passes silently.

use super::values::{boolean, is_zero};

/// The importer's handling of one setting.
#[derive(Clone, Copy, Debug)]
pub enum Rule {
    /// Read by the importer.
    Used,
    /// No effect on rotor's configuration, for the reason given.
    Ignored(&'static str),
    /// Refused unless `ok` holds for its value (its default), for the reason
    /// given.
    Refused {
        /// Whether the value is one rotor does not need to reproduce.
        ok: fn(&str) -> bool,
        /// What rotor cannot do.
        why: &'static str,
    },
}

const IKE_ONLY: &str = "concerns IKE only; rotor's control channel replaces IKE (docs/protocol.md)";
const DPD: &str =
    "dead peer detection is rotor's hello (node.hello_interval, node.retries): defaults kept";
const PROPOSALS: &str =
    "rotor's ESP SAs use AES-GCM with 256-bit keys (hub.key_bits) whatever was negotiated";
const LIFETIMES: &str = "rotor rotates by time only (rotate_interval) and sets its own hard \
     lifetime (sa_lifetime); byte and packet limits and life_time have no rotor equivalent";
const ALWAYS_UP: &str = "rotor keeps every node's SAs installed at all times (no on-demand \
     start, no close or DPD action, no inactivity timeout)";
const OWN_IDS: &str = "rotor uses its own reqids and hub.priority / node.priority \
     (docs/migrating-from-strongswan.md)";
const REPLAY: &str = "rotor's replay window is hub.replay_window / node.replay_window \
     (default 1024 packets)";
const KERNEL_DEFAULTS: &str = "rotor's SAs use the kernel's defaults for these";
const EAP_ONLY: &str = "used by EAP or XAuth authentication only";
const REVOCATION: &str = "used with certificates only";

fn empty(v: &str) -> bool {
    v.trim().is_empty()
}
fn no(v: &str) -> bool {
    boolean("", v) == Ok(false)
}
fn yes(v: &str) -> bool {
    boolean("", v) == Ok(true)
}
fn zero(v: &str) -> bool {
    empty(v) || is_zero(v)
}
fn no_offload(v: &str) -> bool {
    no(v) || v.trim().eq_ignore_ascii_case("auto")
}
fn tunnel_or_transport(v: &str) -> bool {
    matches!(v.trim(), "tunnel" | "transport")
}

/// A connection's own settings (not its `local*`, `remote*` and `children`
/// sections).
pub fn connection(key: &str) -> Option<Rule> {
    use Rule::*;
    Some(match key {
        "local_addrs" | "remote_addrs" => Used,
        "version" | "local_port" | "remote_port" | "proposals" | "aggressive" | "pull" | "dscp"
        | "mobike" | "fragmentation" | "childless" | "send_certreq" | "send_cert" | "ocsp"
        | "ppk_id" | "ppk_required" | "keyingtries" | "unique" | "reauth_time" | "rekey_time"
        | "over_time" | "rand_time" => Ignored(IKE_ONLY),
        "dpd_delay" | "dpd_timeout" => Ignored(DPD),
        "vips" | "pools" => Refused {
            ok: empty,
            why: "virtual IPs are assigned by IKE; rotor has no address pools",
        },
        "encap" => Refused {
            ok: no,
            why: "rotor does not encapsulate ESP in UDP (NAT traversal) yet",
        },
        "if_id_in" | "if_id_out" => Refused {
            ok: zero,
            why: "rotor's SAs and policies carry no XFRM interface id",
        },
        "mediation" => Refused {
            ok: no,
            why: "rotor has no IKE mediation",
        },
        "mediated_by" | "mediation_peer" => Refused {
            ok: empty,
            why: "rotor has no IKE mediation",
        },
        _ => return None,
    })
}

/// The settings of a `local*` or `remote*` authentication round.
pub fn auth_round(key: &str) -> Option<Rule> {
    use Rule::*;
    Some(match key {
        "auth" | "id" | "round" => Used,
        "eap_id" | "aaa_id" | "xauth_id" => Ignored(EAP_ONLY),
        "revocation" => Ignored(REVOCATION),
        "certs" | "pubkeys" | "cacerts" | "ca_id" | "cert_policy" | "groups" => Refused {
            ok: empty,
            why: "certificates and public keys have no rotor equivalent: rotor authenticates \
                  each node with its own pre-shared init key",
        },
        _ => return None,
    })
}

/// A child's settings (`local_ts`, `remote_ts`, `mode` and `rekey_time` are
/// read by the child translation itself).
pub fn child(key: &str) -> Option<Rule> {
    use Rule::*;
    Some(match key {
        "local_ts" | "remote_ts" | "rekey_time" => Used,
        "mode" => Refused {
            ok: tunnel_or_transport,
            why: "rotor's SAs are ESP in transport or tunnel mode",
        },
        "esp_proposals" | "sha256_96" => Ignored(PROPOSALS),
        "life_time" | "rand_time" | "rekey_bytes" | "life_bytes" | "rand_bytes"
        | "rekey_packets" | "life_packets" | "rand_packets" => Ignored(LIFETIMES),
        "start_action" | "close_action" | "dpd_action" | "inactivity" => Ignored(ALWAYS_UP),
        "reqid" | "priority" => Ignored(OWN_IDS),
        "replay_window" => Ignored(REPLAY),
        "copy_df" | "copy_ecn" | "copy_dscp" | "icmp" | "label_mode" => Ignored(KERNEL_DEFAULTS),
        "hostaccess" => Ignored("only used by updown scripts"),
        "ah_proposals" => Refused {
            ok: empty,
            why: "rotor protects traffic with ESP only, not AH",
        },
        "updown" => Refused {
            ok: empty,
            why: "rotor runs no updown script; set up what it did (firewall rules, routes) \
                  by other means and remove it",
        },
        "policies" => Refused {
            ok: yes,
            why: "rotor always installs its policies",
        },
        "policies_fwd_out" => Refused {
            ok: no,
            why: "rotor installs no outbound forward policies",
        },
        "ipcomp" => Refused {
            ok: no,
            why: "rotor does not compress (IPComp)",
        },
        "interface" => Refused {
            ok: empty,
            why: "rotor's policies are not bound to an interface",
        },
        "mark_in" | "mark_out" | "set_mark_in" | "set_mark_out" => Refused {
            ok: zero,
            why: "rotor's SAs and policies carry no XFRM mark",
        },
        "mark_in_sa" => Refused {
            ok: no,
            why: "rotor's SAs and policies carry no XFRM mark",
        },
        "if_id_in" | "if_id_out" => Refused {
            ok: zero,
            why: "rotor's SAs and policies carry no XFRM interface id",
        },
        "label" => Refused {
            ok: empty,
            why: "rotor's policies carry no security label",
        },
        "tfc_padding" => Refused {
            ok: zero,
            why: "rotor adds no traffic flow confidentiality padding",
        },
        "per_cpu_sas" => Refused {
            ok: no,
            why: "rotor installs one SA per direction, not one per CPU",
        },
        "hw_offload" => Refused {
            ok: no_offload,
            why: "rotor does not request hardware offload",
        },
        _ => return None,
    })
}
