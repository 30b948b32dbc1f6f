//! Decoder for a serialized `google.protobuf.Struct`.
//!
//! Envoy passes a plugin `configuration` of type `StringValue`/`BytesValue` as its
//! contents, and any other `Any` as the serialized message. Users write the config
//! as plain YAML under `google.protobuf.Struct`, so the filter receives Struct wire
//! bytes. The message is tiny and fixed, so a hand-written decoder is cheaper than
//! a protobuf dependency in every worker's VM.

use serde_json::{Map, Number, Value};

/// Deepest nesting accepted; configs are shallow and the recursion must be bounded.
const MAX_DEPTH: usize = 32;

#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

/// Decodes Struct wire bytes into a JSON object.
pub fn decode_struct(bytes: &[u8]) -> Result<Value, DecodeError> {
    decode_struct_at(bytes, 0)
}

fn decode_struct_at(bytes: &[u8], depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError("nesting too deep"));
    }
    let mut map = Map::new();
    let mut r = Reader { buf: bytes, pos: 0 };
    while !r.done() {
        let (field, wire) = r.key()?;
        if field == 1 && wire == 2 {
            // map<string, Value> entry: a message with key = 1, value = 2.
            let mut e = Reader {
                buf: r.bytes()?,
                pos: 0,
            };
            let mut key = String::new();
            let mut value = Value::Null;
            while !e.done() {
                let (f, w) = e.key()?;
                match (f, w) {
                    (1, 2) => {
                        key = std::str::from_utf8(e.bytes()?)
                            .map_err(|_| DecodeError("key is not UTF-8"))?
                            .to_string()
                    }
                    (2, 2) => value = decode_value(e.bytes()?, depth + 1)?,
                    _ => e.skip(w)?,
                }
            }
            map.insert(key, value);
        } else {
            r.skip(wire)?;
        }
    }
    Ok(Value::Object(map))
}

fn decode_value(bytes: &[u8], depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError("nesting too deep"));
    }
    let mut r = Reader { buf: bytes, pos: 0 };
    let mut out = Value::Null;
    while !r.done() {
        let (field, wire) = r.key()?;
        out = match (field, wire) {
            (1, 0) => {
                r.varint()?;
                Value::Null
            }
            (2, 1) => {
                let f = f64::from_bits(r.fixed64()?);
                Number::from_f64(f)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
            (3, 2) => Value::String(
                std::str::from_utf8(r.bytes()?)
                    .map_err(|_| DecodeError("string is not UTF-8"))?
                    .to_string(),
            ),
            (4, 0) => Value::Bool(r.varint()? != 0),
            (5, 2) => decode_struct_at(r.bytes()?, depth + 1)?,
            (6, 2) => {
                let mut l = Reader {
                    buf: r.bytes()?,
                    pos: 0,
                };
                let mut items = Vec::new();
                while !l.done() {
                    let (f, w) = l.key()?;
                    if f == 1 && w == 2 {
                        items.push(decode_value(l.bytes()?, depth + 1)?);
                    } else {
                        l.skip(w)?;
                    }
                }
                Value::Array(items)
            }
            (_, w) => {
                r.skip(w)?;
                out
            }
        };
    }
    Ok(out)
}

/// A protobuf wire reader over borrowed bytes; also used by [`crate::core::limits::global`].
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(DecodeError("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint too long"))
    }

    pub(crate) fn key(&mut self) -> Result<(u64, u8), DecodeError> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError("truncated field"))?;
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(self.varint()?).map_err(|_| DecodeError("length overflow"))?;
        self.take(n)
    }

    fn fixed64(&mut self) -> Result<u64, DecodeError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            _ => Err(DecodeError("unsupported wire type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    // Wire bytes by the spec, with the global tier's encoder.
    use crate::core::limits::global::{field_bytes as ld, varint};

    fn enc_value(v: &Value) -> Vec<u8> {
        let mut o = Vec::new();
        match v {
            Value::Null => {
                varint(1 << 3, &mut o);
                varint(0, &mut o);
            }
            Value::Number(n) => {
                varint(2 << 3 | 1, &mut o);
                o.extend_from_slice(&n.as_f64().unwrap().to_bits().to_le_bytes());
            }
            Value::String(s) => ld(3, s.as_bytes(), &mut o),
            Value::Bool(b) => {
                varint(4 << 3, &mut o);
                varint(*b as u64, &mut o);
            }
            Value::Object(_) => ld(5, &enc_struct(v), &mut o),
            Value::Array(items) => {
                let mut l = Vec::new();
                for i in items {
                    ld(1, &enc_value(i), &mut l);
                }
                ld(6, &l, &mut o);
            }
        }
        o
    }
    fn enc_struct(v: &Value) -> Vec<u8> {
        let mut o = Vec::new();
        for (k, v) in v.as_object().unwrap() {
            let mut e = Vec::new();
            ld(1, k.as_bytes(), &mut e);
            ld(2, &enc_value(v), &mut e);
            ld(1, &e, &mut o);
        }
        o
    }

    #[test]
    fn round_trips_every_value_kind() {
        let v = json!({
            "s": "text", "n": 60.0, "f": 0.25, "b": true, "z": null,
            "l": [1.0, "two", {"k": false}], "o": {"deep": {"deeper": []}}
        });
        assert_eq!(decode_struct(&enc_struct(&v)).unwrap(), v);
    }

    #[test]
    fn empty_bytes_are_an_empty_struct() {
        assert_eq!(decode_struct(&[]).unwrap(), json!({}));
    }

    #[test]
    fn truncated_input_is_an_error_at_every_cut() {
        let bytes = enc_struct(&json!({"routes": {"chat": {"clusters": ["a", "b"]}}}));
        for cut in 1..bytes.len() {
            // Every strict prefix either fails or decodes to something else: never panics.
            if let Ok(v) = decode_struct(&bytes[..cut]) {
                assert_ne!(v, json!({"routes": {"chat": {"clusters": ["a", "b"]}}}));
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut v = json!({});
        for _ in 0..40 {
            v = json!({ "x": v });
        }
        assert_eq!(
            decode_struct(&enc_struct(&v)),
            Err(DecodeError("nesting too deep"))
        );
    }

    #[test]
    fn bad_utf8_and_wire_types_are_errors() {
        let mut o = Vec::new();
        let mut e = Vec::new();
        ld(1, &[0xff, 0xfe], &mut e);
        ld(1, &e, &mut o);
        assert_eq!(decode_struct(&o), Err(DecodeError("key is not UTF-8")));
        assert_eq!(
            decode_struct(&[0x0b]),
            Err(DecodeError("unsupported wire type"))
        );
    }
}
