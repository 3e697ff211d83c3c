//! libFuzzer entry for [`hostplane_fuzz::rshim_misc`] (the body and its properties live there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostplane_fuzz::rshim_misc(data));
