//! Settings of the state machines, validated before use. Times are in
//! milliseconds (the daemon converts from the config file's durations).

use sha2::Digest;

use crate::key_schedule::KeyBits;
use crate::secret::Secret32;

/// An invalid setting, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// Two nodes share a name.
    #[error("two nodes are named {0:?}")]
    DuplicateName(String),
    /// Two nodes share a PSK: their init messages would be indistinguishable.
    #[error("nodes {0:?} and {1:?} have the same init key; every node needs its own")]
    DuplicatePsk(String, String),
    /// A duration above its upper bound.
    #[error("{0} must be at most {1} ms")]
    TooLong(&'static str, u64),
    /// A count above its upper bound.
    #[error("{0} must be at most {1}")]
    TooMany(&'static str, u32),
    /// The hub has no nodes.
    #[error("no nodes configured")]
    NoNodes,
    /// Too many nodes for 32-bit peer ids.
    #[error("too many nodes")]
    TooManyNodes,
}

/// One node, as the hub knows it.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Unique name; bound into every derived key.
    pub name: String,
    /// Pre-shared init key.
    pub psk: Secret32,
    /// Hub-driven rotation period.
    pub rotate_interval_ms: u64,
}

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The nodes; a node's index is its `PeerId`.
    pub nodes: Vec<NodeSpec>,
    /// How long a replaced generation's SAs linger before deletion.
    pub grace_ms: u64,
    /// ESP key size.
    pub key_bits: KeyBits,
    /// Largest accepted distance between an init's timestamp and the hub's clock.
    pub init_skew_ms: u64,
    /// How long the hub uses one X25519 key pair for the ratchet of the
    /// rotations it makes (0: a fresh key pair per rotation; at most
    /// [`MAX_RATCHET_EPOCH_MS`]). The key pair is zeroized when its epoch
    /// ends, so a compromise of the hub reveals at most the rotations of one
    /// epoch beyond the keys it holds anyway.
    pub ratchet_epoch_ms: u64,
    /// Every how many rotations of a node is an X25519 ratchet step (1:
    /// every rotation; at most [`MAX_RATCHET_EVERY`]). The rotations in
    /// between derive the new secret from the hub's random value alone, as
    /// protocol version 1 did, so a stolen generation secret also yields the
    /// generations up to the next step: the hub trades forward-secrecy
    /// granularity for one X25519 operation per rotation it skips.
    pub ratchet_every: u32,
}

/// Default of [`HubConfig::ratchet_every`]: every rotation.
pub const DEFAULT_RATCHET_EVERY: u32 = 1;

/// Upper bound of [`HubConfig::ratchet_every`].
pub const MAX_RATCHET_EVERY: u32 = 16;

/// Default of [`HubConfig::ratchet_epoch_ms`].
pub const DEFAULT_RATCHET_EPOCH_MS: u64 = 1_000;

/// Upper bound of [`HubConfig::ratchet_epoch_ms`].
pub const MAX_RATCHET_EPOCH_MS: u64 = 10_000;

/// Node settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's name, as in the hub's configuration.
    pub name: String,
    /// Pre-shared init key.
    pub psk: Secret32,
    /// Keepalive period.
    pub hello_interval_ms: u64,
    /// Unanswered hellos before falling back to init.
    pub retries: u32,
    /// How long a replaced generation's SAs linger before deletion.
    pub grace_ms: u64,
    /// ESP key size (must match the hub's).
    pub key_bits: KeyBits,
}

impl HubConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::NoNodes);
        }
        if u32::try_from(self.nodes.len()).is_err() {
            return Err(ConfigError::TooManyNodes);
        }
        if self.grace_ms == 0 {
            return Err(ConfigError::Zero("grace"));
        }
        if self.init_skew_ms == 0 {
            return Err(ConfigError::Zero("init_skew"));
        }
        if self.ratchet_every == 0 {
            return Err(ConfigError::Zero("ratchet_every"));
        }
        if self.ratchet_every > MAX_RATCHET_EVERY {
            return Err(ConfigError::TooMany("ratchet_every", MAX_RATCHET_EVERY));
        }
        if self.ratchet_epoch_ms > MAX_RATCHET_EPOCH_MS {
            return Err(ConfigError::TooLong("ratchet_epoch", MAX_RATCHET_EPOCH_MS));
        }
        let mut names = std::collections::HashSet::new();
        let mut psks = std::collections::HashMap::new();
        for n in &self.nodes {
            if n.rotate_interval_ms == 0 {
                return Err(ConfigError::Zero("rotate_interval"));
            }
            if !names.insert(n.name.as_str()) {
                return Err(ConfigError::DuplicateName(n.name.clone()));
            }
            // Compare digests, so no copy of a key lands in the map.
            let digest: [u8; 32] = sha2::Sha256::digest(n.psk.expose()).into();
            if let Some(other) = psks.insert(digest, n.name.as_str()) {
                return Err(ConfigError::DuplicatePsk(other.to_string(), n.name.clone()));
            }
        }
        Ok(())
    }
}

impl NodeConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.hello_interval_ms == 0 {
            return Err(ConfigError::Zero("hello_interval"));
        }
        if self.retries == 0 {
            return Err(ConfigError::Zero("retries"));
        }
        if self.grace_ms == 0 {
            return Err(ConfigError::Zero("grace"));
        }
        Ok(())
    }
}
