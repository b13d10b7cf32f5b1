//! Serving connections so that no client can hold up another: the agent's socket and the
//! metrics endpoint both answer each connection on its own thread, at most so many at once.
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

/// Runs `handle` on a thread of its own for each connection of `conns`, with at most `max`
/// running; a connection beyond that goes to `busy` (on the accepting thread) instead.
pub fn each_on_its_thread<S: Send + 'static>(
    conns: impl Iterator<Item = S>,
    max: usize,
    busy: impl Fn(S),
    handle: impl Fn(S) + Clone + Send + 'static,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in conns {
        if active.load(Ordering::SeqCst) >= max {
            busy(conn);
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (active, handle) = (active.clone(), handle.clone());
        std::thread::spawn(move || {
            handle(conn);
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}
