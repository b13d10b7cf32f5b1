//! One module per CLI subcommand family.
pub mod config_cmd;
pub mod demo;
pub mod exec;
pub mod exit;
pub mod generate;
pub mod heights;
pub mod logs;
pub mod offsite;
pub mod proto;
pub mod report;
pub mod run;
pub mod sd_notify;
pub mod size;
pub mod socket;
pub mod status;
pub mod thaw;
pub mod track;
