//! The socket protocol from any bytes: a request line as the agent reads it, and a response
//! line as a client reads it. Nothing may panic; a request that parses survives a round trip.
#![no_main]
use btm_client::{Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(Ok(req)) = Request::parse_line(data) {
        let line = serde_json::to_vec(&req).unwrap();
        assert_eq!(Request::parse_line(&line), Some(Ok(req)));
    }
    let _ = serde_json::from_slice::<Response>(data);
});
