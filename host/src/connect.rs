//! How the host reaches a production Kafka and ClickHouse: librdkafka
//! properties passed through as kcat does (`-X security.protocol=SASL_SSL`,
//! or a properties file), and ClickHouse credentials from flags or the
//! environment. Secrets are never printed: [`KafkaProperties`]' `Debug`
//! and [`redact_url`] hide them.

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use std::fmt;
use std::path::Path;

/// librdkafka properties set on every client the host makes, after its
/// own defaults (so an operator's value wins).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(Vec<(String, String)>);

impl KafkaProperties {
    /// Properties from `key=value` lines of a file (blank lines and lines
    /// starting with `#` skipped, as in Java's and kcat's property files),
    /// then from `-X key=value` arguments, later ones winning.
    pub fn new(file: Option<&Path>, args: &[String]) -> Result<KafkaProperties> {
        let mut props = KafkaProperties::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading Kafka properties {}", path.display()))?;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                props
                    .push(line)
                    .with_context(|| format!("{} line {}", path.display(), i + 1))?;
            }
        }
        for arg in args {
            props.push(arg).context("-X")?;
        }
        Ok(props)
    }

    fn push(&mut self, kv: &str) -> Result<()> {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("{:?} is not key=value", redact_value(kv));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            bail!("a property with no name");
        }
        self.0.retain(|(key, _)| key != k);
        self.0.push((k.to_string(), v.to_string()));
        Ok(())
    }

    /// Sets every property on `config`.
    pub fn apply<'c>(&self, config: &'c mut ClientConfig) -> &'c mut ClientConfig {
        for (k, v) in &self.0 {
            config.set(k, v);
        }
        config
    }
}

/// Property names whose values are secrets.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "key"]
        .iter()
        .any(|s| key.contains(s))
}

/// `key=value` with the value hidden when the key names a secret.
fn redact_value(kv: &str) -> String {
    match kv.split_once('=') {
        Some((k, _)) if is_secret(k) => format!("{k}=***"),
        _ => kv.to_string(),
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(k, v)| (k, if is_secret(k) { "***" } else { v.as_str() })),
            )
            .finish()
    }
}

/// A ClickHouse user and password (`--clickhouse-user`,
/// `--clickhouse-password` or `ADTALLY_CLICKHOUSE_USER`,
/// `ADTALLY_CLICKHOUSE_PASSWORD`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClickHouseAuth {
    /// The user; ClickHouse's `default` when `None`.
    pub user: Option<String>,
    /// The password.
    pub password: Option<String>,
}

impl fmt::Debug for ClickHouseAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseAuth")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl ClickHouseAuth {
    /// Sets the credentials on `client`.
    pub fn apply(&self, mut client: clickhouse::Client) -> clickhouse::Client {
        if let Some(u) = &self.user {
            client = client.with_user(u);
        }
        if let Some(p) = &self.password {
            client = client.with_password(p);
        }
        client
    }
}

/// `url` without a password in its user part or its query, for logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if is_secret(&k) {
                        "***".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            // Without the `/` a bare `http://host:port` gains.
            u.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => "<unparsable url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_override_the_file_and_secrets_never_print() {
        let dir = std::env::temp_dir().join(format!("adtally-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("client.properties");
        std::fs::write(
            &file,
            "# a comment\n\nsecurity.protocol=SASL_SSL\nsasl.password = hunter2\n",
        )
        .unwrap();
        let props = KafkaProperties::new(
            Some(&file),
            &["security.protocol=SSL".into(), "sasl.username=u".into()],
        )
        .unwrap();
        assert_eq!(
            props.0,
            [
                ("sasl.password".to_string(), "hunter2".to_string()),
                ("security.protocol".into(), "SSL".into()),
                ("sasl.username".into(), "u".into()),
            ]
        );
        let shown = format!("{props:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("SSL"),
            "{shown}"
        );
        let e = KafkaProperties::new(None, &["sasl.password".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("not key=value"), "{e:#}");
        let auth = ClickHouseAuth {
            user: Some("u".into()),
            password: Some("hunter2".into()),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
        let url = redact_url("http://u:hunter2@127.0.0.1:8123/?password=hunter2&x=1");
        assert!(!url.contains("hunter2") && url.contains("x=1"), "{url}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
