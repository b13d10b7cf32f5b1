//! Loads the eBPF tracker and drains its dirty-extent maps.
