//! Bounds that validation enforces, shared with the gateway (which may rely on them).

/// Longest delay, timeout or interval a rule or state machine may ask for: 7 days.
pub const MAX_DELAY_SECONDS: u64 = 604_800;
/// Most events in one group (`maxGroupSize`).
pub const MAX_GROUP_SIZE: u64 = 1000;
/// Most fields in `groupBy` and in `fingerprintFields`.
pub const MAX_KEY_FIELDS: usize = 20;
/// Most states of one StateMachine.
pub const MAX_STATES: usize = 100;
/// Most transitions of one StateMachine.
pub const MAX_TRANSITIONS: usize = 1000;
/// Longest state name, in bytes.
pub const MAX_STATE_NAME_BYTES: usize = 63;
