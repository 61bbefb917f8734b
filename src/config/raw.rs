//! The config as written: structure checked (unknown keys refused), every
//! scalar kept as text with its tag and line for [`super::resolve`].

use serde::Deserialize;
use serde_saphyr::{Spanned, Tagged};

/// A scalar as written: text, tag (`!env`, `!var`), position.
pub(crate) type Scalar = Spanned<Tagged<String>>;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub config_version: Option<Scalar>,
    #[serde(default, deserialize_with = "pairs")]
    pub vars: Vec<(Spanned<String>, Scalar)>,
    pub state_dir: Option<Scalar>,
    pub dashboard: Option<RawDashboard>,
    pub execution: Option<super::gateway::RawExecution>,
    pub sandbox: Option<super::sandbox::RawSandbox>,
    #[serde(default, deserialize_with = "pairs")]
    pub repos: Vec<(Spanned<String>, RawRepo)>,
}

/// `dashboard:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDashboard {
    pub host: Option<Scalar>,
    pub port: Option<Scalar>,
    pub base_url: Option<Scalar>,
    pub auth: Option<super::dashboard_auth::RawDashboardAuth>,
}

/// `repos.<id>:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRepo {
    pub repo_url: Option<Scalar>,
    pub model: Option<Scalar>,
    pub effort: Option<Scalar>,
    pub git: Option<super::gateway::RawGit>,
    pub email: Option<super::email::RawEmail>,
    pub resource_limits: Option<super::sandbox::RawResourceLimits>,
    pub network: Option<super::network::RawNetwork>,
}

/// Parses the text. The error message carries the line and a snippet.
pub(crate) fn parse(text: &str) -> Result<RawConfig, String> {
    let raw: Option<RawConfig> = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    Ok(raw.unwrap_or_default())
}

/// A YAML map read in document order with its keys' positions (a map type
/// would need `Ord` keys and would lose the positions).
pub(crate) fn pairs<'de, D, K, V>(d: D) -> Result<Vec<(K, V)>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: Deserialize<'de>,
    V: Deserialize<'de>,
{
    struct Pairs<K, V>(std::marker::PhantomData<(K, V)>);
    impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> serde::de::Visitor<'de> for Pairs<K, V> {
        type Value = Vec<(K, V)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(kv) = m.next_entry()? {
                out.push(kv);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Pairs(std::marker::PhantomData))
}
