//! Reads the fields of a JavaScript object handed to the core — the page's options, a sandbox's
//! messages — one by one, naming the field that is wrong and what it held instead.
//!
//! Written by hand rather than with serde: these objects are small and flat, and serde's readers
//! for JavaScript values (with the paths that name a field) cost the core ≈ 12 KB gzipped.

use std::ops::RangeInclusive;

use js_sys::{Object, Reflect};
use wasm_bindgen::{JsCast, JsValue};

/// The largest whole number a JavaScript number holds exactly (2^53 − 1).
const MAX_SAFE_WHOLE: f64 = 9_007_199_254_740_991.0;

/// One object's fields. A field that is absent, `undefined` or `null` reads as `None`.
pub struct Fields<'a> {
    object: &'a JsValue,
}

impl<'a> Fields<'a> {
    /// Reads `object`, which must be an object (a function counts: the page may pass one).
    pub fn of(object: &'a JsValue) -> Result<Self, String> {
        if object.is_object() || object.is_function() {
            Ok(Fields { object })
        } else {
            Err(format!("expected an object, not {}", in_words(object)))
        }
    }

    fn get(&self, name: &str) -> Option<JsValue> {
        Reflect::get(self.object, &JsValue::from_str(name))
            .ok()
            .filter(|value| !value.is_undefined() && !value.is_null())
    }

    /// A text field.
    pub fn string(&self, name: &str) -> Result<Option<String>, String> {
        self.get(name).map(|value| value.as_string().ok_or_else(|| wrong(name, "text", &value))).transpose()
    }

    /// A finite number.
    pub fn number(&self, name: &str) -> Result<Option<f64>, String> {
        self.get(name)
            .map(|value| {
                value.as_f64().filter(|number| number.is_finite()).ok_or_else(|| wrong(name, "a number", &value))
            })
            .transpose()
    }

    /// A whole number within `range` (at most 2^53 − 1, the largest a JavaScript number holds
    /// exactly).
    pub fn whole(&self, name: &str, range: RangeInclusive<u64>) -> Result<Option<u64>, String> {
        let (low, high) = (*range.start() as f64, (*range.end() as f64).min(MAX_SAFE_WHOLE));
        self.get(name)
            .map(|value| {
                value
                    .as_f64()
                    .filter(|number| number.fract() == 0.0 && (low..=high).contains(number))
                    .map(|number| number as u64)
                    .ok_or_else(|| {
                        let (low, high) = (*range.start(), (*range.end()).min(MAX_SAFE_WHOLE as u64));
                        wrong(name, &format!("a whole number from {low} to {high}"), &value)
                    })
            })
            .transpose()
    }

    /// `true` or `false`.
    pub fn flag(&self, name: &str) -> Result<Option<bool>, String> {
        self.get(name).map(|value| value.as_bool().ok_or_else(|| wrong(name, "true or false", &value))).transpose()
    }

    /// An array of texts; absent reads as empty.
    pub fn strings(&self, name: &str) -> Result<Vec<String>, String> {
        let Some(value) = self.get(name) else { return Ok(Vec::new()) };
        let items = value.dyn_ref::<js_sys::Array>().ok_or_else(|| wrong(name, "an array of texts", &value))?;
        items.iter().map(|item| item.as_string().ok_or_else(|| wrong(name, "an array of texts", &item))).collect()
    }

    /// The object's own field names that are not in `known`, in the object's order.
    pub fn unknown(&self, known: &[&str]) -> Vec<String> {
        // Not `dyn_ref`: an object of another realm, or without a prototype, is an object too.
        Object::keys(self.object.unchecked_ref::<Object>())
            .iter()
            .filter_map(|key| key.as_string())
            .filter(|key| !known.contains(&key.as_str()))
            .collect()
    }
}

/// The value of a field that must be there.
pub fn required<T>(name: &str, value: Option<T>) -> Result<T, String> {
    value.ok_or_else(|| format!("{name}: missing"))
}

fn wrong(name: &str, expected: &str, value: &JsValue) -> String {
    format!("{name}: expected {expected}, not {}", in_words(value))
}

/// A value in a few words, for an error message about it: `the text "x"`, `the number 1.5`, `an object`.
fn in_words(value: &JsValue) -> String {
    if let Some(text) = value.as_string() {
        let shown: String = text.chars().take(40).collect();
        let more = if shown.len() < text.len() { "…" } else { "" };
        format!("the text {}{more}", tessera_protocol::json::write(shown.as_str()))
    } else if let Some(number) = value.as_f64() {
        match number {
            _ if number.is_nan() => "NaN".into(),
            _ if number.is_infinite() => format!("{}Infinity", if number < 0.0 { "-" } else { "" }),
            _ => match js_sys::Number::from(number).to_string_with_radix(10) {
                Ok(shown) => format!("the number {}", String::from(shown)),
                Err(_) => format!("the number {}", crate::supervisor::in_decimals(number)),
            },
        }
    } else if value.is_bigint() {
        "a BigInt".into()
    } else if let Some(flag) = value.as_bool() {
        format!("{flag}")
    } else if value.is_null() {
        "null".into()
    } else if value.is_undefined() {
        "nothing".into()
    } else if js_sys::Array::is_array(value) {
        "an array".into()
    } else if value.is_function() {
        "a function".into()
    } else {
        "an object".into()
    }
}
