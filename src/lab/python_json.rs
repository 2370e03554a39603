//! JSON written exactly as Python writes it with
//! `json.dumps(obj, separators=(",", ":"))`, the encoder Dramatiq uses for
//! messages and results.
//!
//! Three things differ from serde_json's compact output and are handled here:
//! non-ASCII characters and DEL are escaped as `\uXXXX` (Python's default
//! `ensure_ascii=True`, with surrogate pairs above U+FFFF), and floats are
//! written as Python's `repr` writes them (`1e+16`, `1e-05`, `100.0`).
//! Everything else (compact separators, the short escapes `\n` `\t` ...,
//! lowercase `\u001f` for other control characters, integers) already agrees.
//!
//! Object key order is whatever the serialized value iterates in: callers that
//! must keep Python's insertion order use [`super::message::JsonObject`].
//! The writer is linear in the size of its input: a 128 MiB string is scanned
//! once and written in runs.

use std::io;

use serde::Serialize;
use serde_json::ser::Formatter;

/// Serializes `value` as Python's `json.dumps(value, separators=(",", ":"))`.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    // Writing to a Vec cannot fail, and every type serialized here has
    // string keys and finite numbers (serde_json values cannot hold NaN).
    value
        .serialize(&mut serializer)
        .expect("serializing JSON into memory cannot fail");
    // Exactly the encoded bytes: a stored result is retained for its TTL,
    // and the spare capacity left by doubling (up to as much again) would be
    // retained with it.
    out.shrink_to_fit();
    out
}

/// A compact formatter (the trait's defaults are the compact separators)
/// that escapes strings and formats floats like CPython's `json`.
struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(python_float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        self.write_f64(writer, f64::from(value))
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // serde_json has already escaped quotes, backslashes and control
        // characters; what is left to escape is DEL and everything non-ASCII.
        let bytes = fragment.as_bytes();
        let mut start = 0;
        while let Some(offset) = bytes[start..].iter().position(|&b| b >= 0x7f) {
            let at = start + offset;
            writer.write_all(&bytes[start..at])?;
            let c = fragment[at..]
                .chars()
                .next()
                .expect("a position inside a str is followed by a char");
            write_unicode_escape(writer, c)?;
            start = at + c.len_utf8();
        }
        writer.write_all(&bytes[start..])
    }
}

fn write_unicode_escape<W: ?Sized + io::Write>(writer: &mut W, c: char) -> io::Result<()> {
    let code = u32::from(c);
    if code > 0xffff {
        let offset = code - 0x1_0000;
        let high = 0xd800 | ((offset >> 10) & 0x3ff);
        let low = 0xdc00 | (offset & 0x3ff);
        write!(writer, "\\u{high:04x}\\u{low:04x}")
    } else {
        write!(writer, "\\u{code:04x}")
    }
}

/// Formats a finite float as Python's `float.__repr__`: the shortest digits
/// that round-trip, positional notation when the decimal exponent is in
/// `-4..16`, otherwise scientific with a signed two-digit-minimum exponent.
fn python_float_repr(value: f64) -> String {
    if !value.is_finite() {
        // Unreachable through serde_json values; Python would write these.
        return if value.is_nan() {
            "NaN".to_owned()
        } else if value > 0.0 {
            "Infinity".to_owned()
        } else {
            "-Infinity".to_owned()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. "-1.2345e-7".
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("LowerExp output always has an exponent");
    let exponent: i32 = exponent.parse().expect("LowerExp exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();

    let mut out = String::with_capacity(digits.len() + 8);
    out.push_str(sign);
    if (-4..16).contains(&exponent) {
        if exponent >= 0 {
            let integer_len = exponent as usize + 1;
            if digits.len() <= integer_len {
                out.push_str(&digits);
                out.push_str(&"0".repeat(integer_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..integer_len]);
                out.push('.');
                out.push_str(&digits[integer_len..]);
            }
        } else {
            out.push_str("0.");
            out.push_str(&"0".repeat((-exponent - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        out.push('e');
        out.push(exponent_sign);
        out.push_str(&format!("{:02}", exponent.unsigned_abs()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_are_written_as_python_repr() {
        // Expected strings are CPython 3.11's repr() of the same floats.
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (100.0, "100.0"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123.456, "123.456"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (1e100, "1e+100"),
            (5e-324, "5e-324"),
            (-2.5e-5, "-2.5e-05"),
            (1795477569952.5, "1795477569952.5"),
        ];
        for (value, expected) in cases {
            assert_eq!(python_float_repr(value), expected, "repr of {value:?}");
        }
    }

    #[test]
    fn non_ascii_and_del_are_escaped_like_ensure_ascii() {
        let value = json!({"s": "caf\u{e9} \u{7f} \u{1F600} \n\t\u{1} \"q\" \\ /"});
        assert_eq!(
            String::from_utf8(to_vec(&value)).unwrap(),
            r#"{"s":"caf\u00e9 \u007f \ud83d\ude00 \n\t\u0001 \"q\" \\ /"}"#
        );
    }

    #[test]
    fn separators_are_compact() {
        let value = json!([1, {"a": [true, null, 2.0]}, "x"]);
        assert_eq!(to_vec(&value), br#"[1,{"a":[true,null,2.0]},"x"]"#);
    }
}
