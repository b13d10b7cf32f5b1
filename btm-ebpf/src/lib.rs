#![no_std]
// This file exists so that cargo can build btm-ebpf as a host dependency of btm-agent's build
// script (see the build-dependency there); the programs live in main.rs.
