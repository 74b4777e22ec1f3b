//! Deploy validation: turns a `DeployRequest` into a `NewJob` or an error naming the field.
//!
//! Pure functions (no I/O), so every bad input is unit-tested without a server.

use serde_json::Value;
use tessera_protocol::{DeployRequest, Worktime, DEFAULT_SLICE_TIMEOUT_MS};

use crate::error::{Error, Result};
use crate::store::NewJob;

/// Bounds a deploy must stay within.
#[derive(Clone, Copy, Debug)]
pub struct DeployLimits {
    pub max_slices: usize,
    pub max_program_bytes: usize,
}

impl Default for DeployLimits {
    fn default() -> Self {
        DeployLimits { max_slices: 1_000_000, max_program_bytes: 4 * 1024 * 1024 }
    }
}

/// Shortest time limit a job may set for its slices.
pub const MIN_TIMEOUT_MS: u64 = 100;
/// Longest time limit a job may set for its slices: one day.
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// A per-slice time limit within [`MIN_TIMEOUT_MS`]..=[`MAX_TIMEOUT_MS`], or an error naming `field`.
fn timeout(field: &str, ms: u64) -> Result<u64> {
    if (MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(Error::invalid(field, format!("{ms} ms is outside 100 ms ..= 24 h ({MIN_TIMEOUT_MS}..={MAX_TIMEOUT_MS})")))
    }
}

/// Parses a JSON body into `T`, naming the field at fault when the shape is wrong.
pub fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => Ok(value),
        Err(error) => {
            let path = error.path().to_string();
            let inner = error.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                Err(Error::MalformedJson(inner.to_string()))
            } else if path.starts_with('[') {
                Err(Error::invalid("body", "the body must be a JSON object"))
            } else if path == "." {
                let message = inner.to_string();
                let missing =
                    message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next()).map(str::to_string);
                Err(Error::invalid(missing.unwrap_or_else(|| "body".into()), message))
            } else {
                Err(Error::invalid(path, inner.to_string()))
            }
        }
    }
}

/// Checks everything about a deploy that does not need the store; `bundle` existence and
/// package names are checked by the caller, which can see them.
pub fn validate_deploy(request: DeployRequest, limits: &DeployLimits) -> Result<NewJob> {
    let worktime = request.worktime.unwrap_or(Worktime::MapBasic);
    if request.program.trim().is_empty() {
        return Err(Error::invalid("program", "the program is empty"));
    }
    if request.program.len() > limits.max_program_bytes {
        return Err(Error::invalid(
            "program",
            format!("the program is {} bytes, over the limit of {}", request.program.len(), limits.max_program_bytes),
        ));
    }
    let slices: Vec<Value> = match (request.slices, request.range) {
        (Some(_), Some(_)) => return Err(Error::invalid("range", "give either slices or range, not both")),
        (None, None) => return Err(Error::invalid("slices", "a job needs slices (a JSON array) or a range")),
        (Some(slices), None) => slices,
        (None, Some(range)) => range
            .values(limits.max_slices)
            .map_err(|message| Error::invalid("range", message))?
            .into_iter()
            .map(Value::from)
            .collect(),
    };
    if slices.is_empty() {
        return Err(Error::invalid("slices", "the job has no slices"));
    }
    if slices.len() > limits.max_slices {
        return Err(Error::invalid(
            "slices",
            format!("{} slices is over the limit of {}", slices.len(), limits.max_slices),
        ));
    }
    for key in request.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(Error::invalid(
                format!("env.{key}"),
                "an environment variable name must be non-empty, without `=`",
            ));
        }
    }
    if let Some(bundle) = &request.bundle {
        if bundle.len() != 64 || !bundle.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(
                "bundle",
                "a bundle is named by the 64-hex-digit sha256 that PUT /v1/bundles returned",
            ));
        }
    }
    if worktime == Worktime::MapBasic && (request.bundle.is_some() || !request.packages.is_empty()) {
        return Err(Error::invalid("worktime", "bundles and packages need the pyodide worktime"));
    }
    let slice_timeout_ms = timeout("slice_timeout_ms", request.slice_timeout_ms.unwrap_or(DEFAULT_SLICE_TIMEOUT_MS))?;
    let no_progress_timeout_ms =
        request.no_progress_timeout_ms.map(|ms| timeout("no_progress_timeout_ms", ms)).transpose()?;
    let default_name = match worktime {
        Worktime::MapBasic => "work.js",
        Worktime::Pyodide => "main.py",
    };
    Ok(NewJob {
        name: request.name.filter(|name| !name.trim().is_empty()),
        worktime,
        program: request.program,
        program_name: request.program_name.unwrap_or_else(|| default_name.into()),
        arguments: request.arguments,
        env: request.env,
        packages: request.packages,
        bundle: request.bundle.map(|b| b.to_ascii_lowercase()),
        slices,
        slice_timeout_ms,
        no_progress_timeout_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> Result<NewJob> {
        let request: DeployRequest = parse_body(body.to_string().as_bytes())?;
        validate_deploy(request, &DeployLimits::default())
    }

    fn field_of(result: Result<NewJob>) -> String {
        match result {
            Err(Error::InvalidField { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_plain_job() {
        let job = request(json!({"program": "(x) => x", "slices": [1, 2, 3]})).unwrap();
        assert_eq!((job.worktime, job.slices.len()), (Worktime::MapBasic, 3));
        assert_eq!((job.slice_timeout_ms, job.no_progress_timeout_ms), (DEFAULT_SLICE_TIMEOUT_MS, None));
        let job = request(
            json!({"program": "f", "slices": [1], "slice_timeout_ms": 100, "no_progress_timeout_ms": 86_400_000u64}),
        )
        .unwrap();
        assert_eq!((job.slice_timeout_ms, job.no_progress_timeout_ms), (100, Some(86_400_000)));
        let job = request(json!({"program": "(x) => x", "range": {"start": 0, "end": 10, "step": 2}})).unwrap();
        assert_eq!(job.slices, vec![json!(0), json!(2), json!(4), json!(6), json!(8)]);
    }

    #[test]
    fn names_the_field_of_each_bad_input() {
        assert_eq!(field_of(request(json!({"program": "  ", "slices": [1]}))), "program");
        assert_eq!(field_of(request(json!({"program": "f", "slices": {"a": 1}}))), "slices");
        assert_eq!(field_of(request(json!({"program": "f", "slices": []}))), "slices");
        assert_eq!(field_of(request(json!({"program": "f"}))), "slices");
        assert_eq!(field_of(request(json!({"program": "f", "slices": [1], "worktime": "lua"}))), "worktime");
        assert_eq!(field_of(request(json!({"program": "f", "slices": [1], "bundle": "zz"}))), "bundle");
        assert_eq!(field_of(request(json!({"slices": [1]}))), "program");
        assert_eq!(field_of(request(json!(["not", "an", "object"]))), "body");
        assert_eq!(field_of(request(json!({"program": "f", "range": {"start": 0, "end": 5, "step": 0}}))), "range");
        assert_eq!(
            field_of(request(json!({"program": "f", "slices": [1], "slice_timeout_ms": 99}))),
            "slice_timeout_ms"
        );
        let day_and_a_bit = json!({"program": "f", "slices": [1], "no_progress_timeout_ms": 86_400_001u64});
        assert_eq!(field_of(request(day_and_a_bit)), "no_progress_timeout_ms");
    }

    #[test]
    fn malformed_json_is_its_own_error() {
        let err = parse_body::<DeployRequest>(b"{\"program\": ").unwrap_err();
        assert!(matches!(err, Error::MalformedJson(_)), "{err:?}");
    }
}
