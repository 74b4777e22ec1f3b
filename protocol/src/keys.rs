//! Deployer API keys: the `/v1/keys` endpoints an admin key manages them with.
//!
//! A key reads `tsk_<id>_<secret>`. Deployer requests send it as `Authorization: Bearer <key>`;
//! the scheduler stores only the sha256 of the secret, so a key is shown once, when it is made.

use serde::{Deserialize, Serialize};

/// Prefix of every API key.
pub const KEY_PREFIX: &str = "tsk_";

/// `POST /v1/keys` (admin keys only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateKeyRequest {
    /// Who or what the key is for (1 to 64 characters, no control characters).
    pub name: String,
    /// Whether the key may manage keys and see every job.
    #[serde(default)]
    pub admin: bool,
}

/// A key as `GET /v1/keys` lists it: never its secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyInfo {
    /// The key's id, the `<id>` of `tsk_<id>_<secret>`; jobs record it as their owner.
    pub id: String,
    pub name: String,
    pub admin: bool,
    pub created_ms: u64,
    /// When it was revoked; a revoked key is refused from the next request on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
}

/// The answer to `POST /v1/keys`: the only time the whole key is shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    /// The key itself, `tsk_<id>_<secret>`.
    pub key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_is_its_info_plus_the_key() {
        let created = CreatedKey {
            info: ApiKeyInfo { id: "k1".into(), name: "ci".into(), admin: false, created_ms: 5, revoked_ms: None },
            key: "tsk_k1_s".into(),
        };
        let json = serde_json::to_value(&created).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "k1", "name": "ci", "admin": false, "created_ms": 5, "key": "tsk_k1_s"})
        );
        let request: CreateKeyRequest = serde_json::from_str(r#"{"name": "ci"}"#).unwrap();
        assert!(!request.admin);
    }
}
