//! JSON read and written by hand, for the worker core.
//!
//! The scheduler reads and writes the wire types with serde. The worker core ships to every
//! volunteer's browser as wasm, and serde costs it dearly there: one monomorphised deserializer
//! and serializer per type and per output, plus serde_json's parser and the float formatting its
//! error messages pull in, ≈ 90 KB of wasm before compression. So the core parses an answer into
//! a [`serde_json::Value`] with [`parse`] (one small, non-generic parser), reads the wire types
//! from it with [`FromJson`], and writes its requests with [`ToJson`]. The tests below hold both
//! to serde: every answer the scheduler can write is read back equal, JSON that serde_json refuses
//! is refused here too, and every request is written byte for byte as serde writes it. Where they
//! differ, on purpose: a decimal is read correctly rounded (serde_json, built without
//! `float_roundtrip`, can be one step off in the last digit, and so refuses or accepts a few
//! numbers at the very edge of the `f64` range differently), and the readers are lenient where
//! serde is strict, since what they read comes from the scheduler: a `null` where a field has a
//! default reads as the default, and a field given twice keeps its last value.
//!
//! Numbers keep serde_json's meaning: an integer literal that fits is a `u64` or `i64` (exact past
//! 2^53), anything else an `f64`. Turning a decimal's text into an `f64` is left to the caller's
//! [`FloatParser`], so that the core can use the browser's own instead of compiling Rust's.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Number, Value};

use crate::job::{ConsoleLine, Worktime};
use crate::lease::{
    HeartbeatItem, HeartbeatRequest, HeartbeatResponse, JobDescriptor, Lease, LeaseRequest, LeaseResponse,
    RegisterRequest, RegisterResponse, ResultAck, ResultItem, ResultStatus, ResultsRequest, ResultsResponse,
    SliceOutcome, WorkerLimits,
};
use crate::ApiError;

/// Turns the text of a JSON number that is not a 64-bit integer (`1.5`, `-2e300`,
/// `18446744073709551616`) into the nearest `f64`; `None` when it is out of range.
pub type FloatParser = fn(&str) -> Option<f64>;

/// Rust's own float parser, for native callers.
pub fn rust_float(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|number| number.is_finite())
}

/// Most arrays and objects nested in one another: serde_json's limit (it refuses the 128th).
const MAX_DEPTH: usize = 127;

/// Parses `text` as one JSON value (RFC 8259, nothing before or after it but whitespace).
pub fn parse(text: &str, float: FloatParser) -> Result<Value, String> {
    let mut parser = Parser { text, at: 0, depth: 0, float };
    let value = parser.value()?;
    parser.skip_whitespace();
    if parser.at < text.len() {
        return Err(parser.wrong("nothing after the value"));
    }
    Ok(value)
}

/// Parses `text` and reads a `T` from it: the worker core's way to read an answer.
pub fn read<T: FromJson>(text: &str, float: FloatParser) -> Result<T, String> {
    let value = parse(text, float)?;
    T::from_json(&value).map_err(|error| error.trim_start_matches('.').to_string())
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
    depth: usize,
    float: FloatParser,
}

impl Parser<'_> {
    fn wrong(&self, expected: &str) -> String {
        match self.text[self.at..].chars().next() {
            Some(found) => format!("not JSON: expected {expected} at byte {}, found {found:?}", self.at),
            None => format!("not JSON: expected {expected} at byte {}, found the end", self.at),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Consumes `byte` after any whitespace, or says what was expected.
    fn expect(&mut self, byte: u8, expected: &str) -> Result<(), String> {
        self.skip_whitespace();
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.wrong(expected))
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'{') => self.nested(Parser::object),
            Some(b'[') => self.nested(Parser::array),
            Some(b'"') => self.string().map(Value::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => {
                for (word, value) in [("null", Value::Null), ("true", Value::Bool(true)), ("false", Value::Bool(false))]
                {
                    if self.text[self.at..].starts_with(word) {
                        self.at += word.len();
                        return Ok(value);
                    }
                }
                Err(self.wrong("a value"))
            }
        }
    }

    fn nested(&mut self, read: fn(&mut Self) -> Result<Value, String>) -> Result<Value, String> {
        if self.depth == MAX_DEPTH {
            return Err(format!("not JSON we read: more than {MAX_DEPTH} levels of nesting at byte {}", self.at));
        }
        self.depth += 1;
        self.at += 1;
        let value = read(self);
        self.depth -= 1;
        value
    }

    fn object(&mut self) -> Result<Value, String> {
        let mut map = Map::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Value::Object(map));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.wrong("a key"));
            }
            let key = self.string()?;
            self.expect(b':', "`:`")?;
            let value = self.value()?;
            map.insert(key, value);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(self.wrong("`,` or `}`")),
            }
        }
    }

    fn array(&mut self) -> Result<Value, String> {
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.wrong("`,` or `]`")),
            }
        }
    }

    /// A string, the opening quote at `self.at`.
    fn string(&mut self) -> Result<String, String> {
        self.at += 1;
        let mut out = String::new();
        loop {
            let rest = &self.text[self.at..];
            let plain = rest.find(|c: char| c == '"' || c == '\\' || c < ' ').unwrap_or(rest.len());
            out.push_str(&rest[..plain]);
            self.at += plain;
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    let escaped = match self.peek() {
                        Some(b'u') => {
                            self.at += 1;
                            self.unicode_escape()?
                        }
                        Some(byte @ (b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't')) => {
                            self.at += 1;
                            match byte {
                                b'b' => '\u{8}',
                                b'f' => '\u{c}',
                                b'n' => '\n',
                                b'r' => '\r',
                                b't' => '\t',
                                other => char::from(other),
                            }
                        }
                        _ => return Err(self.wrong("an escape (`\\n`, `\\u00e9`, …)")),
                    };
                    out.push(escaped);
                }
                Some(_) => return Err(self.wrong("a control character escaped")),
                None => return Err(self.wrong("`\"`")),
            }
        }
    }

    /// The character of a `\u` escape whose four hex digits start at `self.at`; a surrogate pair
    /// takes the `\u` escape that follows too. Leaves `self.at` just past the last digit read.
    fn unicode_escape(&mut self) -> Result<char, String> {
        let first = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&first) {
            if !self.text[self.at..].starts_with("\\u") {
                return Err(self.wrong("the low half of a surrogate pair"));
            }
            self.at += 2;
            let second = self.hex4()?;
            if !(0xDC00..0xE000).contains(&second) {
                return Err(format!("not JSON: a lone surrogate before byte {}", self.at));
            }
            0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
        } else {
            first
        };
        char::from_u32(code).ok_or_else(|| format!("not JSON: a lone surrogate before byte {}", self.at))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self.text.get(self.at..self.at + 4).filter(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()));
        let Some(digits) = digits else { return Err(self.wrong("four hex digits")) };
        self.at += 4;
        u32::from_str_radix(digits, 16).map_err(|_| self.wrong("four hex digits"))
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.at;
        let digits = |parser: &mut Self| {
            let from = parser.at;
            while matches!(parser.peek(), Some(b'0'..=b'9')) {
                parser.at += 1;
            }
            parser.at - from
        };
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let whole_start = self.at;
        match digits(self) {
            0 => return Err(self.wrong("a digit")),
            n if n > 1 && self.text.as_bytes()[whole_start] == b'0' => {
                self.at = whole_start + 1;
                return Err(self.wrong("no digit after a leading 0"));
            }
            _ => {}
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.at += 1;
            integer = false;
            if digits(self) == 0 {
                return Err(self.wrong("a digit after `.`"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            integer = false;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if digits(self) == 0 {
                return Err(self.wrong("a digit in the exponent"));
            }
        }
        let text = &self.text[start..self.at];
        if integer && text != "-0" {
            let exact = match text.strip_prefix('-') {
                Some(_) => text.parse::<i64>().ok().map(Number::from),
                None => text.parse::<u64>().ok().map(Number::from),
            };
            if let Some(number) = exact {
                return Ok(Value::Number(number));
            }
        }
        (self.float)(text)
            .and_then(Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("not JSON we read: the number {text} at byte {start} is out of range"))
    }
}

/// A wire type read from a parsed [`Value`]. An error names the field at fault as a path
/// (`.leases[0].ttl_ms: expected a whole number, not a text`).
pub trait FromJson: Sized {
    fn from_json(value: &Value) -> Result<Self, String>;
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "true or false",
        Value::Number(_) => "a number",
        Value::String(_) => "a text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expected<T>(what: &str, value: &Value) -> Result<T, String> {
    Err(format!(": expected {what}, not {}", kind(value)))
}

impl FromJson for Value {
    fn from_json(value: &Value) -> Result<Self, String> {
        Ok(value.clone())
    }
}

impl FromJson for String {
    fn from_json(value: &Value) -> Result<Self, String> {
        match value {
            Value::String(text) => Ok(text.clone()),
            other => expected("a text", other),
        }
    }
}

impl FromJson for u64 {
    fn from_json(value: &Value) -> Result<Self, String> {
        value.as_u64().map_or_else(|| expected("a whole number ≥ 0", value), Ok)
    }
}

impl FromJson for u32 {
    fn from_json(value: &Value) -> Result<Self, String> {
        value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map_or_else(|| expected("a whole number below 2^32", value), Ok)
    }
}

impl<T: FromJson> FromJson for Vec<T> {
    fn from_json(value: &Value) -> Result<Self, String> {
        let Value::Array(items) = value else { return expected("an array", value) };
        items.iter().enumerate().map(|(i, item)| T::from_json(item).map_err(|error| format!("[{i}]{error}"))).collect()
    }
}

impl FromJson for BTreeMap<String, String> {
    fn from_json(value: &Value) -> Result<Self, String> {
        let Value::Object(map) = value else { return expected("an object", value) };
        let mut texts = BTreeMap::new();
        for (key, item) in map {
            // Inserted one by one: `collect` would pull a sort into the core's wasm.
            texts.insert(key.clone(), String::from_json(item).map_err(|error| format!(".{key}{error}"))?);
        }
        Ok(texts)
    }
}

/// An object's fields, read by name. Fields not asked for are ignored, as serde does.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn of(value: &'a Value) -> Result<Fields<'a>, String> {
        match value {
            Value::Object(map) => Ok(Fields(map)),
            other => expected("an object", other),
        }
    }

    /// A field that must be there.
    fn required<T: FromJson>(&self, name: &str) -> Result<T, String> {
        match self.0.get(name) {
            Some(value) => T::from_json(value).map_err(|error| format!(".{name}{error}")),
            None => Err(format!(".{name}: missing")),
        }
    }

    /// A field that may be absent or null.
    fn optional<T: FromJson>(&self, name: &str) -> Result<Option<T>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => T::from_json(value).map(Some).map_err(|error| format!(".{name}{error}")),
        }
    }

    /// A field that takes `T`'s default when absent or null.
    fn or_default<T: FromJson + Default>(&self, name: &str) -> Result<T, String> {
        Ok(self.optional(name)?.unwrap_or_default())
    }
}

impl FromJson for ApiError {
    fn from_json(value: &Value) -> Result<Self, String> {
        let fields = Fields::of(value)?;
        Ok(ApiError {
            code: fields.required("code")?,
            field: fields.optional("field")?,
            message: fields.required("message")?,
        })
    }
}

impl FromJson for WorkerLimits {
    fn from_json(value: &Value) -> Result<Self, String> {
        let fields = Fields::of(value)?;
        let default = WorkerLimits::default();
        Ok(WorkerLimits {
            max_lease_slices: fields.optional("max_lease_slices")?.unwrap_or(default.max_lease_slices),
            max_heartbeat_leases: fields.optional("max_heartbeat_leases")?.unwrap_or(default.max_heartbeat_leases),
            max_results_per_batch: fields.optional("max_results_per_batch")?.unwrap_or(default.max_results_per_batch),
            max_result_bytes: fields.optional("max_result_bytes")?.unwrap_or(default.max_result_bytes),
            max_request_bytes: fields.optional("max_request_bytes")?.unwrap_or(default.max_request_bytes),
            max_wait_ms: fields.optional("max_wait_ms")?.unwrap_or(default.max_wait_ms),
        })
    }
}

impl FromJson for RegisterResponse {
    fn from_json(value: &Value) -> Result<Self, String> {
        let fields = Fields::of(value)?;
        Ok(RegisterResponse {
            worker_id: fields.required("worker_id")?,
            contributor: fields.or_default("contributor")?,
            token: fields.required("token")?,
            lease_ttl_ms: fields.required("lease_ttl_ms")?,
            heartbeat_ms: fields.required("heartbeat_ms")?,
            limits: fields.or_default("limits")?,
        })
    }
}

impl FromJson for Lease {
    fn from_json(value: &Value) -> Result<Self, String> {
        let fields = Fields::of(value)?;
        Ok(Lease {
            lease_id: fields.required("lease_id")?,
            token: fields.required("token")?,
            job_id: fields.required("job_id")?,
            slice: fields.required("slice")?,
            datum: fields.required("datum")?,
            ttl_ms: fields.required("ttl_ms")?,
        })
    }
}

impl FromJson for Worktime {
    fn from_json(value: &Value) -> Result<Self, String> {
        let name = String::from_json(value)?;
        name.parse().map_err(|error| format!(": {error}"))
    }
}

impl FromJson for JobDescriptor {
    fn from_json(value: &Value) -> Result<Self, String> {
        let fields = Fields::of(value)?;
        Ok(JobDescriptor {
            job_id: fields.required("job_id")?,
            name: fields.required("name")?,
            worktime: fields.required("worktime")?,
            program: fields.required("program")?,
            program_name: fields.required("program_name")?,
            arguments: fields.or_default("arguments")?,
            env: fields.or_default("env")?,
            packages: fields.or_default("packages")?,
            bundle: fields.optional("bundle")?,
            slice_timeout_ms: fields.optional("slice_timeout_ms")?.unwrap_or(crate::job::DEFAULT_SLICE_TIMEOUT_MS),
            no_progress_timeout_ms: fields.optional("no_progress_timeout_ms")?,
        })
    }
}

impl FromJson for LeaseResponse {
    fn from_json(value: &Value) -> Result<Self, String> {
        let fields = Fields::of(value)?;
        Ok(LeaseResponse {
            leases: fields.required("leases")?,
            jobs: fields.or_default("jobs")?,
            ended_jobs: fields.or_default("ended_jobs")?,
        })
    }
}

impl FromJson for HeartbeatResponse {
    fn from_json(value: &Value) -> Result<Self, String> {
        let fields = Fields::of(value)?;
        Ok(HeartbeatResponse {
            extended: fields.required("extended")?,
            lost: fields.required("lost")?,
            ttl_ms: fields.required("ttl_ms")?,
            ended_jobs: fields.or_default("ended_jobs")?,
        })
    }
}

impl FromJson for ResultStatus {
    fn from_json(value: &Value) -> Result<Self, String> {
        Ok(match String::from_json(value)?.as_str() {
            "accepted" => ResultStatus::Accepted,
            "duplicate" => ResultStatus::Duplicate,
            "stale" => ResultStatus::Stale,
            "requeued" => ResultStatus::Requeued,
            "released" => ResultStatus::Released,
            "refused" => ResultStatus::Refused,
            other => return Err(format!(": no result status is called {}", write(other))),
        })
    }
}

impl FromJson for ResultAck {
    fn from_json(value: &Value) -> Result<Self, String> {
        let fields = Fields::of(value)?;
        Ok(ResultAck {
            lease_id: fields.required("lease_id")?,
            status: fields.required("status")?,
            message: fields.optional("message")?,
        })
    }
}

impl FromJson for ResultsResponse {
    fn from_json(value: &Value) -> Result<Self, String> {
        Ok(ResultsResponse { acks: Fields::of(value)?.required("acks")? })
    }
}

/// A wire type written as JSON by hand: compact, fields in declaration order, optional ones left
/// out when absent, exactly as serde writes it.
pub trait ToJson {
    fn write_json(&self, out: &mut String);
}

/// `value` as JSON text.
pub fn write<T: ToJson + ?Sized>(value: &T) -> String {
    let mut out = String::new();
    value.write_json(&mut out);
    out
}

/// Writes an object's fields in order, with the commas between them.
pub struct ObjectWriter<'a> {
    out: &'a mut String,
    empty: bool,
}

impl<'a> ObjectWriter<'a> {
    pub fn new(out: &'a mut String) -> ObjectWriter<'a> {
        out.push('{');
        ObjectWriter { out, empty: true }
    }

    pub fn field<T: ToJson + ?Sized>(&mut self, name: &str, value: &T) -> &mut Self {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        name.write_json(self.out);
        self.out.push(':');
        value.write_json(self.out);
        self
    }

    /// The field when there is a value; nothing when `None`.
    pub fn optional<T: ToJson>(&mut self, name: &str, value: &Option<T>) -> &mut Self {
        match value {
            Some(value) => self.field(name, value),
            None => self,
        }
    }

    /// The field when the list has items; nothing when it is empty.
    pub fn unless_empty<T: ToJson>(&mut self, name: &str, items: &[T]) -> &mut Self {
        if items.is_empty() {
            self
        } else {
            self.field(name, items)
        }
    }

    pub fn end(&mut self) {
        self.out.push('}');
    }
}

impl ToJson for str {
    /// Escaped as serde_json escapes: `"`, `\\`, the short escapes and `\u00XX` for other
    /// control characters; everything else as it is.
    fn write_json(&self, out: &mut String) {
        out.push('"');
        let mut plain = 0;
        for (at, byte) in self.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            out.push_str(&self[plain..at]);
            plain = at + 1;
            if escape.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0xf)]));
            } else {
                out.push_str(escape);
            }
        }
        out.push_str(&self[plain..]);
        out.push('"');
    }
}

impl ToJson for String {
    fn write_json(&self, out: &mut String) {
        self.as_str().write_json(out);
    }
}

impl ToJson for u64 {
    fn write_json(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl ToJson for u32 {
    fn write_json(&self, out: &mut String) {
        u64::from(*self).write_json(out);
    }
}

impl ToJson for usize {
    fn write_json(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl ToJson for bool {
    fn write_json(&self, out: &mut String) {
        out.push_str(if *self { "true" } else { "false" });
    }
}

impl ToJson for f64 {
    /// The shortest text that reads back as the same number (serde_json's); `null` when it is
    /// not finite, as serde_json writes it.
    fn write_json(&self, out: &mut String) {
        match Number::from_f64(*self) {
            Some(number) => {
                let _ = write!(out, "{number}");
            }
            None => out.push_str("null"),
        }
    }
}

impl<T: ToJson> ToJson for Option<T> {
    fn write_json(&self, out: &mut String) {
        match self {
            Some(value) => value.write_json(out),
            None => out.push_str("null"),
        }
    }
}

impl<T: ToJson> ToJson for [T] {
    fn write_json(&self, out: &mut String) {
        out.push('[');
        for (i, item) in self.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            item.write_json(out);
        }
        out.push(']');
    }
}

impl<T: ToJson> ToJson for Vec<T> {
    fn write_json(&self, out: &mut String) {
        self.as_slice().write_json(out);
    }
}

impl<T: ToJson> ToJson for BTreeMap<String, T> {
    fn write_json(&self, out: &mut String) {
        let mut object = ObjectWriter::new(out);
        for (key, value) in self {
            object.field(key, value);
        }
        object.end();
    }
}

impl ToJson for Value {
    fn write_json(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(flag) => flag.write_json(out),
            Value::Number(number) => {
                let _ = write!(out, "{number}");
            }
            Value::String(text) => text.write_json(out),
            Value::Array(items) => items.write_json(out),
            Value::Object(map) => {
                let mut object = ObjectWriter::new(out);
                for (key, value) in map {
                    object.field(key, value);
                }
                object.end();
            }
        }
    }
}

impl ToJson for Worktime {
    fn write_json(&self, out: &mut String) {
        self.as_str().write_json(out);
    }
}

impl ToJson for RegisterRequest {
    fn write_json(&self, out: &mut String) {
        ObjectWriter::new(out)
            .optional("user_agent", &self.user_agent)
            .field("sandboxes", &self.sandboxes)
            .optional("worker_key", &self.worker_key)
            .optional("contributor", &self.contributor)
            .end();
    }
}

impl ToJson for LeaseRequest {
    fn write_json(&self, out: &mut String) {
        ObjectWriter::new(out)
            .field("max_slices", &self.max_slices)
            .field("wait_ms", &self.wait_ms)
            .unless_empty("known_jobs", &self.known_jobs)
            .unless_empty("prefer_jobs", &self.prefer_jobs)
            .end();
    }
}

impl ToJson for HeartbeatItem {
    fn write_json(&self, out: &mut String) {
        ObjectWriter::new(out)
            .field("lease_id", &self.lease_id)
            .field("token", &self.token)
            .optional("progress", &self.progress)
            .end();
    }
}

impl ToJson for HeartbeatRequest {
    fn write_json(&self, out: &mut String) {
        ObjectWriter::new(out).field("leases", &self.leases).end();
    }
}

impl ToJson for SliceOutcome {
    fn write_json(&self, out: &mut String) {
        let mut object = ObjectWriter::new(out);
        object.field("kind", self.kind());
        match self {
            SliceOutcome::Ok { value } => object.field("value", value),
            SliceOutcome::Error { message, stack } | SliceOutcome::JobError { message, stack } => {
                object.field("message", message).optional("stack", stack)
            }
            SliceOutcome::WorkerFault { message } | SliceOutcome::TimedOut { message } => {
                object.field("message", message)
            }
            SliceOutcome::Released { reason } => object.field("reason", reason),
        };
        object.end();
    }
}

impl ToJson for ConsoleLine {
    fn write_json(&self, out: &mut String) {
        ObjectWriter::new(out)
            .optional("slice", &self.slice)
            .field("stream", &self.stream)
            .field("text", &self.text)
            .optional("seq", &self.seq)
            .end();
    }
}

impl ToJson for ResultItem {
    fn write_json(&self, out: &mut String) {
        ObjectWriter::new(out)
            .field("lease_id", &self.lease_id)
            .field("token", &self.token)
            .field("outcome", &self.outcome)
            .unless_empty("console", &self.console)
            .optional("compute_ms", &self.compute_ms)
            .end();
    }
}

impl ToJson for ResultsRequest {
    fn write_json(&self, out: &mut String) {
        ObjectWriter::new(out).field("results", &self.results).optional("worker_token", &self.worker_token).end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::SliceOutcome;
    use serde_json::json;

    fn ours(text: &str) -> Result<Value, String> {
        parse(text, rust_float)
    }

    #[test]
    fn parses_what_serde_json_parses_into_the_same_value() {
        let deep_ok = format!("{}{}", "[".repeat(127), "]".repeat(127));
        let texts = [
            "null",
            " true ",
            "false",
            "0",
            "-0",
            "-0.0",
            "7",
            "-7",
            "9007199254740993",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "1.5",
            "-2.25e-3",
            "6.02E23",
            "1e2",
            "\"\"",
            r#""plain""#,
            r#""esc \" \\ \/ \b \f \n \r \t""#,
            r#""\u00e9\u4e2d \ud83d\ude00 é中😀""#,
            "[]",
            "[ 1 , [2, {}], \"x\" ]",
            "{}",
            r#"{ "a" : 1, "b": [true, null], "a": 2, "": {"nested": {"deeper": [1.5]}} }"#,
            "\n\t\r [1]\n",
            &deep_ok,
        ];
        for text in texts {
            let expected: Value = serde_json::from_str(text).unwrap_or_else(|error| panic!("{text}: {error}"));
            assert_eq!(ours(text), Ok(expected.clone()), "{text}");
            assert_eq!(ours(text).map(|value| value.to_string()), Ok(expected.to_string()), "{text}");
        }
    }

    #[test]
    fn refuses_what_serde_json_refuses_and_says_where() {
        let too_deep = format!("{}{}", "[".repeat(128), "]".repeat(128));
        let texts = [
            "",
            "   ",
            "{",
            "[1,]",
            "[1 2]",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            "{a:1}",
            "01",
            "-01",
            "1.",
            ".5",
            "-",
            "1e",
            "1e+",
            "+1",
            "NaN",
            "Infinity",
            "1e400",
            "nul",
            "True",
            "[1] 2",
            r#""\x""#,
            "\"a\u{1}b\"",
            "\"open",
            r#""\u12""#,
            r#""\ud800""#,
            r#""\ud800\u0041""#,
            r#""\udc00""#,
            "'single'",
            &too_deep,
        ];
        for text in texts {
            assert!(serde_json::from_str::<Value>(text).is_err(), "serde_json took {text:?}");
            let error = ours(text).expect_err(text);
            assert!(error.starts_with("not JSON"), "{text:?}: {error}");
        }
        assert_eq!(ours("[1,]"), Err("not JSON: expected a value at byte 3, found ']'".into()));
        assert_eq!(ours("{\"a\":1"), Err("not JSON: expected `,` or `}` at byte 6, found the end".into()));
    }

    #[test]
    fn floats_come_from_the_parser_given() {
        fn halved(text: &str) -> Option<f64> {
            rust_float(text).map(|number| number / 2.0)
        }
        assert_eq!(parse("[3.0, 3, 18446744073709551616]", halved), Ok(json!([1.5, 3, 9223372036854775808.0])));
    }

    /// Every answer the scheduler writes (with serde) reads back equal.
    fn reads_back<T: FromJson + serde::Serialize + PartialEq + std::fmt::Debug>(value: T) {
        let text = serde_json::to_string(&value).unwrap();
        assert_eq!(read::<T>(&text, rust_float), Ok(value), "{text}");
    }

    fn descriptor(worktime: Worktime) -> JobDescriptor {
        JobDescriptor {
            job_id: "j1".into(),
            name: "numbers".into(),
            worktime,
            program: "def f(x):\n    return x\n".into(),
            program_name: "main.py".into(),
            arguments: vec![json!(9007199254740993u64), json!({"k": [1.5, "é", null]})],
            env: BTreeMap::from([("SEED".into(), "42".into())]),
            packages: vec!["numpy".into()],
            bundle: Some("ab".repeat(32)),
            slice_timeout_ms: 5_000,
            no_progress_timeout_ms: Some(1_000),
        }
    }

    #[test]
    fn reads_every_answer_a_worker_gets_as_serde_writes_it() {
        reads_back(RegisterResponse {
            worker_id: "w".into(),
            contributor: "c".repeat(16),
            token: "t".into(),
            lease_ttl_ms: 30_000,
            heartbeat_ms: 10_000,
            limits: WorkerLimits { max_lease_slices: 7, max_result_bytes: 1 << 40, ..WorkerLimits::default() },
        });
        let lease = |n: u64, datum: Value| Lease {
            lease_id: format!("l{n}"),
            token: format!("t{n}"),
            job_id: "j1".into(),
            slice: n,
            datum,
            ttl_ms: 30_000,
        };
        reads_back(LeaseResponse {
            leases: vec![lease(0, json!(-3)), lease(u64::MAX, json!({"x": [1e-300, "\u{0}\n"]}))],
            jobs: vec![descriptor(Worktime::Pyodide), descriptor(Worktime::MapBasic)],
            ended_jobs: vec!["j0".into()],
        });
        reads_back(LeaseResponse::default());
        reads_back(HeartbeatResponse {
            extended: vec!["l1".into()],
            lost: vec!["l2".into()],
            ttl_ms: 1,
            ended_jobs: vec![],
        });
        let statuses = [
            ResultStatus::Accepted,
            ResultStatus::Duplicate,
            ResultStatus::Stale,
            ResultStatus::Requeued,
            ResultStatus::Released,
            ResultStatus::Refused,
        ];
        let acks = statuses
            .into_iter()
            .enumerate()
            .map(|(n, status)| ResultAck {
                lease_id: format!("l{n}"),
                status,
                message: (n % 2 == 0).then(|| "why".into()),
            })
            .collect();
        reads_back(ResultsResponse { acks });
        reads_back(ApiError {
            code: "wrong_token".into(),
            field: Some("results[3].token".into()),
            message: "no".into(),
        });
        reads_back(ApiError { code: "not_found".into(), field: None, message: "gone".into() });
    }

    #[test]
    fn fields_serde_defaults_read_the_same_defaults_and_unknown_fields_are_ignored() {
        let text =
            r#"{"job_id":"j","name":"n","worktime":"map-basic","program":"p","program_name":"p.js","new_field":1}"#;
        let serde: JobDescriptor = serde_json::from_str(text).unwrap();
        assert_eq!(read::<JobDescriptor>(text, rust_float), Ok(serde));
        let text = r#"{"worker_id":"w","token":"t","lease_ttl_ms":1,"heartbeat_ms":2,"limits":{"max_wait_ms":5}}"#;
        let serde: RegisterResponse = serde_json::from_str(text).unwrap();
        assert_eq!(read::<RegisterResponse>(text, rust_float), Ok(serde));
    }

    #[test]
    fn a_wrong_answer_names_the_field_at_fault() {
        let lease = r#"{"leases":[{"lease_id":"l","token":"t","job_id":"j","slice":0,"datum":1,"ttl_ms":"soon"}]}"#;
        assert_eq!(
            read::<LeaseResponse>(lease, rust_float),
            Err("leases[0].ttl_ms: expected a whole number ≥ 0, not a text".into())
        );
        assert_eq!(read::<LeaseResponse>("{}", rust_float), Err("leases: missing".into()));
        assert_eq!(read::<LeaseResponse>("[]", rust_float), Err(": expected an object, not an array".into()));
        let job = r#"{"job_id":"j","name":"n","worktime":"cobol","program":"p","program_name":"p"}"#;
        assert_eq!(
            read::<JobDescriptor>(job, rust_float),
            Err("worktime: unknown worktime `cobol`; expected `map-basic` or `pyodide`".into())
        );
        let acks = r#"{"acks":[{"lease_id":"l","status":"lost"}]}"#;
        assert_eq!(
            read::<ResultsResponse>(acks, rust_float),
            Err("acks[0].status: no result status is called \"lost\"".into())
        );
        let limits = r#"{"worker_id":"w","token":"t","lease_ttl_ms":1,"heartbeat_ms":2,"limits":{"max_lease_slices":4294967296}}"#;
        assert_eq!(
            read::<RegisterResponse>(limits, rust_float),
            Err("limits.max_lease_slices: expected a whole number below 2^32, not a number".into())
        );
        let _ = SliceOutcome::Released { reason: String::new() };
    }

    /// Every request a worker sends is written byte for byte as serde writes it.
    fn writes_as_serde<T: ToJson + serde::Serialize>(value: &T) {
        assert_eq!(write(value), serde_json::to_string(value).unwrap());
    }

    #[test]
    fn writes_every_request_a_worker_sends_as_serde_does() {
        let awkward =
            "quote \" backslash \\ slash / nl \n cr \r tab \t bs \u{8} ff \u{c} nul \u{0} us \u{1f} del \u{7f} é 中 😀";
        writes_as_serde(&json!([
            null, true, false, 0, -1, u64::MAX, i64::MIN, 1.5, -2.5e-300, 1e300, 0.1, 100.0, awkward,
            {"b": [], "a": {}, awkward: [1, [2, {"c": null}]]}
        ]));
        writes_as_serde(&RegisterRequest { user_agent: None, sandboxes: 8, worker_key: None, contributor: None });
        writes_as_serde(&RegisterRequest {
            user_agent: Some(awkward.into()),
            sandboxes: u32::MAX,
            worker_key: Some("k".into()),
            contributor: Some("c".repeat(16)),
        });
        writes_as_serde(&LeaseRequest { max_slices: 4, wait_ms: 0, known_jobs: vec![], prefer_jobs: vec![] });
        writes_as_serde(&LeaseRequest {
            max_slices: 1,
            wait_ms: 20_000,
            known_jobs: vec!["a".into(), "b".into()],
            prefer_jobs: vec!["b".into()],
        });
        writes_as_serde(&HeartbeatRequest {
            leases: vec![
                HeartbeatItem { lease_id: "l1".into(), token: "t".into(), progress: None },
                HeartbeatItem { lease_id: "l2".into(), token: "t".into(), progress: Some(0.25) },
                HeartbeatItem { lease_id: "l3".into(), token: "t".into(), progress: Some(f64::NAN) },
            ],
        });
        let outcomes = [
            SliceOutcome::Ok { value: json!({"x": [1, 2.5, awkward]}) },
            SliceOutcome::Error { message: awkward.into(), stack: Some("at f".into()) },
            SliceOutcome::Error { message: "m".into(), stack: None },
            SliceOutcome::JobError { message: "m".into(), stack: Some("s".into()) },
            SliceOutcome::WorkerFault { message: "crashed".into() },
            SliceOutcome::TimedOut { message: "late".into() },
            SliceOutcome::Released { reason: "closed".into() },
        ];
        let results = outcomes
            .into_iter()
            .enumerate()
            .map(|(n, outcome)| ResultItem {
                lease_id: format!("l{n}"),
                token: "t".into(),
                outcome,
                console: if n % 2 == 0 {
                    vec![
                        ConsoleLine { slice: Some(3), stream: "stdout".into(), text: awkward.into(), seq: None },
                        ConsoleLine { slice: None, stream: "stderr".into(), text: "e".into(), seq: Some(9) },
                    ]
                } else {
                    vec![]
                },
                compute_ms: (n % 3 == 0).then_some(n as u64 * 10),
            })
            .collect();
        writes_as_serde(&ResultsRequest { results, worker_token: Some("w".into()) });
        writes_as_serde(&ResultsRequest { results: vec![], worker_token: None });
        writes_as_serde(&BTreeMap::from([("k".to_string(), "v".to_string()), (awkward.to_string(), String::new())]));
        writes_as_serde(&Worktime::MapBasic);
        writes_as_serde(&Some(Worktime::Pyodide));
        writes_as_serde(&None::<u64>);
    }
}
