//! The first-party connectors, compiled to components by `build.rs` and
//! embedded in the binary so a fresh checkout needs no install step.

include!(concat!(env!("OUT_DIR"), "/builtin.rs"));

/// The component bytes of a built-in connector.
pub fn component(name: &str) -> Option<&'static [u8]> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, bytes)| *bytes)
}

/// Names of the built-in connectors.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(name, _)| *name)
}
