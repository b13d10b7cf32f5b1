//! Which heights to keep: BTM fair and fade retention.
