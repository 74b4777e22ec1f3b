//! How values read when the CLI prints them. A numpy array or scalar travels as
//! `{"$ndarray": {"dtype": "<f4", "shape": [2, 3], "data": "<base64>"}}` (docs/PROTOCOL.md,
//! "Values"); printed, its numbers replace the base64: `{"$ndarray": {"dtype": "<f4", "shape":
//! [2, 3], "values": [[…], […]]}}`. Dtypes without a plain JSON reading (structured, complex,
//! strings, half floats) keep their `data`.

use base64::Engine;
use serde_json::{Map, Value};

/// `value` with every numeric `$ndarray` inside it spelled out as nested lists.
pub fn readable(value: &Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.iter().map(readable).collect()),
        Value::Object(fields) => {
            if let Some(spelled) = fields.get("$ndarray").filter(|_| fields.len() == 1).and_then(spell_out) {
                return spelled;
            }
            Value::Object(fields.iter().map(|(key, field)| (key.clone(), readable(field))).collect())
        }
        other => other.clone(),
    }
}

/// A numeric element type: its byte order, kind (`b`, `i`, `u`, `f`) and size.
struct ElementType {
    little_endian: bool,
    kind: char,
    size: usize,
}

impl ElementType {
    /// Parses a numpy type string such as `<f4`, `|b1`, `>i8`; `None` for anything else.
    fn parse(dtype: &str) -> Option<ElementType> {
        let mut chars = dtype.chars();
        let little_endian = match chars.next()? {
            '<' | '|' => true,
            '>' => false,
            '=' => cfg!(target_endian = "little"),
            _ => return None,
        };
        let kind = chars.next()?;
        let size: usize = chars.as_str().parse().ok()?;
        let known = matches!((kind, size), ('b', 1) | ('i' | 'u', 1 | 2 | 4 | 8) | ('f', 4 | 8));
        known.then_some(ElementType { little_endian, kind, size })
    }

    /// One element from its bytes.
    fn read(&self, bytes: &[u8]) -> Value {
        let mut buffer = [0u8; 8];
        if self.little_endian {
            buffer[..self.size].copy_from_slice(bytes);
        } else {
            for (index, byte) in bytes.iter().rev().enumerate() {
                buffer[index] = *byte;
            }
        }
        let unsigned = u64::from_le_bytes(buffer);
        match (self.kind, self.size) {
            ('b', _) => Value::Bool(unsigned != 0),
            ('u', _) => Value::from(unsigned),
            ('i', size) => {
                let shift = 64 - 8 * size as u32;
                Value::from(((unsigned << shift) as i64) >> shift)
            }
            ('f', 4) => float(f32::from_bits(unsigned as u32).to_string()),
            _ => float(f64::from_bits(unsigned).to_string()),
        }
    }
}

/// A float as JSON, printed as short as it reads (`0.1` for a float32 0.1); NaN and the
/// infinities, which JSON has no numbers for, as the strings numpy prints.
fn float(text: String) -> Value {
    match text.parse::<f64>() {
        Ok(number) if number.is_finite() => Value::from(number),
        Ok(number) if number.is_nan() => Value::from("nan"),
        Ok(number) if number > 0.0 => Value::from("inf"),
        Ok(_) => Value::from("-inf"),
        Err(_) => Value::from(text),
    }
}

/// The spelled-out form of one `$ndarray` body, or `None` to leave it as it came.
fn spell_out(body: &Value) -> Option<Value> {
    let dtype = body.get("dtype")?.as_str()?;
    let element = ElementType::parse(dtype)?;
    let shape: Vec<usize> =
        body.get("shape")?.as_array()?.iter().map(|n| n.as_u64().map(|n| n as usize)).collect::<Option<_>>()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(body.get("data")?.as_str()?).ok()?;
    let count = shape.iter().try_fold(1usize, |count, n| count.checked_mul(*n))?;
    if count.checked_mul(element.size)? != bytes.len() {
        return None;
    }
    let elements: Vec<Value> = bytes.chunks_exact(element.size).map(|chunk| element.read(chunk)).collect();
    let values = if shape.is_empty() { elements.into_iter().next()? } else { nest(&elements, &shape) };
    let mut spelled = Map::new();
    spelled.insert("dtype".into(), Value::from(dtype));
    spelled.insert("shape".into(), body["shape"].clone());
    if let Some(scalar) = body.get("scalar") {
        spelled.insert("scalar".into(), scalar.clone());
    }
    spelled.insert("values".into(), values);
    Some(Value::Object(Map::from_iter([("$ndarray".to_string(), Value::Object(spelled))])))
}

/// C-order elements as nested lists of `shape`.
fn nest(elements: &[Value], shape: &[usize]) -> Value {
    match shape {
        [] | [_] => Value::Array(elements.to_vec()),
        [outer, inner @ ..] => {
            let step = inner.iter().product::<usize>();
            if step == 0 {
                return Value::Array((0..*outer).map(|_| nest(&[], inner)).collect());
            }
            Value::Array(elements.chunks(step).map(|chunk| nest(chunk, inner)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn encoded(dtype: &str, shape: Value, bytes: &[u8]) -> Value {
        let data = base64::engine::general_purpose::STANDARD.encode(bytes);
        json!({"$ndarray": {"dtype": dtype, "shape": shape, "data": data}})
    }

    #[test]
    fn a_float32_matrix_reads_as_nested_lists_of_short_numbers() {
        let bytes: Vec<u8> = [0.1f32, 2.0, -3.5, 4.25, 5.0, 6.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let value = json!({"mean": encoded("<f4", json!([2, 3]), &bytes), "n": 6});
        assert_eq!(
            readable(&value),
            json!({"mean": {"$ndarray": {"dtype": "<f4", "shape": [2, 3], "values": [[0.1, 2.0, -3.5], [4.25, 5.0, 6.0]]}}, "n": 6})
        );
    }

    #[test]
    fn scalars_signed_big_endian_and_booleans() {
        let scalar = json!({"$ndarray": {"dtype": "<i8", "shape": [], "scalar": true,
            "data": base64::engine::general_purpose::STANDARD.encode((-5i64).to_le_bytes())}});
        assert_eq!(readable(&scalar), json!({"$ndarray": {"dtype": "<i8", "shape": [], "scalar": true, "values": -5}}));
        let big = encoded(">i2", json!([2]), &[0xff, 0xfe, 0x01, 0x00]);
        assert_eq!(readable(&big)["$ndarray"]["values"], json!([-2, 256]));
        let flags = encoded("|b1", json!([3]), &[1, 0, 1]);
        assert_eq!(readable(&flags)["$ndarray"]["values"], json!([true, false, true]));
        let special: Vec<u8> = [f64::NAN, f64::INFINITY].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(readable(&encoded("<f8", json!([2]), &special))["$ndarray"]["values"], json!(["nan", "inf"]));
    }

    #[test]
    fn what_has_no_plain_reading_is_left_as_it_came() {
        let structured = json!({"$ndarray": {"dtype": [["x", "<f4"]], "shape": [1], "data": "AAAAAA=="}});
        assert_eq!(readable(&structured), structured);
        let wrong_length = encoded("<f8", json!([2]), &[0; 8]);
        assert_eq!(readable(&wrong_length), wrong_length);
        let empty = encoded("<f8", json!([2, 0]), &[]);
        assert_eq!(readable(&empty)["$ndarray"]["values"], json!([[], []]));
        assert_eq!(readable(&json!({"$bytes": "AAE="})), json!({"$bytes": "AAE="}));
    }
}
