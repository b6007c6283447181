//! uniffi's binding generator, built from the same uniffi version as the library (the
//! documented way for proc-macro crates). maturin runs it to make the Python module;
//! `bindings/swift/generate.sh` runs it to make the Swift sources.

fn main() {
    uniffi::uniffi_bindgen_main()
}
