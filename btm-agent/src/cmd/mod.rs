//! One module per CLI subcommand family.
pub mod demo;
pub mod logs;
pub mod proto;
pub mod run;
pub mod track;
