//! libFuzzer entry for [`hostplane_fuzz::host_network`] (the body and its properties live there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostplane_fuzz::host_network(data));
