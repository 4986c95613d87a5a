//! `rotor import`: other VPNs' configurations as rotor configurations.

pub mod settings;
