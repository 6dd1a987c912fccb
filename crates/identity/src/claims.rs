//! Turning the claims of a token whose signature verified into a [`Principal`].
//!
//! A genuine signature only says the issuer minted the token; these checks
//! say it was minted *for us* (`aud`), is *current* (`exp`, `nbf`, `iat`,
//! with the issuer's configured clock-skew leeway) and names someone
//! (`principal_claim`). They run after the signature check so that claim
//! details are only ever reported about authentic tokens.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_config::OidcIssuerConfig;
use serde_json::{Map, Value};

use crate::error::{clip, AuthError};
use crate::Principal;

/// 9999-12-31T23:59:59Z: later timestamps are nonsense and would not format.
const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

/// Checks time and audience claims, then builds the principal.
pub(crate) fn into_principal(
    claims: Map<String, Value>,
    config: &OidcIssuerConfig,
    now: SystemTime,
    token_fingerprint: String,
) -> Result<Principal, AuthError> {
    let expires_at = check_times(&claims, config.leeway.0, now)?;
    check_audience(&claims, &config.audience)?;
    let name = principal_name(&claims, &config.principal_claim)?;
    let groups = match &config.groups_claim {
        Some(claim) => groups(&claims, claim)?,
        None => Vec::new(),
    };
    Ok(Principal {
        name,
        groups,
        issuer: config.issuer.clone(),
        claims,
        expires_at,
        token_fingerprint,
    })
}

/// Returns `exp`. Leeway widens every bound, because the issuer's clock and
/// ours disagree by a few seconds in practice.
fn check_times(
    claims: &Map<String, Value>,
    leeway: Duration,
    now: SystemTime,
) -> Result<SystemTime, AuthError> {
    let exp = numeric_date(claims, "exp")?.ok_or(AuthError::MissingClaim { claim: "exp" })?;
    // checked_add: a huge configured leeway must not panic; it just never trips.
    if exp.checked_add(leeway).is_some_and(|end| end < now) {
        return Err(AuthError::Expired { at: exp });
    }
    let latest_start = now.checked_add(leeway);
    for claim in ["nbf", "iat"] {
        if let Some(at) = numeric_date(claims, claim)? {
            if latest_start.is_some_and(|latest| at > latest) {
                return Err(AuthError::NotYetValid { claim, at });
            }
        }
    }
    Ok(exp)
}

/// Reads an RFC 7519 NumericDate (seconds since the epoch, possibly fractional).
fn numeric_date(claims: &Map<String, Value>, claim: &str) -> Result<Option<SystemTime>, AuthError> {
    let Some(value) = claims.get(claim) else {
        return Ok(None);
    };
    let seconds = value
        .as_f64()
        .filter(|s| s.is_finite() && (0.0..=MAX_NUMERIC_DATE).contains(s))
        .ok_or_else(|| AuthError::InvalidClaim {
            claim: claim.to_string(),
            reason: "not a timestamp (seconds since 1970)".into(),
        })?;
    Ok(Some(UNIX_EPOCH + Duration::from_secs_f64(seconds.floor())))
}

fn check_audience(claims: &Map<String, Value>, expected: &str) -> Result<(), AuthError> {
    let found = match claims.get("aud") {
        Some(Value::String(aud)) => aud == expected,
        Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(expected)),
        _ => false,
    };
    if found {
        Ok(())
    } else {
        Err(AuthError::WrongAudience {
            expected: expected.to_string(),
        })
    }
}

fn principal_name(claims: &Map<String, Value>, claim: &str) -> Result<String, AuthError> {
    match claims.get(claim) {
        Some(Value::String(name)) if !name.is_empty() => Ok(name.clone()),
        _ => Err(AuthError::MissingPrincipalClaim {
            claim: claim.to_string(),
        }),
    }
}

/// Issuers disagree on shape (Okta and Keycloak send arrays, some send one
/// string), so both are accepted; anything else is refused rather than
/// guessed at, since groups grant access.
fn groups(claims: &Map<String, Value>, claim: &str) -> Result<Vec<String>, AuthError> {
    let invalid = |reason: &str| AuthError::InvalidClaim {
        claim: claim.to_string(),
        reason: reason.to_string(),
    };
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(group)) => Ok(vec![group.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid("not a list of strings"))
            })
            .collect(),
        Some(_) => Err(invalid("neither a string nor a list of strings")),
    }
}

/// The unverified `iss`, used only to choose which issuer's keys to try.
pub(crate) fn unverified_issuer(claims: &Map<String, Value>) -> Result<&str, AuthError> {
    match claims.get("iss") {
        Some(Value::String(iss)) => Ok(iss),
        Some(other) => Err(AuthError::InvalidClaim {
            claim: "iss".into(),
            reason: format!("not a string ({})", clip(&other.to_string())),
        }),
        None => Err(AuthError::MissingClaim { claim: "iss" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::HumanDuration;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn config() -> OidcIssuerConfig {
        OidcIssuerConfig {
            issuer: "https://issuer.example".into(),
            audience: "portcullis".into(),
            principal_claim: "sub".into(),
            groups_claim: Some("groups".into()),
            leeway: HumanDuration(Duration::from_secs(30)),
            jwks_uri: None,
        }
    }

    fn check(claims: Value) -> Result<Principal, AuthError> {
        let Value::Object(map) = claims else {
            panic!("claims must be an object")
        };
        into_principal(
            map,
            &config(),
            UNIX_EPOCH + Duration::from_secs(NOW),
            "fp".into(),
        )
    }

    fn base() -> Value {
        json!({"iss": "https://issuer.example", "sub": "alice", "aud": "portcullis", "exp": NOW + 60})
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    #[test]
    fn builds_principal() {
        let p = check(with(base(), "groups", json!(["sre", "dev"]))).expect("valid");
        assert_eq!(p.name, "alice");
        assert_eq!(p.groups, ["sre", "dev"]);
        assert_eq!(p.expires_at, UNIX_EPOCH + Duration::from_secs(NOW + 60));
        assert_eq!(p.claims["sub"], "alice");
    }

    #[test]
    fn exp_is_required_and_bounded_by_leeway() {
        let mut no_exp = base();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(matches!(
            check(no_exp),
            Err(AuthError::MissingClaim { claim: "exp" })
        ));
        assert!(check(with(base(), "exp", json!(NOW - 29))).is_ok());
        assert!(matches!(
            check(with(base(), "exp", json!(NOW - 31))),
            Err(AuthError::Expired { .. })
        ));
        assert!(matches!(
            check(with(base(), "exp", json!("soon"))),
            Err(AuthError::InvalidClaim { .. })
        ));
        assert!(matches!(
            check(with(base(), "exp", json!(1e300))),
            Err(AuthError::InvalidClaim { .. })
        ));
        assert!(check(with(base(), "exp", json!((NOW + 60) as f64 + 0.5))).is_ok());
    }

    #[test]
    fn future_nbf_and_iat_are_refused_beyond_leeway() {
        assert!(check(with(base(), "nbf", json!(NOW + 29))).is_ok());
        assert!(matches!(
            check(with(base(), "nbf", json!(NOW + 31))),
            Err(AuthError::NotYetValid { claim: "nbf", .. })
        ));
        assert!(matches!(
            check(with(base(), "iat", json!(NOW + 31))),
            Err(AuthError::NotYetValid { claim: "iat", .. })
        ));
    }

    #[test]
    fn audience_string_or_array() {
        assert!(check(with(base(), "aud", json!(["other", "portcullis"]))).is_ok());
        for aud in [json!("other"), json!(["other"]), json!(null), json!(7)] {
            assert!(matches!(
                check(with(base(), "aud", aud)),
                Err(AuthError::WrongAudience { .. })
            ));
        }
    }

    #[test]
    fn principal_claim_must_be_a_nonempty_string() {
        for sub in [json!(null), json!(""), json!(42), json!(["alice"])] {
            assert!(matches!(
                check(with(base(), "sub", sub)),
                Err(AuthError::MissingPrincipalClaim { .. })
            ));
        }
    }

    #[test]
    fn groups_as_string_array_or_absent() {
        assert_eq!(
            check(with(base(), "groups", json!("sre"))).unwrap().groups,
            ["sre"]
        );
        assert!(check(base()).unwrap().groups.is_empty());
        assert!(matches!(
            check(with(base(), "groups", json!(["sre", 1]))),
            Err(AuthError::InvalidClaim { .. })
        ));
        assert!(matches!(
            check(with(base(), "groups", json!({"a": 1}))),
            Err(AuthError::InvalidClaim { .. })
        ));
    }

    #[test]
    fn unverified_issuer_must_be_a_string() {
        let Value::Object(map) = json!({"iss": 5}) else {
            unreachable!()
        };
        assert!(matches!(
            unverified_issuer(&map),
            Err(AuthError::InvalidClaim { .. })
        ));
        assert!(matches!(
            unverified_issuer(&Map::new()),
            Err(AuthError::MissingClaim { claim: "iss" })
        ));
    }
}
