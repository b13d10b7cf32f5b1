//! A small blocking client for the node RPCs the height sources poll: JSON-RPC over HTTP POST
//! (Bitcoin Core family, Ethereum) and plain GET of JSON (CometBFT `/status`).
use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Value, json};

/// How to authenticate to the node.
#[derive(Clone, Debug)]
pub enum Auth {
    None,
    /// Bitcoin Core's `.cookie` (`user:password`): read at every call, because the node writes
    /// a new one each time it starts.
    Cookie(PathBuf),
    UserPass(String, String),
}

/// One node RPC endpoint.
pub struct Endpoint {
    url: String,
    auth: Auth,
    agent: ureq::Agent,
}

impl Endpoint {
    pub fn new(url: &str, auth: Auth, timeout: Duration) -> Endpoint {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // Bitcoin Core answers RPC errors with HTTP 500 and a JSON body worth reading.
            .http_status_as_error(false)
            .build()
            .into();
        Endpoint {
            url: url.trim_end_matches('/').to_string(),
            auth,
            agent,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn authorization(&self) -> Result<Option<String>> {
        let pair = match &self.auth {
            Auth::None => return Ok(None),
            Auth::UserPass(u, p) => format!("{u}:{p}"),
            Auth::Cookie(f) => std::fs::read_to_string(f)
                .with_context(|| {
                    format!(
                        "reading the RPC cookie {} (is the node running? pass the node's \
                         <datadir>/<network>/.cookie, or --rpc-user/--rpc-password)",
                        f.display()
                    )
                })?
                .trim()
                .to_string(),
        };
        Ok(Some(format!("Basic {}", STANDARD.encode(pair))))
    }

    /// Calls a JSON-RPC method and returns its `result`.
    pub fn call(&self, method: &str, params: Value) -> Result<Value> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let mut req = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json");
        if let Some(a) = self.authorization()? {
            req = req.header("Authorization", &a);
        }
        let resp = req
            .send(body.to_string().as_str())
            .with_context(|| format!("calling {method} on {}", self.url))?;
        let v = read_json(resp, &self.url)?;
        if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
            bail!("{method} on {} failed: {e}", self.url);
        }
        v.get("result")
            .cloned()
            .ok_or_else(|| anyhow!("{method} on {}: answer has no result: {v}", self.url))
    }

    /// GETs `path` under the endpoint and parses the JSON answer.
    pub fn get(&self, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.url);
        let mut req = self.agent.get(&url);
        if let Some(a) = self.authorization()? {
            req = req.header("Authorization", &a);
        }
        let resp = req.call().with_context(|| format!("GET {url}"))?;
        read_json(resp, &url)
    }
}

fn read_json(mut resp: ureq::http::Response<ureq::Body>, url: &str) -> Result<Value> {
    let status = resp.status();
    let text = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the answer of {url}"))?;
    if status == 401 || status == 403 {
        bail!(
            "{url} refused the credentials (HTTP {status}): check --rpc-cookie or --rpc-user/--rpc-password"
        );
    }
    serde_json::from_str(&text).map_err(|e| {
        let head: String = text.chars().take(200).collect();
        anyhow!("{url} answered HTTP {status} with something that is not JSON ({e}): {head:?}")
    })
}
