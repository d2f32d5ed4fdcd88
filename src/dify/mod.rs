use crate::config::Issue;
use serde::Deserialize;
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DifyConfig {}
impl DifyConfig {
    pub fn validate(&self, _issues: &mut Vec<Issue>) {}
}
