//! Height sources: the ways a block height reaches the agent besides a direct
//! [`crate::cmd::proto::snapshot`] call. A node hook hands over a block (`btm-agent notify`), or
//! a poller asks the node's RPC for its height (`btm-agent watch`). Both end in the same
//! socket request, so the agent does not care where a height came from.
//!
//! The parsers are pure functions over the node's JSON so they can be tested against canned
//! answers in the exact format each node sends.
pub mod rpc;

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

pub use rpc::{Auth, Endpoint};

/// Which node RPC dialect to poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// Bitcoin Core and forks (litecoind, dogecoind...): JSON-RPC `getblockcount`.
    Bitcoin,
    /// CometBFT / Tendermint chains: `GET /status`, `result.sync_info.latest_block_height`.
    Cometbft,
    /// Ethereum execution clients (geth, reth, nethermind...): JSON-RPC `eth_blockNumber`.
    Ethereum,
}

impl Source {
    /// The node's current height.
    pub fn latest_height(self, ep: &Endpoint) -> Result<u64> {
        match self {
            Source::Bitcoin => parse_bitcoin_count(&ep.call("getblockcount", json!([]))?),
            Source::Cometbft => parse_cometbft_status(&ep.get("/status")?),
            Source::Ethereum => parse_eth_block_number(&ep.call("eth_blockNumber", json!([]))?),
        }
    }
}

/// `getblockcount`'s result: a bare number.
pub fn parse_bitcoin_count(v: &Value) -> Result<u64> {
    v.as_u64()
        .ok_or_else(|| anyhow!("getblockcount returned {v}, not a height"))
}

/// CometBFT `/status`: the height is a decimal *string* at `result.sync_info.latest_block_height`.
/// Some gateways strip the JSON-RPC envelope, so a bare `sync_info` object is accepted too.
pub fn parse_cometbft_status(v: &Value) -> Result<u64> {
    let root = v.get("result").unwrap_or(v);
    let h = root
        .pointer("/sync_info/latest_block_height")
        .ok_or_else(|| anyhow!("/status has no sync_info.latest_block_height: {v}"))?;
    match h {
        Value::String(s) => s
            .parse()
            .with_context(|| format!("latest_block_height {s:?} is not a number")),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| anyhow!("latest_block_height {n} is not a height")),
        other => Err(anyhow!("latest_block_height is {other}, not a height")),
    }
}

/// `eth_blockNumber`'s result: a `0x`-prefixed hex quantity.
pub fn parse_eth_block_number(v: &Value) -> Result<u64> {
    let s = v
        .as_str()
        .ok_or_else(|| anyhow!("eth_blockNumber returned {v}, not a hex string"))?;
    let hex = s
        .strip_prefix("0x")
        .ok_or_else(|| anyhow!("eth_blockNumber returned {s:?}: no 0x prefix"))?;
    u64::from_str_radix(hex, 16).with_context(|| format!("eth_blockNumber {s:?} is not hex"))
}

/// The height of a block named by hash (what `-blocknotify` passes as `%s`).
pub fn bitcoin_block_height(ep: &Endpoint, hash: &str) -> Result<u64> {
    let hdr = ep.call("getblockheader", json!([hash, true]))?;
    hdr.get("height")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("getblockheader {hash} has no height: {hdr}"))
}

/// Makes a Bitcoin Core family node write its block index and UTXO set to disk now.
///
/// These nodes flush only every hour or when their cache fills, so a crash-consistent image
/// taken without a flush restarts at the last flush, not at the cut's height.
/// `gettxoutsetinfo` forces a full flush first; `none` skips the set hash (it still scans the
/// set: instant on small chains, tens of seconds on mainnet).
pub fn bitcoin_flush(ep: &Endpoint) -> Result<()> {
    ep.call("gettxoutsetinfo", json!(["none"]))
        .context("flushing the node with gettxoutsetinfo")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cometbft_status_real_format() {
        let v: Value = serde_json::from_str(
            r#"{"jsonrpc":"2.0","id":-1,"result":{"node_info":{"network":"cosmoshub-4"},
            "sync_info":{"latest_block_hash":"AB12","latest_app_hash":"CD34",
            "latest_block_height":"21453120","latest_block_time":"2024-07-01T10:00:00Z",
            "earliest_block_height":"5200791","catching_up":false},
            "validator_info":{"voting_power":"0"}}}"#,
        )
        .unwrap();
        assert_eq!(parse_cometbft_status(&v).unwrap(), 21_453_120);
        let bare = json!({"sync_info": {"latest_block_height": 7}});
        assert_eq!(parse_cometbft_status(&bare).unwrap(), 7);
        assert!(parse_cometbft_status(&json!({"result": {}})).is_err());
        let bad = json!({"result": {"sync_info": {"latest_block_height": "12a"}}});
        assert!(parse_cometbft_status(&bad).is_err());
    }

    #[test]
    fn eth_block_number_hex() {
        assert_eq!(
            parse_eth_block_number(&json!("0x1312d00")).unwrap(),
            20_000_000
        );
        assert_eq!(parse_eth_block_number(&json!("0x0")).unwrap(), 0);
        assert!(parse_eth_block_number(&json!("1312d00")).is_err());
        assert!(parse_eth_block_number(&json!(12)).is_err());
        assert!(parse_eth_block_number(&json!("0xzz")).is_err());
    }

    #[test]
    fn bitcoin_count() {
        assert_eq!(parse_bitcoin_count(&json!(840000)).unwrap(), 840_000);
        assert!(parse_bitcoin_count(&json!("840000")).is_err());
    }
}
