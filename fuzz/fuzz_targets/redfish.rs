//! libFuzzer entry for [`hostplane_fuzz::redfish`] (the body and its properties live there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostplane_fuzz::redfish(data));
