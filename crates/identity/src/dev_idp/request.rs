//! What a caller may ask the dev issuer's token endpoint for.
//!
//! The endpoint takes the same fields as a form (curl, shell scripts) or as
//! JSON (the `portcullis token` client, test code), so both are read into one
//! [`TokenParams`] here, with the same defaults and the same limits.

use serde_json::Value;

pub(crate) const DEFAULT_AUDIENCE: &str = "portcullis";
pub(crate) const DEFAULT_TTL_SECONDS: u64 = 600;
/// A dev token outliving a working day is more likely a mistake than a need.
pub(crate) const MAX_TTL_SECONDS: u64 = 24 * 60 * 60;

#[derive(Debug, PartialEq)]
pub(crate) struct TokenParams {
    pub sub: String,
    pub groups: Vec<String>,
    pub audience: String,
    pub ttl_seconds: u64,
}

/// Reads a JSON object body. Unknown fields (`grant_type`, `scope`...) are
/// ignored so generic OAuth clients work.
pub(crate) fn from_json(body: &Value) -> Result<TokenParams, String> {
    let object = body
        .as_object()
        .ok_or("request body must be a JSON object")?;
    let sub = match object.get("sub") {
        Some(Value::String(sub)) => sub.clone(),
        Some(_) => return Err("\"sub\" must be a string".into()),
        None => String::new(),
    };
    let groups = match object.get("groups") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(list)) => split_groups(list),
        Some(Value::Array(items)) => items
            .iter()
            .map(|g| {
                g.as_str()
                    .map(str::to_string)
                    .ok_or("\"groups\" must hold strings")
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("\"groups\" must be a string or a list of strings".into()),
    };
    let audience = match object.get("audience") {
        None | Some(Value::Null) => None,
        Some(Value::String(aud)) => Some(aud.clone()),
        Some(_) => return Err("\"audience\" must be a string".into()),
    };
    let ttl = match object.get("ttl_seconds") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .ok_or("\"ttl_seconds\" must be a positive integer")?,
        ),
        Some(Value::String(text)) => Some(parse_ttl(text)?),
        Some(_) => return Err("\"ttl_seconds\" must be a positive integer".into()),
    };
    finish(sub, groups, audience, ttl)
}

/// Reads `application/x-www-form-urlencoded` pairs; `groups` may be repeated
/// or comma-separated.
pub(crate) fn from_form(pairs: &[(String, String)]) -> Result<TokenParams, String> {
    let mut sub = String::new();
    let mut groups = Vec::new();
    let mut audience = None;
    let mut ttl = None;
    for (name, value) in pairs {
        match name.as_str() {
            "sub" => sub = value.clone(),
            "groups" => groups.extend(split_groups(value)),
            "audience" => audience = Some(value.clone()),
            "ttl_seconds" => ttl = Some(parse_ttl(value)?),
            _ => {}
        }
    }
    finish(sub, groups, audience, ttl)
}

fn finish(
    sub: String,
    groups: Vec<String>,
    audience: Option<String>,
    ttl: Option<u64>,
) -> Result<TokenParams, String> {
    if sub.trim().is_empty() {
        return Err("\"sub\" is required".into());
    }
    let audience = audience.unwrap_or_else(|| DEFAULT_AUDIENCE.to_string());
    if audience.is_empty() {
        return Err("\"audience\" must not be empty".into());
    }
    let ttl_seconds = ttl.unwrap_or(DEFAULT_TTL_SECONDS);
    if !(1..=MAX_TTL_SECONDS).contains(&ttl_seconds) {
        return Err(format!(
            "\"ttl_seconds\" must be between 1 and {MAX_TTL_SECONDS}"
        ));
    }
    Ok(TokenParams {
        sub,
        groups,
        audience,
        ttl_seconds,
    })
}

fn split_groups(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_ttl(text: &str) -> Result<u64, String> {
    text.trim()
        .parse()
        .map_err(|_| "\"ttl_seconds\" must be a positive integer".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn json_with_defaults() {
        let params = from_json(&json!({"sub": "alice"})).unwrap();
        assert_eq!(
            params,
            TokenParams {
                sub: "alice".into(),
                groups: vec![],
                audience: "portcullis".into(),
                ttl_seconds: 600
            }
        );
    }

    #[test]
    fn json_groups_as_string_or_array() {
        let from_string = from_json(&json!({"sub": "a", "groups": "sre, dev,"})).unwrap();
        assert_eq!(from_string.groups, ["sre", "dev"]);
        let from_array =
            from_json(&json!({"sub": "a", "groups": ["sre", "dev"], "ttl_seconds": 60})).unwrap();
        assert_eq!(from_array.groups, ["sre", "dev"]);
        assert_eq!(from_array.ttl_seconds, 60);
    }

    #[test]
    fn form_fields() {
        let params = from_form(&pairs(&[
            ("sub", "ci"),
            ("groups", "a,b"),
            ("groups", "c"),
            ("audience", "k8s"),
            ("ttl_seconds", "30"),
            ("grant_type", "client_credentials"),
        ]))
        .unwrap();
        assert_eq!(params.groups, ["a", "b", "c"]);
        assert_eq!((params.audience.as_str(), params.ttl_seconds), ("k8s", 30));
    }

    #[test]
    fn refuses_bad_requests() {
        assert!(from_json(&json!({})).is_err());
        assert!(from_json(&json!({"sub": ""})).is_err());
        assert!(from_json(&json!({"sub": 5})).is_err());
        assert!(from_json(&json!([1])).is_err());
        assert!(from_json(&json!({"sub": "a", "groups": [1]})).is_err());
        assert!(from_json(&json!({"sub": "a", "ttl_seconds": 0})).is_err());
        assert!(from_json(&json!({"sub": "a", "ttl_seconds": -5})).is_err());
        assert!(from_json(&json!({"sub": "a", "ttl_seconds": 1_000_000})).is_err());
        assert!(from_json(&json!({"sub": "a", "audience": ""})).is_err());
        assert!(from_form(&pairs(&[("sub", "a"), ("ttl_seconds", "soon")])).is_err());
        assert!(from_form(&pairs(&[("groups", "a")])).is_err());
    }
}
