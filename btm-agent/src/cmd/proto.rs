//! The agent's socket protocol and client: the `btm-client` crate, which a node can depend on
//! without pulling in the agent.
pub use btm_client::*;
