//! Append-only incremental log. See docs/FORMAT.md.
