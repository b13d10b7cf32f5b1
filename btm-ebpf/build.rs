//! Keeps `mark::mark_range` a global function of the object: bpf-linker makes every symbol it
//! is not told to export internal, which BTF then records as static, and the kernel verifies
//! a static function again at every call site.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg=--export=mark_range");
    }
}
