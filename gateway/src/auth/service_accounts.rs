//! Kubernetes ServiceAccount tokens, verified by the API server (TokenReview) for the
//! configured audience. Answers are cached by token digest for a short TTL (a deleted
//! ServiceAccount's token stops working within it); concurrent requests with the same new
//! token wait for one review. An unreachable API server is a 503, never a 401, and is not
//! cached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;

use super::{AuthError, Caller, Role, Scope, TokenDigest};

/// Bound on one TokenReview.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Cached review results (accepted and refused tokens alike: refusals protect the API
/// server from floods of bad tokens).
const CACHE_ENTRIES: usize = 10_000;

#[derive(Clone)]
struct Reviewed {
    expires: Instant,
    verdict: Result<Arc<Caller>, String>,
}

pub struct ServiceAccounts {
    client: kube::Client,
    audience: String,
    ttl: Duration,
    cache: quick_cache::sync::Cache<TokenDigest, Reviewed>,
}

impl ServiceAccounts {
    pub fn new(client: kube::Client, audience: String, ttl: Duration) -> ServiceAccounts {
        ServiceAccounts {
            client,
            audience,
            ttl,
            cache: quick_cache::sync::Cache::new(CACHE_ENTRIES),
        }
    }

    pub async fn authenticate(
        &self,
        token: &str,
        digest: TokenDigest,
    ) -> Result<Arc<Caller>, AuthError> {
        if let Some(hit) = self.cache.get(&digest) {
            if hit.expires > Instant::now() {
                return hit.verdict.map_err(AuthError::Unauthenticated);
            }
            self.cache.remove(&digest);
        }
        let reviewed = self
            .cache
            .get_or_insert_async(&digest, async {
                let verdict = self.review(token).await?.map(Arc::new);
                Ok::<_, AuthError>(Reviewed {
                    expires: Instant::now() + self.ttl,
                    verdict,
                })
            })
            .await?;
        reviewed.verdict.map_err(AuthError::Unauthenticated)
    }

    /// One TokenReview: `Ok(Err(reason))` is a definitive refusal.
    #[tracing::instrument(level = "debug", skip_all)]
    async fn review(&self, token: &str) -> Result<Result<Caller, String>, AuthError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| {
                    AuthError::Unverifiable(
                        "the API server did not answer the token review in time".into(),
                    )
                })?
                .map_err(|e| {
                    tracing::warn!(error = %e, "token review failed");
                    AuthError::Unverifiable("the API server could not review the token".into())
                })?;
        Ok(verdict(answer, &self.audience))
    }
}

/// The caller a TokenReview answer names, or why it names none.
fn verdict(answer: TokenReview, audience: &str) -> Result<Caller, String> {
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(format!(
            "token not accepted by the API server for audience {audience:?}"
        ));
    }
    if let Some(audiences) = &status.audiences
        && !audiences.iter().any(|a| a == audience)
    {
        return Err(format!("token not issued for audience {audience:?}"));
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    let Some((namespace, name)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return Err("not a ServiceAccount token".into());
    };
    Ok(Caller {
        identity: format!("system:serviceaccount:{namespace}:{name}"),
        role: Role::Workload,
        scope: Scope::namespace(namespace),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    fn answer(authenticated: bool, user: &str, audiences: Option<Vec<&str>>) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                user: Some(UserInfo {
                    username: Some(user.into()),
                    ..UserInfo::default()
                }),
                audiences: audiences.map(|a| a.into_iter().map(String::from).collect()),
                ..TokenReviewStatus::default()
            }),
            ..TokenReview::default()
        }
    }

    #[test]
    fn a_service_account_is_scoped_to_its_namespace() {
        let c = verdict(
            answer(
                true,
                "system:serviceaccount:team-a:app",
                Some(vec!["acteon"]),
            ),
            "acteon",
        )
        .unwrap();
        assert_eq!(c.identity, "system:serviceaccount:team-a:app");
        assert!(c.scope.covers_namespace("team-a") && !c.scope.covers_namespace("team-b"));
    }

    #[test]
    fn refusals_say_why() {
        assert!(
            verdict(answer(false, "", None), "acteon")
                .unwrap_err()
                .contains("not accepted")
        );
        assert!(
            verdict(
                answer(true, "system:serviceaccount:a:b", Some(vec!["other"])),
                "acteon"
            )
            .unwrap_err()
            .contains("audience")
        );
        assert!(
            verdict(answer(true, "alice", None), "acteon")
                .unwrap_err()
                .contains("not a ServiceAccount")
        );
    }
}
