//! Configuration text: `${VAR}` expansion, YAML parsing and validation never panic, and expansion
//! keeps the line count.
#![no_main]

use dify_gateway::config::Config;
use dify_gateway::config::expand::expand;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |k: &str| (k.len() % 2 == 0).then(|| format!("v-{k}"));
    if let Ok(out) = expand(text, env) {
        assert_eq!(out.matches('\n').count(), text.matches('\n').count());
    }
    let _ = Config::from_text(text, "fuzz.yaml", env);
});
