//! Where environment overrides come from: the process, or a map in tests.
//! Nothing in hostplane writes the environment (`std::env::set_var` is banned
//! by `clippy.toml`); tests pass a [`MapEnv`] instead.
use std::collections::HashMap;

pub trait Env {
    fn get(&self, key: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

/// A fixed environment, for tests.
#[derive(Debug, Clone, Default)]
pub struct MapEnv(pub HashMap<String, String>);

impl MapEnv {
    pub fn new<const N: usize>(pairs: [(&str, &str); N]) -> MapEnv {
        MapEnv(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

impl Env for MapEnv {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_env_answers_only_what_it_holds() {
        let env = MapEnv::new([("HOSTPLANE_LOG", "debug")]);
        assert_eq!(env.get("HOSTPLANE_LOG").as_deref(), Some("debug"));
        assert_eq!(env.get("HOSTPLANE_LOG_FORMAT"), None);
    }
}
