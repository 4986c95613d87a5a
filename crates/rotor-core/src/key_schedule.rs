//! The key schedule: which key comes from which secret, with which label.
//! All derivations are HKDF-SHA256 (RFC 5869). Labels bind the protocol
//! version, the purpose, the direction, the node's name and, for generation
//! keys, the generation number and its SPI, so no two purposes ever share a
//! key. `docs/protocol.md` lists the exact labels and a test vector.
//!
//! The pre-shared init key (PSK) is never used as an ESP key or directly as a
//! control key: it only enters HKDF together with fresh nonces (I6).

use std::sync::OnceLock;

use hkdf::{Hkdf, HkdfExtract};
use sha2::Sha256;

use crate::secret::{ControlKey, EspKey, Secret32};

/// Direction of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Hub to node.
    HubToNode,
    /// Node to hub.
    NodeToHub,
}

impl Dir {
    fn label(self) -> &'static [u8] {
        match self {
            Dir::HubToNode => b"h2n",
            Dir::NodeToHub => b"n2h",
        }
    }
}

/// AES key size for the ESP SAs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyBits {
    /// AES-128-GCM (20 bytes with salt).
    Aes128,
    /// AES-256-GCM (36 bytes with salt).
    Aes256,
}

impl KeyBits {
    /// AES key length in bytes.
    pub fn aes_len(self) -> usize {
        match self {
            KeyBits::Aes128 => 16,
            KeyBits::Aes256 => 32,
        }
    }
}

/// Every key one generation yields.
#[derive(Clone, Debug)]
pub struct GenerationKeys {
    /// ESP SA hub -> node (kernel key + salt).
    pub esp_h2n: EspKey,
    /// ESP SA node -> hub.
    pub esp_n2h: EspKey,
    /// Control messages hub -> node.
    pub ctl_h2n: ControlKey,
    /// Control messages node -> hub.
    pub ctl_n2h: ControlKey,
}

impl GenerationKeys {
    /// The control key for messages travelling in `dir`.
    pub fn control(&self, dir: Dir) -> &ControlKey {
        match dir {
            Dir::HubToNode => &self.ctl_h2n,
            Dir::NodeToHub => &self.ctl_n2h,
        }
    }
}

/// A constant HKDF salt whose HMAC key schedule (two SHA-256 blocks of
/// every extract) is computed once per process.
struct Salt {
    salt: &'static [u8],
    ready: OnceLock<HkdfExtract<Sha256>>,
}

impl Salt {
    const fn new(salt: &'static [u8]) -> Salt {
        Salt {
            salt,
            ready: OnceLock::new(),
        }
    }

    /// `Hkdf::<Sha256>::new(Some(salt), ikm)`, the same PRK.
    fn extract(&self, ikm: &[u8]) -> Hkdf<Sha256> {
        let mut x = self
            .ready
            .get_or_init(|| HkdfExtract::new(Some(self.salt)))
            .clone();
        x.input_ikm(ikm);
        x.finalize().1
    }
}

static RATCHET: Salt = Salt::new(b"rotor/2 ratchet");
static GENERATION: Salt = Salt::new(b"rotor/1 generation");
static INIT_SPI: Salt = Salt::new(b"rotor/1 init-spi");
static STATE_RECORD: Salt = Salt::new(b"rotor/1 state-record");

fn info(parts: &[&[u8]]) -> Vec<u8> {
    // Length-prefixed parts: no two different part lists give the same info.
    let mut v = Vec::with_capacity(64);
    for p in parts {
        v.extend_from_slice(&(p.len() as u16).to_be_bytes());
        v.extend_from_slice(p);
    }
    v
}

fn expand(hk: &Hkdf<Sha256>, parts: &[&[u8]], out: &mut [u8]) {
    // HKDF-SHA256 can produce up to 8160 bytes; we never ask for more than 36.
    if hk.expand(&info(parts), out).is_err() {
        unreachable!("HKDF output length is a small constant");
    }
}

/// The secret of generation `generation` (N+1) created by a rotation under
/// N: HKDF-SHA256 with salt `"rotor/2 ratchet"` over the hub's random value
/// `hub_random` (carried in the `key` message, encrypted under N) followed by
/// the X25519 result `dh` of the node's share for N and the hub's share,
/// bound to the node, the generation, its SPI and both shares. A passive
/// attacker who holds generation N's secret can decrypt `hub_random` and both
/// shares, but not `dh`: without one of the two ephemeral private keys, the
/// new secret stays out of reach (forward secrecy per rotation).
#[allow(clippy::too_many_arguments)]
pub fn ratchet_secret(
    hub_random: &[u8; 32],
    dh: &[u8; 32],
    node: &str,
    generation: u64,
    spi: u32,
    node_share: &[u8; 32],
    hub_share: &[u8; 32],
) -> Secret32 {
    let mut ikm = zeroize::Zeroizing::new([0u8; 64]);
    ikm[..32].copy_from_slice(hub_random);
    ikm[32..].copy_from_slice(dh);
    let hk = RATCHET.extract(ikm.as_ref());
    let mut s = zeroize::Zeroizing::new([0u8; 32]);
    expand(
        &hk,
        &[
            b"ratchet",
            node.as_bytes(),
            &generation.to_be_bytes(),
            &spi.to_be_bytes(),
            node_share,
            hub_share,
        ],
        s.as_mut(),
    );
    Secret32::new(*s)
}

/// Derives a generation's four keys from its secret.
pub fn generation_keys(
    secret: &Secret32,
    node: &str,
    generation: u64,
    spi: u32,
    bits: KeyBits,
) -> GenerationKeys {
    let hk = generation_hkdf(secret);
    let g = generation.to_be_bytes();
    let s = spi.to_be_bytes();
    let esp = |dir: Dir| {
        let mut k = zeroize::Zeroizing::new([0u8; crate::secret::ESP_KEY_MAX]);
        let k = &mut k[..bits.aes_len() + 4];
        expand(&hk, &[b"esp", dir.label(), node.as_bytes(), &g, &s], k);
        EspKey::from_slice(k)
    };
    let (ctl_h2n, ctl_n2h) = control_keys_of(&hk, node, generation, spi);
    GenerationKeys {
        esp_h2n: esp(Dir::HubToNode),
        esp_n2h: esp(Dir::NodeToHub),
        ctl_h2n,
        ctl_n2h,
    }
}

/// The control keys (hub -> node, node -> hub) of [`generation_keys`]
/// alone: a generation restored from a record needs no ESP key until the
/// kernel has lost one of its SAs.
pub fn generation_control_keys(
    secret: &Secret32,
    node: &str,
    generation: u64,
    spi: u32,
) -> (ControlKey, ControlKey) {
    control_keys_of(&generation_hkdf(secret), node, generation, spi)
}

fn generation_hkdf(secret: &Secret32) -> Hkdf<Sha256> {
    GENERATION.extract(secret.expose())
}

fn control_keys_of(
    hk: &Hkdf<Sha256>,
    node: &str,
    generation: u64,
    spi: u32,
) -> (ControlKey, ControlKey) {
    let (g, s) = (generation.to_be_bytes(), spi.to_be_bytes());
    let ctl = |dir: Dir| {
        let mut k = [0u8; 32];
        expand(
            hk,
            &[b"control", dir.label(), node.as_bytes(), &g, &s],
            &mut k,
        );
        ControlKey(k)
    };
    (ctl(Dir::HubToNode), ctl(Dir::NodeToHub))
}

/// The SPI that names a node's init key in control messages: derived from the
/// PSK, in `0x100..=0x7fff_ffff` (never a reserved SPI).
pub fn init_spi(psk: &Secret32) -> u32 {
    let hk = INIT_SPI.extract(psk.expose());
    let mut b = [0u8; 4];
    expand(&hk, &[b"init-spi"], &mut b);
    0x100 + u32::from_be_bytes(b) % (0x8000_0000 - 0x100)
}

/// A 16-byte tag of the PSK and node name, stored in persisted state records
/// so that a record written under another PSK (or for another node) is
/// refused. One-way: it reveals nothing usable about the PSK.
pub fn record_psk_tag(psk: &Secret32, node: &str) -> [u8; 16] {
    let hk = STATE_RECORD.extract(psk.expose());
    let mut t = [0u8; 16];
    expand(&hk, &[b"psk-tag", node.as_bytes()], &mut t);
    t
}

/// Key of one `init` request (node -> hub): PSK + the request's fresh nonce,
/// so a restarted node, whose counters start again, never reuses a key.
pub fn init_request_key(psk: &Secret32, node: &str, node_nonce: &[u8; 32]) -> ControlKey {
    let hk = Hkdf::<Sha256>::new(Some(node_nonce), psk.expose());
    let mut k = [0u8; 32];
    expand(&hk, &[b"rotor/1 init-request", node.as_bytes()], &mut k);
    ControlKey(k)
}

/// Key of the MAC that ends the hub's reply to the init with `node_nonce`
/// (`wire::INIT_REPLY_MAC_LEN`): from the PSK and the nonce alone, so the
/// node checks a reply before it computes the X25519 its AEAD key needs.
pub fn init_reply_mac_key(psk: &Secret32, node: &str, node_nonce: &[u8; 32]) -> ControlKey {
    let hk = Hkdf::<Sha256>::new(Some(node_nonce), psk.expose());
    let mut k = [0u8; 32];
    expand(&hk, &[b"rotor/2 init-reply-mac", node.as_bytes()], &mut k);
    ControlKey(k)
}

/// Key of the hub's init reply: PSK + X25519 shared secret + both nonces.
/// Learning the PSK later does not reveal it (forward secrecy), as long as the
/// ephemeral keys are gone.
pub fn init_session_key(
    psk: &Secret32,
    dh_shared: &[u8; 32],
    node_nonce: &[u8; 32],
    hub_nonce: &[u8; 32],
    node: &str,
) -> ControlKey {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(node_nonce);
    salt[32..].copy_from_slice(hub_nonce);
    let mut ikm = zeroize::Zeroizing::new([0u8; 64]);
    ikm[..32].copy_from_slice(psk.expose());
    ikm[32..].copy_from_slice(dh_shared);
    let hk = Hkdf::<Sha256>::new(Some(&salt), ikm.as_ref());
    let mut k = [0u8; 32];
    expand(
        &hk,
        &[b"rotor/1 init-session", b"h2n", node.as_bytes()],
        &mut k,
    );
    ControlKey(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_salt_extracts_what_a_fresh_one_does() {
        for salt in [&RATCHET, &GENERATION, &INIT_SPI, &STATE_RECORD] {
            for ikm in [&[7u8; 32][..], &[1u8; 64][..]] {
                let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
                // Twice: the first call fills the cache, the second uses it.
                for _ in 0..2 {
                    salt.extract(ikm).expand(b"x", &mut a).unwrap();
                    Hkdf::<Sha256>::new(Some(salt.salt), ikm)
                        .expand(b"x", &mut b)
                        .unwrap();
                    assert_eq!(a, b);
                }
            }
        }
    }

    #[test]
    fn every_purpose_gets_a_different_key() {
        let s = Secret32::new([9; 32]);
        let k = generation_keys(&s, "mn1", 5, 0x1234, KeyBits::Aes256);
        let all = [
            k.esp_h2n.expose()[..32].to_vec(),
            k.esp_n2h.expose()[..32].to_vec(),
            k.ctl_h2n.0.to_vec(),
            k.ctl_n2h.0.to_vec(),
        ];
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(all[i], all[j]);
            }
        }
        assert_eq!(k.esp_h2n.expose().len(), 36);
        let (h2n, n2h) = generation_control_keys(&s, "mn1", 5, 0x1234);
        assert_eq!((h2n.0, n2h.0), (k.ctl_h2n.0, k.ctl_n2h.0));
        let other_node = generation_keys(&s, "mn2", 5, 0x1234, KeyBits::Aes256);
        assert_ne!(k.esp_h2n, other_node.esp_h2n);
        let other_gen = generation_keys(&s, "mn1", 6, 0x1234, KeyBits::Aes256);
        assert_ne!(k.esp_h2n, other_gen.esp_h2n);
        let k128 = generation_keys(&s, "mn1", 5, 0x1234, KeyBits::Aes128);
        assert_eq!(k128.esp_h2n.expose().len(), 20);
    }

    /// Known-answer vector, also printed in docs/protocol.md, so an independent
    /// implementation can check its key schedule.
    #[test]
    fn known_answer_vector() {
        let s = Secret32::new([0x01; 32]);
        let k = generation_keys(&s, "mn1", 1, 0x1000_0001, KeyBits::Aes128);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let got = format!(
            "esp_h2n={} esp_n2h={} ctl_h2n={} ctl_n2h={} init_spi={:#x}",
            hex(k.esp_h2n.expose()),
            hex(k.esp_n2h.expose()),
            hex(&k.ctl_h2n.0),
            hex(&k.ctl_n2h.0),
            init_spi(&Secret32::new([0x02; 32]))
        );
        // Cross-checked with an independent HKDF written with Python's
        // hmac/hashlib (the script is in docs/protocol.md).
        assert_eq!(got, KAT);
    }

    const KAT: &str = "esp_h2n=3391d3dd50ad1a0c58f61513cf4333c732cee889 \
        esp_n2h=ae43fe0ebe4dd771217f11c147bd9f0f62dd68f6 \
        ctl_h2n=430a23a1455d6a44d583f928df6a975643a6260e9d6ee084824976de6911e5a5 \
        ctl_n2h=e7c66ae243fbea397955aeb25f48fef5e5a1c996512c9ac54a1b65a311b68e7f \
        init_spi=0x29b997c2";

    /// Known-answer vector of the ratchet (protocol version 2), also printed
    /// in docs/protocol.md with an independent Python implementation
    /// (RFC 7748 X25519 and RFC 5869 HKDF from the standard library only).
    #[test]
    fn ratchet_known_answer_vector() {
        use crate::ratchet::Ephemeral;
        let node = Ephemeral::from_private(&[0x03; 32]).unwrap();
        let hub = Ephemeral::from_private(&[0x04; 32]).unwrap();
        let dh = node.agree(hub.public()).expect("contributory");
        assert_eq!(Some(&dh), hub.agree(node.public()).as_ref());
        let secret = ratchet_secret(
            &[0x05; 32],
            &dh,
            "mn1",
            2,
            0x1000_0002,
            node.public(),
            hub.public(),
        );
        let k = generation_keys(&secret, "mn1", 2, 0x1000_0002, KeyBits::Aes128);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let got = format!(
            "node_share={} hub_share={} dh={} secret={} esp_h2n={} esp_n2h={} ctl_h2n={} ctl_n2h={}",
            hex(node.public()),
            hex(hub.public()),
            hex(&*dh),
            hex(secret.expose()),
            hex(k.esp_h2n.expose()),
            hex(k.esp_n2h.expose()),
            hex(&k.ctl_h2n.0),
            hex(&k.ctl_n2h.0),
        );
        assert_eq!(got, RATCHET_KAT);
    }

    const RATCHET_KAT: &str = "\
        node_share=5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22 \
        hub_share=ac01b2209e86354fb853237b5de0f4fab13c7fcbf433a61c019369617fecf10b \
        dh=40e47a3f525bdcac491d418978d7db5af623ac7afe7623c6d78a5d4fce9d0f63 \
        secret=e3b74ced2f4c33d20ccbc72d799c898634557ee92eb077250a24d509b7f61ec6 \
        esp_h2n=9f2d67ca642e58fb4f2c5f735944d793c5b7f27c \
        esp_n2h=f6099219134fe6b46a59f4bdbcafd260f9719404 \
        ctl_h2n=eafbad268384f185d16eff2df0c82de6144ee1698392bf51646044366a780baa \
        ctl_n2h=fe11dd7ca37492bf3f8e7951976ef1228844a9134ecdfbd3fb262d175ed8b3ad";

    #[test]
    fn ratchet_secret_depends_on_every_input() {
        let base = || ratchet_secret(&[1; 32], &[2; 32], "a", 2, 0x100, &[3; 32], &[4; 32]);
        let variants = [
            ratchet_secret(&[9; 32], &[2; 32], "a", 2, 0x100, &[3; 32], &[4; 32]),
            ratchet_secret(&[1; 32], &[9; 32], "a", 2, 0x100, &[3; 32], &[4; 32]),
            ratchet_secret(&[1; 32], &[2; 32], "b", 2, 0x100, &[3; 32], &[4; 32]),
            ratchet_secret(&[1; 32], &[2; 32], "a", 3, 0x100, &[3; 32], &[4; 32]),
            ratchet_secret(&[1; 32], &[2; 32], "a", 2, 0x101, &[3; 32], &[4; 32]),
            ratchet_secret(&[1; 32], &[2; 32], "a", 2, 0x100, &[9; 32], &[4; 32]),
            ratchet_secret(&[1; 32], &[2; 32], "a", 2, 0x100, &[3; 32], &[9; 32]),
        ];
        for v in variants {
            assert_ne!(v, base());
        }
        assert_eq!(base(), base());
    }

    #[test]
    fn init_spi_is_never_reserved() {
        for b in 0..=255u8 {
            let spi = init_spi(&Secret32::new([b; 32]));
            assert!((0x100..0x8000_0000).contains(&spi));
        }
    }

    #[test]
    fn init_keys_depend_on_the_nonces() {
        let psk = Secret32::new([3; 32]);
        assert_ne!(
            init_request_key(&psk, "a", &[1; 32]),
            init_request_key(&psk, "a", &[2; 32])
        );
        assert_ne!(
            init_session_key(&psk, &[5; 32], &[1; 32], &[2; 32], "a"),
            init_session_key(&psk, &[5; 32], &[1; 32], &[3; 32], "a")
        );
        assert_ne!(
            init_session_key(&psk, &[5; 32], &[1; 32], &[2; 32], "a"),
            init_session_key(&psk, &[6; 32], &[1; 32], &[2; 32], "a")
        );
    }
}
