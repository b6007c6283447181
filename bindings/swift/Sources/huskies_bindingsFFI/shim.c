// The FFI lives in include/huskies_bindingsFFI.h; see bindings/swift/generate.sh.
