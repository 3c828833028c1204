//! API tokens for callers outside the cluster, from a file (standalone) and from labelled
//! Kubernetes Secrets. Held as SHA-256 digests; each source replaced as a whole when it
//! changes (editing a Secret or the file rotates a token without a restart).
//!
//! File (`--api-tokens-file`, YAML or JSON):
//! ```yaml
//! tokens:
//!   - name: ci
//!     token: "…"            # or sha256: "<64 hex>" to keep no plaintext on disk
//!     role: dispatch        # dispatch | read | admin
//!     namespaces: [team-*]  # required
//!     tenants: ["*"]        # default: every tenant
//! ```
//! Secret (labelled `--api-token-selector`, default `acteon.dev/api-token=true`): data keys
//! `token` (required), `role` (default `dispatch`), `namespaces` (required, comma-separated),
//! `tenants` (default `*`). The Secret's name names the caller (`token:<name>`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;

use super::{Caller, Role, Scope, TokenDigest, digest};

/// Every API token, by digest.
#[derive(Default)]
pub struct ApiTokens {
    current: RwLock<Arc<HashMap<TokenDigest, Arc<Caller>>>>,
    /// Tokens by source (`file`, `secret`), merged into `current` on every change.
    sources: Mutex<BTreeMap<&'static str, HashMap<TokenDigest, Caller>>>,
}

impl ApiTokens {
    pub fn get(&self, digest: &TokenDigest) -> Option<Arc<Caller>> {
        self.current.read().get(digest).cloned()
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.current.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the tokens of `source`.
    pub fn replace(&self, source: &'static str, tokens: HashMap<TokenDigest, Caller>) {
        let mut sources = self.sources.lock();
        sources.insert(source, tokens);
        let merged: HashMap<TokenDigest, Arc<Caller>> = sources
            .values()
            .flat_map(|m| m.iter().map(|(k, v)| (*k, Arc::new(v.clone()))))
            .collect();
        *self.current.write() = Arc::new(merged);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<FileToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    name: String,
    token: Option<String>,
    sha256: Option<String>,
    role: String,
    namespaces: Vec<String>,
    #[serde(default)]
    tenants: Vec<String>,
}

/// Parses a token file; errors name the entry and field, never a token.
pub fn parse_file(text: &str) -> Result<HashMap<TokenDigest, Caller>, String> {
    let file: TokenFile = serde_yaml_ng::from_str(text).map_err(|e| format!("{e}"))?;
    let mut out = HashMap::new();
    for (i, t) in file.tokens.iter().enumerate() {
        let at = format!("tokens[{i}] ({})", t.name);
        let digest = match (&t.token, &t.sha256) {
            (Some(token), None) if !token.trim().is_empty() => digest(token.trim()),
            (None, Some(hex_digest)) => hex::decode(hex_digest.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| format!("{at}.sha256: not 64 hex characters"))?,
            _ => return Err(format!("{at}: give exactly one of token and sha256")),
        };
        let caller = caller(
            &t.name,
            &t.role,
            &t.namespaces.join(","),
            &t.tenants.join(","),
        )
        .map_err(|e| format!("{at}.{e}"))?;
        if out.insert(digest, caller).is_some() {
            return Err(format!("{at}: the same token twice"));
        }
    }
    Ok(out)
}

/// The caller a token stands for; errors name the field.
fn caller(name: &str, role: &str, namespaces: &str, tenants: &str) -> Result<Caller, String> {
    let role = Role::parse(role).ok_or("role: use dispatch, read or admin")?;
    let namespaces = Scope::patterns(namespaces);
    if namespaces.is_empty() {
        return Err("namespaces: required (`*` for all)".into());
    }
    let tenants = match Scope::patterns(tenants) {
        t if t.is_empty() => vec![super::Pattern::any()],
        t => t,
    };
    Ok(Caller {
        identity: format!("token:{name}"),
        role,
        scope: Scope {
            namespaces,
            tenants,
        },
    })
}

/// The token of one labelled Secret.
pub fn from_secret(secret: &Secret) -> Result<(TokenDigest, Caller), String> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &str| -> Result<Option<String>, String> {
        data.get(key)
            .map(|v| {
                String::from_utf8(v.0.clone())
                    .map_err(|_| format!("Secret {name}: `{key}` is not text"))
            })
            .transpose()
    };
    let token = text("token")?
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| format!("Secret {name}: no `token`"))?;
    let role = text("role")?.unwrap_or_else(|| "dispatch".into());
    let namespaces = text("namespaces")?.unwrap_or_default();
    let tenants = text("tenants")?.unwrap_or_default();
    let caller =
        caller(&name, &role, &namespaces, &tenants).map_err(|e| format!("Secret {name}: {e}"))?;
    Ok((digest(token.trim()), caller))
}

/// Reads the token file now (an error stops the start) and re-reads it every `every`.
pub fn watch_file(tokens: Arc<ApiTokens>, path: PathBuf, every: Duration) -> anyhow::Result<()> {
    let read = |path: &PathBuf| -> Result<(String, HashMap<TokenDigest, Caller>), String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let parsed = parse_file(&text)?;
        Ok((text, parsed))
    };
    let (mut seen, parsed) =
        read(&path).map_err(|e| anyhow::anyhow!("--api-tokens-file {}: {e}", path.display()))?;
    tracing::info!(tokens = parsed.len(), "API tokens loaded from file");
    tokens.replace("file", parsed);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
        tick.tick().await;
        loop {
            tick.tick().await;
            match read(&path) {
                Ok((text, _)) if text == seen => {}
                Ok((text, parsed)) => {
                    tracing::info!(tokens = parsed.len(), "API token file changed; reloaded");
                    tokens.replace("file", parsed);
                    seen = text;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "API token file unreadable; keeping the tokens in use")
                }
            }
        }
    });
    Ok(())
}

/// Watches the labelled Secrets of `namespace` until the process ends.
pub fn watch_secrets(
    tokens: Arc<ApiTokens>,
    client: kube::Client,
    namespace: &str,
    selector: &str,
) {
    let api: kube::Api<Secret> = kube::Api::namespaced(client, namespace);
    let config = watcher::Config::default().labels(selector);
    tokio::spawn(async move {
        let mut stream = watch_stream(api, config).default_backoff().boxed();
        let mut live: HashMap<String, (TokenDigest, Caller)> = HashMap::new();
        let mut pending: Option<HashMap<String, (TokenDigest, Caller)>> = None;
        while let Some(event) = stream.next().await {
            let publish = match event {
                Ok(Event::Init) => {
                    pending = Some(HashMap::new());
                    false
                }
                Ok(Event::InitApply(secret)) => {
                    if let (Some(p), Some(entry)) = (pending.as_mut(), parse_logged(&secret)) {
                        p.insert(secret_name(&secret), entry);
                    }
                    false
                }
                Ok(Event::InitDone) => {
                    live = pending.take().unwrap_or_default();
                    true
                }
                Ok(Event::Apply(secret)) => {
                    match parse_logged(&secret) {
                        Some(entry) => live.insert(secret_name(&secret), entry),
                        None => live.remove(&secret_name(&secret)),
                    };
                    true
                }
                Ok(Event::Delete(secret)) => {
                    live.remove(&secret_name(&secret));
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "API token Secret watch error");
                    false
                }
            };
            if publish {
                tracing::info!(tokens = live.len(), "API tokens from Secrets updated");
                tokens.replace("secret", live.values().cloned().collect());
            }
        }
    });
}

fn secret_name(secret: &Secret) -> String {
    secret.metadata.name.clone().unwrap_or_default()
}

fn parse_logged(secret: &Secret) -> Option<(TokenDigest, Caller)> {
    from_secret(secret)
        .map_err(|e| tracing::warn!(error = %e, "API token Secret ignored"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_gives_callers_by_digest() {
        let hashed = hex::encode(digest("second"));
        let tokens = parse_file(&format!(
            "tokens:\n- {{name: ci, token: first, role: dispatch, namespaces: [team-*]}}\n\
             - {{name: ops, sha256: {hashed}, role: admin, namespaces: ['*'], tenants: [acme]}}\n"
        ))
        .unwrap();
        let ci = &tokens[&digest("first")];
        assert_eq!(ci.identity, "token:ci");
        assert_eq!(ci.role, Role::Dispatch);
        assert!(ci.scope.covers_namespace("team-a") && ci.scope.covers_tenant("anyone"));
        let ops = &tokens[&digest("second")];
        assert_eq!(ops.role, Role::Admin);
        assert!(!ops.scope.covers_tenant("globex"));
    }

    #[test]
    fn token_file_errors_name_the_entry_and_field_never_the_token() {
        for (text, want) in [
            (
                "tokens:\n- {name: a, token: s3cr3t, role: boss, namespaces: [x]}\n",
                "tokens[0] (a).role",
            ),
            (
                "tokens:\n- {name: a, token: s3cr3t, role: read, namespaces: []}\n",
                "namespaces: required",
            ),
            (
                "tokens:\n- {name: a, role: read, namespaces: [x]}\n",
                "exactly one of token",
            ),
            (
                "tokens:\n- {name: a, sha256: zz, role: read, namespaces: [x]}\n",
                "sha256",
            ),
            (
                "tokens:\n- {name: a, token: s3cr3t, role: read, namespaces: [x]}\n- {name: b, token: s3cr3t, role: read, namespaces: [x]}\n",
                "twice",
            ),
        ] {
            let err = parse_file(text).unwrap_err();
            assert!(err.contains(want), "{err} lacks {want}");
            assert!(!err.contains("s3cr3t"), "{err} shows the token");
        }
    }

    #[test]
    fn replacing_one_source_keeps_the_other() {
        let tokens = ApiTokens::default();
        let one =
            |name: &str| HashMap::from([(digest(name), caller(name, "read", "*", "").unwrap())]);
        tokens.replace("file", one("a"));
        tokens.replace("secret", one("b"));
        assert_eq!(tokens.len(), 2);
        tokens.replace("secret", one("c"));
        assert!(tokens.get(&digest("a")).is_some());
        assert!(tokens.get(&digest("b")).is_none(), "rotated away");
        assert!(tokens.get(&digest("c")).is_some());
    }
}
