//! libFuzzer entry for [`hostplane_fuzz::agent_config`] (the body and its properties live there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostplane_fuzz::agent_config(data));
