//! Deploy validation: turns a `DeployRequest` into a `NewJob` or an error naming the field.
//!
//! Pure functions (no I/O), so every bad input is unit-tested without a server.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use tessera_protocol::{DeployRequest, Worktime, DEFAULT_SLICE_TIMEOUT_MS};

use crate::error::{Error, Result};
use crate::store::NewJob;

/// Bounds a deploy must stay within. `max_slices` and `max_json_values` are enforced while the
/// body is parsed, so a body of millions of tiny values is refused before it is materialised.
#[derive(Clone, Copy, Debug)]
pub struct DeployLimits {
    pub max_slices: usize,
    pub max_program_bytes: usize,
    /// Most JSON values (every number, string, array, object, at any depth) in a deploy body: a
    /// parsed value costs tens of bytes, so this bounds the memory a deploy costs while parsing.
    pub max_json_values: usize,
}

impl Default for DeployLimits {
    fn default() -> Self {
        DeployLimits { max_slices: 1_000_000, max_program_bytes: 4 * 1024 * 1024, max_json_values: 4_000_000 }
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
    serde_path_to_error::deserialize(&mut deserializer).map_err(field_error)
}

/// Turns a located serde error into the error naming the field at fault.
fn field_error(error: serde_path_to_error::Error<serde_json::Error>) -> Error {
    let path = error.path().to_string();
    let inner = error.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        Error::MalformedJson(inner.to_string())
    } else if path.starts_with('[') {
        Error::invalid("body", "the body must be a JSON object")
    } else if path == "." {
        let message = inner.to_string();
        let named = message
            .strip_prefix("missing field `")
            .or_else(|| message.strip_prefix("duplicate field `"))
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string);
        Error::invalid(named.unwrap_or_else(|| "body".into()), message)
    } else {
        Error::invalid(path, inner.to_string())
    }
}

/// Parses a deploy body, counting while parsing: past `max_slices` slices or `max_json_values`
/// values in all, it is refused at that point (field named) without building the rest.
pub fn parse_deploy(bytes: &[u8], limits: &DeployLimits) -> Result<DeployRequest> {
    let budget = Cell::new(limits.max_json_values);
    let seed = DeploySeed { max_slices: limits.max_slices, budget: &budget };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let mut track = serde_path_to_error::Track::new();
    let parsed = seed.deserialize(serde_path_to_error::Deserializer::new(&mut deserializer, &mut track));
    let (fields, slices) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return Err(field_error(serde_path_to_error::Error::new(track.path(), error))),
    };
    deserializer.end().map_err(|error| Error::MalformedJson(error.to_string()))?;
    let mut request: DeployRequest = serde_path_to_error::deserialize(Value::Object(fields)).map_err(field_error)?;
    request.slices = slices;
    Ok(request)
}

/// The deploy body's top level: `slices` through [`SlicesSeed`], every other field kept as a
/// counted [`Value`] for the derived `DeployRequest` to check afterwards.
struct DeploySeed<'a> {
    max_slices: usize,
    budget: &'a Cell<usize>,
}

type DeployParts = (Map<String, Value>, Option<Vec<Value>>);

impl<'de> DeserializeSeed<'de> for DeploySeed<'_> {
    type Value = DeployParts;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<DeployParts, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DeploySeed<'_> {
    type Value = DeployParts;
    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DeployParts, A::Error> {
        let mut fields = Map::new();
        let mut slices = None;
        let mut seen_slices = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "slices" {
                if seen_slices {
                    return Err(A::Error::duplicate_field("slices"));
                }
                seen_slices = true;
                slices = map.next_value_seed(SlicesSeed { max_slices: self.max_slices, budget: self.budget })?;
            } else {
                if fields.contains_key(&key) {
                    return Err(A::Error::custom(format!("duplicate field `{key}`")));
                }
                let value = map.next_value_seed(CountedValue { budget: self.budget })?;
                fields.insert(key, value);
            }
        }
        Ok((fields, slices))
    }
}

/// `slices`: null or an array of at most `max_slices` values, counted as they arrive.
struct SlicesSeed<'a> {
    max_slices: usize,
    budget: &'a Cell<usize>,
}

impl<'de> DeserializeSeed<'de> for SlicesSeed<'_> {
    type Value = Option<Vec<Value>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for SlicesSeed<'_> {
    type Value = Option<Vec<Value>>;
    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON array of slice inputs")
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut slices = Vec::new();
        while let Some(slice) = seq.next_element_seed(CountedValue { budget: self.budget })? {
            if slices.len() >= self.max_slices {
                return Err(A::Error::custom(format!(
                    "more than {} slices; this scheduler's limit is {} per job",
                    self.max_slices, self.max_slices
                )));
            }
            slices.push(slice);
        }
        Ok(Some(slices))
    }
}

/// Any JSON value, each of its nodes taken from a budget shared by the whole body.
struct CountedValue<'a> {
    budget: &'a Cell<usize>,
}

impl CountedValue<'_> {
    fn take<E: serde::de::Error>(&self) -> Result<(), E> {
        match self.budget.get().checked_sub(1) {
            Some(left) => {
                self.budget.set(left);
                Ok(())
            }
            None => Err(E::custom("the body holds more JSON values than this scheduler accepts in one deploy")),
        }
    }
}

impl<'de> DeserializeSeed<'de> for CountedValue<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CountedValue<'_> {
    type Value = Value;
    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Bool(value))
    }
    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::from(value))
    }
    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::from(value))
    }
    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::from(value))
    }
    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Value, E> {
        self.take()?;
        Ok(Value::String(value.to_string()))
    }
    fn visit_string<E: serde::de::Error>(self, value: String) -> Result<Value, E> {
        self.take()?;
        Ok(Value::String(value))
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Null)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.take()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(CountedValue { budget: self.budget })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.take()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(CountedValue { budget: self.budget })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
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
        (None, None) if request.open => Vec::new(),
        (None, None) => {
            return Err(Error::invalid("slices", "a job needs slices (a JSON array) or a range (or `open: true`)"))
        }
        (Some(slices), None) => slices,
        (None, Some(range)) => range
            .values(limits.max_slices)
            .map_err(|message| Error::invalid("range", message))?
            .into_iter()
            .map(Value::from)
            .collect(),
    };
    if slices.is_empty() && !request.open {
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
        owner: None,
        open: request.open,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> Result<NewJob> {
        let request = parse_deploy(body.to_string().as_bytes(), &DeployLimits::default())?;
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
    fn too_many_slices_are_refused_while_parsing() {
        let limits = DeployLimits { max_slices: 3, ..DeployLimits::default() };
        let err = parse_deploy(br#"{"program": "f", "slices": [1, 2, 3, 4]}"#, &limits).unwrap_err();
        match err {
            Error::InvalidField { field, message } => {
                assert_eq!(field, "slices");
                assert!(message.contains("more than 3 slices"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Refused at the fourth slice: what follows it is never parsed (here: not even valid JSON).
        let err = parse_deploy(br#"{"program": "f", "slices": [1, 2, 3, 4, !!!"#, &limits).unwrap_err();
        assert!(matches!(err, Error::InvalidField { ref field, .. } if field == "slices"), "{err:?}");
        let request = parse_deploy(br#"{"program": "f", "slices": [1, 2, 3]}"#, &limits).unwrap();
        assert_eq!(request.slices.map(|slices| slices.len()), Some(3));
        let request = parse_deploy(br#"{"program": "f", "slices": null, "range": {"start": 0, "end": 2}}"#, &limits);
        assert!(request.unwrap().slices.is_none());
    }

    #[test]
    fn too_many_json_values_are_refused_while_parsing() {
        let limits = DeployLimits { max_json_values: 10, ..DeployLimits::default() };
        let nested = json!({"program": "f", "slices": [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]});
        let err = parse_deploy(nested.to_string().as_bytes(), &limits).unwrap_err();
        assert!(matches!(err, Error::InvalidField { ref field, .. } if field.starts_with("slices")), "{err:?}");
        let arguments = json!({"program": "f", "slices": [1], "arguments": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]});
        let err = parse_deploy(arguments.to_string().as_bytes(), &limits).unwrap_err();
        assert!(matches!(err, Error::InvalidField { ref field, .. } if field.starts_with("arguments")), "{err:?}");
    }

    #[test]
    fn duplicate_and_trailing_input_is_refused() {
        let limits = DeployLimits::default();
        let err = parse_deploy(br#"{"program": "f", "slices": [1], "slices": [2]}"#, &limits).unwrap_err();
        assert!(matches!(err, Error::InvalidField { ref field, .. } if field == "slices"), "{err:?}");
        let err = parse_deploy(br#"{"program": "f", "slices": [1]} {}"#, &limits).unwrap_err();
        assert!(matches!(err, Error::MalformedJson(_)), "{err:?}");
        let err = parse_deploy(br#"{"program": "f", "program": "g", "slices": [1]}"#, &limits).unwrap_err();
        assert!(matches!(err, Error::InvalidField { ref field, .. } if field == "program"), "{err:?}");
    }

    #[test]
    fn malformed_json_is_its_own_error() {
        let err = parse_body::<DeployRequest>(b"{\"program\": ").unwrap_err();
        assert!(matches!(err, Error::MalformedJson(_)), "{err:?}");
    }
}
