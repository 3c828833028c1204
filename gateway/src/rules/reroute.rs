//! `reroute`: deliver on another provider (terminal).

/// A compiled `reroute` rule.
#[derive(Debug)]
pub struct Reroute {
    pub target: String,
}
